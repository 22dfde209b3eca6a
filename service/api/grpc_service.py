"""embedding.v1.EmbeddingService over the shared pipeline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service import __version__
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.pipeline.embedder import EmbedResult
from service.pipeline.encoding import pack
from service.pipeline.errors import ErrorKind, ServiceError
from service.pipeline.params import EmbedParams, Encoding, Truncate
from service.state import ServiceState

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.PAYLOAD_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}
TRUNCATE = {pb.TRUNCATE_NONE: Truncate.NONE, pb.TRUNCATE_END: Truncate.END, pb.TRUNCATE_START: Truncate.START}
ENCODING = {
    pb.ENCODING_FLOAT: Encoding.FLOAT,
    pb.ENCODING_FLOAT16: Encoding.FLOAT16,
    pb.ENCODING_BINARY: Encoding.BINARY,
    pb.ENCODING_UBINARY: Encoding.UBINARY,
}
ENCODING_PB = {v: k for k, v in ENCODING.items()}
STREAM_WINDOW = 8  # messages of one stream in progress at once; reading pauses beyond it


def params_from_proto(request: pb.EmbedRequest) -> EmbedParams:
    if request.truncate not in TRUNCATE:
        raise ServiceError(
            ErrorKind.INVALID_ARGUMENT, f"unknown truncate value {request.truncate}", "truncate"
        )
    if request.encoding not in ENCODING:
        raise ServiceError(
            ErrorKind.INVALID_ARGUMENT, f"unknown encoding value {request.encoding}", "encoding"
        )
    return EmbedParams(
        texts=tuple(request.inputs),
        instruction=request.instruction,
        prompt_name=request.prompt_name,
        dimensions=request.dimensions,
        normalize=request.normalize if request.HasField("normalize") else True,
        truncate=TRUNCATE[request.truncate],
        encoding=ENCODING[request.encoding],
        request_id=request.request_id,
    )


def response_from_result(params: EmbedParams, result: EmbedResult, model: str) -> pb.EmbedResponse:
    response = pb.EmbedResponse(
        model=model,
        dimensions=result.dimensions,
        request_id=params.request_id,
        encoding=ENCODING_PB[params.encoding],
        usage=pb.Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        timings=pb.Timings(
            tokenize_ms=result.tokenize_ms, inference_ms=result.inference_ms, total_ms=result.total_ms
        ),
    )
    if params.encoding is Encoding.FLOAT:
        response.embeddings.extend(
            pb.Embedding(index=i, values=row) for i, row in enumerate(result.vectors.tolist())
        )
    else:
        response.embeddings.extend(
            pb.Embedding(index=i, packed=data) for i, data in enumerate(pack(result.vectors, params.encoding))
        )
    return response


class EmbeddingService(pb_grpc.EmbeddingServiceServicer):
    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        default = self.state.settings.default_timeout_s
        return default if remaining is None else min(float(remaining), default * 10)

    async def _guard(
        self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]
    ) -> T:
        """Runs one call: ServiceError -> its status code; anything else -> INTERNAL (a bug), logged."""
        metrics = self.state.metrics
        code = grpc.StatusCode.OK
        with metrics.request_seconds.labels("grpc", method).time():
            try:
                return await work()
            except ServiceError as exc:
                code = STATUS[exc.kind]
                if exc.kind is ErrorKind.RESOURCE_EXHAUSTED:
                    context.set_trailing_metadata((("retry-after-ms", "200"),))
                await context.abort(code, exc.message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in %s", method)
                await context.abort(code, "internal error; it was logged")
            finally:
                metrics.requests.labels("grpc", method, code.name).inc()
        raise AssertionError("unreachable")

    async def _embed_one(self, request: pb.EmbedRequest, timeout: float, wait: bool) -> pb.EmbedResponse:
        params = params_from_proto(request)
        async with self.state.admit(wait=wait):
            embedder = self.state.require_embedder()
            result = await embedder.embed(params, timeout)
        return response_from_result(params, result, embedder.info.served_name)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        timeout = self._timeout(context)
        return await self._guard("Embed", context, lambda: self._embed_one(request, timeout, wait=False))

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.EmbedRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Each message is embedded on its own, STREAM_WINDOW at a time; the stream ends with the first
        error (its status names the failing message's request_id)."""
        results: asyncio.Queue[pb.EmbedResponse | ServiceError | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: pb.EmbedRequest) -> None:
            try:
                response = await self._embed_one(request, self._timeout(context), wait=True)
                await results.put(response)
            except ServiceError as exc:
                rid = request.request_id or "(no request_id)"
                await results.put(ServiceError(exc.kind, f"request {rid}: {exc.message}", exc.param))
            except Exception:
                log.exception("unexpected error in EmbedStream")
                await results.put(ServiceError(ErrorKind.INTERNAL, "internal error; it was logged"))
            finally:
                window.release()

        async def reader() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()  # backpressure: stop reading while the window is full
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                await results.put(None)

        reading = asyncio.create_task(reader())
        metrics = self.state.metrics
        try:
            while True:
                item = await results.get()
                if item is None:
                    break
                if isinstance(item, ServiceError):
                    metrics.requests.labels("grpc", "EmbedStream", STATUS[item.kind].name).inc()
                    await context.abort(STATUS[item.kind], item.message)
                    return
                metrics.requests.labels("grpc", "EmbedStream", "OK").inc()
                yield item
        finally:
            reading.cancel()
            for task in list(tasks):
                task.cancel()

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        async def work() -> pb.TokenizeResponse:
            if request.truncate not in TRUNCATE:
                raise ServiceError(ErrorKind.INVALID_ARGUMENT, f"unknown truncate value {request.truncate}")
            embedder = self.state.require_embedder()
            params = EmbedParams(
                texts=tuple(request.inputs),
                instruction=request.instruction,
                prompt_name=request.prompt_name,
                truncate=TRUNCATE[request.truncate],
            )
            tokenized = await embedder.tokenize(params)
            response = pb.TokenizeResponse(
                usage=pb.Usage(prompt_tokens=tokenized.token_count, total_tokens=tokenized.token_count)
            )
            for i, (ids, cut) in enumerate(zip(tokenized.ids, tokenized.truncated, strict=True)):
                item = response.inputs.add(index=i, ids=ids, count=len(ids), truncated=cut)
                if request.return_tokens:
                    item.tokens.extend(embedder.tokenizer.id_to_token(t) for t in ids)
            return response

        return await self._guard("Tokenize", context, work)

    async def GetInfo(
        self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInfoResponse:
        async def work() -> pb.GetInfoResponse:
            return pb.GetInfoResponse(**info_fields(self.state))

        return await self._guard("GetInfo", context, work)


def info_fields(state: ServiceState) -> dict[str, Any]:
    """The model and limits, shared by gRPC GetInfo and HTTP /info."""
    embedder = state.require_embedder()
    info = embedder.info
    return {
        "model": info.served_name,
        "source_model": info.source_model,
        "dimensions": info.hidden_size,
        "min_dimensions": info.min_dimensions,
        "max_input_tokens": info.max_input_tokens,
        "max_batch_inputs": state.settings.max_batch_inputs,
        "prompt_names": sorted(info.prompts),
        "precision": info.precision,
        "backend": info.backend,
        "service_version": __version__,
        "length_buckets": embedder.buckets,
    }
