"""The facade's one Triton client: async gRPC inference with deadlines, readiness and error mapping."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from service.contract import ATTENTION_MASK, EMBEDDING, INPUT_IDS
from service.pipeline.errors import ErrorKind, ServiceError

log = logging.getLogger(__name__)


def map_triton_error(exc: InferenceServerException) -> ServiceError:
    status = str(exc.status() or "")
    message = str(exc.message() or exc)
    if "Exceeds maximum queue size" in message or "RESOURCE_EXHAUSTED" in status:
        return ServiceError(ErrorKind.RESOURCE_EXHAUSTED, "the model's queue is full; retry with backoff")
    if "Request timeout expired" in message:
        return ServiceError(ErrorKind.RESOURCE_EXHAUSTED, "the request waited too long in the model's queue")
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in message:
        return ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded while waiting for the model")
    if "CANCELLED" in status:
        return ServiceError(ErrorKind.CANCELLED, "cancelled")
    if "UNAVAILABLE" in status or "failed to connect" in message.lower() or "not ready" in message.lower():
        return ServiceError(ErrorKind.UNAVAILABLE, "the inference backend is unavailable; retry shortly")
    # Anything else means we sent Triton something it refused, or it broke: our bug, not the caller's.
    log.error("triton error %s: %s", status, message)
    return ServiceError(ErrorKind.INTERNAL, "inference backend error")


class TritonBackend:
    def __init__(self, url: str, model_name: str, max_message_bytes: int) -> None:
        self.url = url
        self.model_name = model_name
        # Passing channel_args replaces tritonclient's defaults, so all of them are set here.
        channel_args = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Reconnect fast after Triton restarts.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self.client = aioclient.InferenceServerClient(url, channel_args=channel_args)

    async def close(self) -> None:
        await self.client.close()

    async def is_ready(self) -> bool:
        try:
            return bool(
                await self.client.is_server_ready(client_timeout=2.0)
                and await self.client.is_model_ready(self.model_name, client_timeout=2.0)
            )
        except InferenceServerException:
            return False

    async def model_config(self) -> Any:
        response = await self.client.get_model_config(self.model_name, client_timeout=10.0)
        return response.config

    async def infer(self, ids: np.ndarray, mask: np.ndarray, hidden: int, timeout_s: float) -> np.ndarray:
        """[rows, width] int64 -> [rows, hidden] float32; checks the response's shape and values."""
        inputs = [
            grpcclient.InferInput(INPUT_IDS, list(ids.shape), "INT64"),
            grpcclient.InferInput(ATTENTION_MASK, list(mask.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        outputs = [grpcclient.InferRequestedOutput(EMBEDDING)]
        try:
            result = await self.client.infer(
                self.model_name, inputs, outputs=outputs, client_timeout=max(timeout_s, 0.001)
            )
        except InferenceServerException as exc:
            raise map_triton_error(exc) from exc
        out = result.as_numpy(EMBEDDING)
        # Never return a wrong vector: a short, mis-shaped or non-finite response is an error.
        if out is None or out.shape != (ids.shape[0], hidden):
            shape = None if out is None else out.shape
            log.error(
                "triton returned embedding shape %s for a [%d, %d] request", shape, ids.shape[0], hidden
            )
            raise ServiceError(ErrorKind.INTERNAL, "inference backend returned a malformed response")
        out = out.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            log.error("triton returned non-finite values for a [%d, %d] request", *ids.shape)
            raise ServiceError(ErrorKind.INTERNAL, "the model produced non-finite values for this input")
        return out
