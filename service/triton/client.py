"""The facade's one Triton client: async gRPC inference with deadlines, readiness and error mapping.

One channel for every served model; `ModelBackend` binds it to one model and its output tensor (the
pipeline's InferenceBackend)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from service.contract import ATTENTION_MASK, EMBEDDING, INPUT_IDS, ModelInfo
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

    async def is_ready(self, models: list[str] | None = None) -> bool:
        """Triton is ready and so is every model of `models` (default: the one named at construction)."""
        try:
            if not await self.client.is_server_ready(client_timeout=2.0):
                return False
            for name in models if models is not None else [self.model_name]:
                if not await self.client.is_model_ready(name, client_timeout=2.0):
                    return False
            return True
        except InferenceServerException:
            return False

    async def model_config(self, name: str = "") -> Any:
        response = await self.client.get_model_config(name or self.model_name, client_timeout=10.0)
        return response.config

    async def model_states(self) -> dict[str, str]:
        """Triton's repository index: every model it knows (loaded or not) and its state ("READY", ...)."""
        index = await self.client.get_model_repository_index(client_timeout=5.0)
        return {m.name: m.state for m in index.models}

    def for_model(self, info: ModelInfo) -> ModelBackend:
        return ModelBackend(self, info.triton_name, info.kind.output)

    async def infer(self, ids: np.ndarray, mask: np.ndarray, hidden: int, timeout_s: float) -> np.ndarray:
        """The model named at construction, its embedding output."""
        return await self.infer_model(self.model_name, EMBEDDING, ids, mask, hidden, timeout_s)

    async def infer_model(
        self, model: str, output: str, ids: np.ndarray, mask: np.ndarray, width: int, timeout_s: float
    ) -> np.ndarray:
        """[rows, seq] int64 -> `output` [rows, width] float32; checks the response's shape and values."""
        inputs = [
            grpcclient.InferInput(INPUT_IDS, list(ids.shape), "INT64"),
            grpcclient.InferInput(ATTENTION_MASK, list(mask.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        outputs = [grpcclient.InferRequestedOutput(output)]
        try:
            result = await self.client.infer(model, inputs, outputs=outputs, client_timeout=max(timeout_s, 0.001))
        except InferenceServerException as exc:
            raise map_triton_error(exc) from exc
        out = result.as_numpy(output)
        # Never return a wrong vector: a short, mis-shaped or non-finite response is an error.
        if out is None or out.shape != (ids.shape[0], width):
            shape = None if out is None else out.shape
            log.error("triton model %s returned %s shape %s for a [%d, %d] request", model, output, shape, *ids.shape)
            raise ServiceError(ErrorKind.INTERNAL, "inference backend returned a malformed response")
        out = out.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            log.error("triton model %s returned non-finite values for a [%d, %d] request", model, *ids.shape)
            raise ServiceError(ErrorKind.INTERNAL, "the model produced non-finite values for this input")
        return out


class ModelBackend:
    """The shared Triton channel bound to one model and its output: what an Embedder or Reranker calls."""

    def __init__(self, triton: TritonBackend, model: str, output: str) -> None:
        self.triton = triton
        self.model = model
        self.output = output

    async def infer(self, ids: np.ndarray, mask: np.ndarray, width: int, timeout_s: float) -> np.ndarray:
        return await self.triton.infer_model(self.model, self.output, ids, mask, width, timeout_s)
