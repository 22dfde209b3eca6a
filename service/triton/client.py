"""The facade's one Triton client: async gRPC inference with deadlines, readiness and error mapping.

One channel for every served model (TritonBackend, the state's ModelServer); `ModelBackend` binds it to one
model and its output tensor (a served model's InferenceBackend). Both ports: service/pipeline/backend.py."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from service import tracing
from service.contract import ATTENTION_MASK, INPUT_IDS, ModelInfo
from service.errors import ErrorKind, ServiceError
from service.priority import Priority

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
        # Inference has its own channel (same arguments) and calls Triton's generated stub directly.
        self._channel = grpc.aio.insecure_channel(url, options=channel_args)
        self._model_infer = service_pb2_grpc.GRPCInferenceServiceStub(self._channel).ModelInfer

    async def close(self) -> None:
        await self.client.close()
        await self._channel.close()

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

    async def infer_model(
        self,
        model: str,
        output: str,
        ids: np.ndarray,
        mask: np.ndarray,
        width: int,
        timeout_s: float,
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """[rows, seq] int64 -> `output` [rows, width] float32; checks the response's shape and values.

        Straight through Triton's generated stub (tritonclient's own service_pb2): the tensors go out as
        raw_input_contents and the output is a view on the response's bytes, without the InferInput /
        InferResult wrappers' Python work per call. `priority` goes as Triton's request parameter of that name
        (its level; exports write the levels into config.pbtxt, and a model without them ignores it)."""
        request = pb.ModelInferRequest(
            model_name=model,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name=INPUT_IDS, datatype="INT64", shape=ids.shape),
                pb.ModelInferRequest.InferInputTensor(name=ATTENTION_MASK, datatype="INT64", shape=mask.shape),
            ],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=output)],
            raw_input_contents=[_int64_bytes(ids), _int64_bytes(mask)],
        )
        request.parameters["priority"].uint64_param = priority.triton_level
        try:
            # Traced: the call's inference span's `traceparent` (service/tracing.py), for Triton's own trace.
            metadata = tracing.outgoing_metadata()
            response = await self._model_infer(request, timeout=max(timeout_s, 0.001), metadata=metadata)
        except grpc.RpcError as exc:
            raise map_triton_error(rpc_exception(exc)) from exc
        out = output_array(response, output)
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


def _int64_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype="<i8").tobytes()


def rpc_exception(exc: grpc.RpcError) -> InferenceServerException:
    """A gRPC error as tritonclient reports it (what map_triton_error reads)."""
    # grpc.aio's AioRpcError has code() and details() without being a grpc.Call.
    code = exc.code() if callable(getattr(exc, "code", None)) else None  # type: ignore[attr-defined]
    details = exc.details() if callable(getattr(exc, "details", None)) else None  # type: ignore[attr-defined]
    return InferenceServerException(msg=details or str(exc), status=str(code))


def output_array(response: pb.ModelInferResponse, name: str) -> np.ndarray | None:
    """The output tensor `name` of a response, as a read-only view on its raw bytes (no copy); None when it
    is missing or its bytes do not fill its shape."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        if index >= len(response.raw_output_contents) or tensor.datatype == "BYTES":
            return None
        dtype = np.dtype(triton_to_np_dtype(tensor.datatype)).newbyteorder("<")
        raw = response.raw_output_contents[index]
        shape = tuple(int(d) for d in tensor.shape)
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            return None
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    return None


class ModelBackend:
    """The shared Triton channel bound to one model and its output: what an Embedder or Reranker calls."""

    def __init__(self, triton: TritonBackend, model: str, output: str) -> None:
        self.triton = triton
        self.model = model
        self.output = output

    async def infer(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        width: int,
        timeout_s: float,
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        return await self.triton.infer_model(self.model, self.output, ids, mask, width, timeout_s, priority)
