"""embedding.v1.EmbeddingService: the gRPC transport over the shared request lifecycle.

Requests arrive as raw bytes (the method handlers have no deserializer): their size and input count are
checked on the wire before anything is parsed, and only after authentication (an interceptor). Embed answers
with bytes too: the vectors are written into the serialized EmbedResponse directly (encode_response).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from service import request_id, tracing
from service.api.grpc.limits import idle_message
from service.api.grpc.wire import count_field, last_varint
from service.api.info import info_fields
from service.errors import ErrorKind, ServiceError, invalid
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.lifecycle import EmbedOutcome, Lifecycle, Parse, RerankOutcome, chosen_embedder
from service.models import Models
from service.pipeline.embedder import Embedder
from service.pipeline.encoding import pack
from service.pipeline.params import EmbedParams, Encoding, RerankParams, Truncate
from service.priority import HEADER, Priority, applied, parse_name, resolve

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=Message)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
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
    pb.ENCODING_INT8: Encoding.INT8,
    pb.ENCODING_UINT8: Encoding.UINT8,
}
ENCODING_PB = {v: k for k, v in ENCODING.items()}
INPUTS_FIELD = 1  # `repeated string inputs = 1` in EmbedRequest and TokenizeRequest
PRIORITY_FIELD = 10  # `Priority priority = 10` in EmbedRequest and RerankRequest
TOKENIZE_PRIORITY_FIELD = 7  # `Priority priority = 7` in TokenizeRequest (its next free number)
OTHER_FIELDS = 64  # room for every non-repeated field of EmbedRequest / RerankRequest, repeated or not
PRIORITY = {pb.PRIORITY_INTERACTIVE: Priority.INTERACTIVE, pb.PRIORITY_BULK: Priority.BULK}
# An API key's pinned class (KeyChecker.pinned), from the call's `authorization` metadata.
Pinned = Callable[[str | None], Priority | None]


def asked_priority(
    raw: bytes | None, metadata: dict[str, str], max_inputs: int, field: int = PRIORITY_FIELD
) -> Priority | None:
    """What a call asks for: the message's `priority` field (number `field`, read on the wire: admission needs
    it before the message is parsed), else the `x-priority` metadata, else nothing. The walk stops past the
    fields a valid message can have (`max_inputs` inputs or documents and the other fields): a message of
    millions of tiny inputs costs no more here, and parse_request refuses it."""
    fields = max_inputs + OTHER_FIELDS
    value = last_varint(raw, field, fields) if raw is not None else None
    if value:
        if value not in PRIORITY:
            choices = ", ".join(f"{pb.Priority.Name(n)} ({n})" for n in PRIORITY)
            raise invalid(f"unknown priority value {value}; use one of {choices}", "priority")
        return PRIORITY[value]  # type: ignore[index]
    header = metadata.get(HEADER)
    return parse_name(header) if header is not None else None


def parse_request(raw: bytes, message: type[M], max_inputs: int) -> M:
    """Wire checks, then the real parser. Counting stops past the limit, so a message of millions of
    tiny inputs is refused without building them."""
    if count_field(raw, INPUTS_FIELD, max_inputs) > max_inputs:
        raise invalid(f"more than the limit of {max_inputs} inputs per request; split the batch", "inputs")
    try:
        return message.FromString(raw)
    except DecodeError:
        raise invalid(f"the request is not a valid {message.DESCRIPTOR.name} message") from None


def _truncate(value: int) -> Truncate:
    if value not in TRUNCATE:
        raise invalid(f"unknown truncate value {value}", "truncate")
    return TRUNCATE[value]  # type: ignore[index]


def params_from_proto(request: pb.EmbedRequest) -> EmbedParams:
    if request.encoding not in ENCODING:
        raise invalid(f"unknown encoding value {request.encoding}", "encoding")
    return EmbedParams(
        texts=tuple(request.inputs),
        instruction=request.instruction,
        prompt_name=request.prompt_name,
        dimensions=request.dimensions,
        normalize=request.normalize if request.HasField("normalize") else True,
        truncate=_truncate(request.truncate),
        encoding=ENCODING[request.encoding],
        request_id=request.request_id,
        model=request.model,
    )


def _response_fields(embedded: EmbedOutcome) -> pb.EmbedResponse:
    """An EmbedResponse with everything but the embeddings."""
    params, result = embedded.params, embedded.result
    return pb.EmbedResponse(
        model=embedded.model,
        dimensions=result.dimensions,
        request_id=params.request_id,
        encoding=ENCODING_PB[params.encoding],
        usage=pb.Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        timings=pb.Timings(tokenize_ms=result.tokenize_ms, inference_ms=result.inference_ms, total_ms=result.total_ms),
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Wire tags (field number << 3 | wire type 2 = length-delimited) of EmbedResponse.embeddings and of
# Embedding's packed `values` and `packed`; Embedding.index is a varint (wire type 0).
_EMBEDDINGS_TAG = b"\x0a"
_INDEX_TAG = b"\x08"
_VALUES_TAG = b"\x12"
_PACKED_TAG = b"\x1a"


def _embedding(index: int, tag: bytes, data: bytes) -> bytes:
    """One serialized `Embedding` as EmbedResponse's field 1, fields in number order and proto3 defaults
    (index 0, empty bytes) left out: the bytes protobuf's own serializer writes."""
    body = (_INDEX_TAG + _varint(index) if index else b"") + (tag + _varint(len(data)) + data if data else b"")
    return _EMBEDDINGS_TAG + _varint(len(body)) + body


def encode_response(embedded: EmbedOutcome) -> bytes:
    """The EmbedResponse's bytes, without a Python float per value: each row's float32 values are copied once
    into a packed `repeated float` (little-endian, as the wire wants). The embeddings (field 1) come first, then
    the other fields as protobuf serializes them: byte for byte what the message would serialize to
    (tests/oracles.py builds that message field by field)."""
    params, result = embedded.params, embedded.result
    if params.encoding is Encoding.FLOAT:
        vectors = np.ascontiguousarray(result.vectors, dtype="<f4")
        rows = [_embedding(i, _VALUES_TAG, row.tobytes()) for i, row in enumerate(vectors)]
    else:
        rows = [_embedding(i, _PACKED_TAG, data) for i, data in enumerate(pack(result.vectors, params.encoding))]
    rows.append(_response_fields(embedded).SerializeToString())
    return b"".join(rows)


def serialize_embed(response: bytes | pb.EmbedResponse) -> bytes:
    """EmbedStream's messages: encoded vectors (bytes) or an error reply (a message)."""
    return response if isinstance(response, bytes) else response.SerializeToString()


DOCUMENTS_FIELD = 2  # `repeated string documents = 2` in RerankRequest


def parse_rerank(raw: bytes, max_documents: int) -> RerankParams:
    """As parse_request: the documents are counted on the wire before the message is parsed."""
    if count_field(raw, DOCUMENTS_FIELD, max_documents) > max_documents:
        raise invalid(f"more than the limit of {max_documents} documents per request; split them", "documents")
    try:
        request = pb.RerankRequest.FromString(raw)
    except DecodeError:
        raise invalid("the request is not a valid RerankRequest message") from None
    return RerankParams(
        query=request.query,
        documents=tuple(request.documents),
        instruction=request.instruction,
        top_n=request.top_n,
        return_documents=request.return_documents,
        truncate=_truncate(request.truncate),
        raw_scores=request.raw_scores,
        model=request.model,
        request_id=request.request_id,
    )


def rerank_response(reranked: RerankOutcome) -> pb.RerankResponse:
    params, result = reranked.params, reranked.result
    response = pb.RerankResponse(
        model=reranked.model,
        request_id=params.request_id,
        usage=pb.Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        timings=pb.Timings(tokenize_ms=result.tokenize_ms, inference_ms=result.inference_ms, total_ms=result.total_ms),
    )
    for hit in result.hits:
        response.results.add(
            index=hit.index,
            score=hit.raw_score if params.raw_scores else hit.score,
            document=params.documents[hit.index] if params.return_documents else "",
        )
    return response


def error_reply(request_id: str, exc: ServiceError) -> pb.EmbedResponse:
    """A stream message's failure as its own response (request_id cut: it is the client's string)."""
    error = pb.Error(code=STATUS[exc.kind].name, message=exc.message, param=exc.param or "")
    return pb.EmbedResponse(request_id=short(request_id, 256), error=error)


def metadata_value(metadata: Any, key: str) -> str | None:
    """The first value of `key` in a call's invocation metadata (keys arrive lowercased)."""
    for name, value in metadata:
        if name == key:
            return value if isinstance(value, str) else None
    return None


# Status codes that are the server's failure, not the client's (OpenTelemetry's rule for gRPC server spans).
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def call_attributes(method: str, rid: str) -> dict[str, Any]:
    return {"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method, tracing.REQUEST_ID: rid}


def short(text: str, limit: int = 64) -> str:
    """Client-chosen strings quoted in errors are cut: an error must not grow with the attacker's input."""
    return text if len(text) <= limit else text[:limit] + "…"


class GrpcApi:
    def __init__(self, lifecycle: Lifecycle, stream_window: int, pinned: Pinned | None = None) -> None:
        self.lifecycle = lifecycle
        self.state = lifecycle.state
        self.stream_window = stream_window
        self.pinned = pinned
        self._seconds_children: dict[str, Any] = {}
        self._count_children: dict[tuple[str, str], Any] = {}

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.lifecycle.deadline(None if remaining is None else float(remaining))

    def _priority(
        self, raw: bytes | None, context: grpc.aio.ServicerContext, field: int = PRIORITY_FIELD, echo: bool = True
    ) -> Priority:
        """The call's class (service/priority.py): its key's pin, else what it asks for, else interactive.
        With `echo`, the class applied goes back in the `x-priority` trailing metadata (as HTTP's header); a
        stream's messages may differ in class, so EmbedStream echoes none."""
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        asked = asked_priority(raw, metadata, self.state.settings.max_batch_inputs, field)
        pinned = self.pinned(metadata.get("authorization")) if self.pinned is not None else None
        chosen = resolve(asked, pinned, self.state.settings.priority_classes)
        if echo:
            context.set_trailing_metadata((*(context.trailing_metadata() or ()), (HEADER, chosen.value)))
        return chosen

    def _parse_embed(self, raw: bytes) -> Parse:
        async def parse(models: Models) -> tuple[EmbedParams, Embedder]:
            max_inputs = self.state.settings.max_batch_inputs
            return chosen_embedder(models, params_from_proto(parse_request(raw, pb.EmbedRequest, max_inputs)))

        return parse

    async def _answer(self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        """Runs one call: ServiceError -> its status code; anything else -> INTERNAL (a bug), logged. The
        call's request id (the client's valid `x-request-id` metadata, else a new one) goes back in the
        trailing metadata, whatever the outcome, and is in the logs written meanwhile; the call is traced
        (service/tracing.py) when tracing is on."""
        code = grpc.StatusCode.OK
        error: str | None = None
        metadata = context.invocation_metadata() or ()
        rid = request_id.choose(metadata_value(metadata, request_id.HEADER))
        trailing: tuple[tuple[str, str], ...] = ((request_id.HEADER, rid),)
        context.set_trailing_metadata(trailing)
        token = request_id.current.set(rid)
        with (
            self._seconds(method).time(),
            tracing.request_span(f"{SERVICE_NAME}/{method}", metadata, **call_attributes(method, rid)) as span,
        ):
            try:
                return await work()
            except ServiceError as exc:
                code = STATUS[exc.kind]
                error = exc.message
                if exc.kind is ErrorKind.RESOURCE_EXHAUSTED:
                    # Added to what is there: the request id and, once known, the class applied.
                    sent = context.trailing_metadata() or trailing
                    context.set_trailing_metadata((*sent, ("retry-after-ms", "200")))
                await context.abort(code, exc.message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                error = "internal error"
                log.exception("unexpected error in %s", method)
                await context.abort(code, "internal error; it was logged")
            finally:
                self._count(method, code.name).inc()
                tracing.set_outcome(
                    span, error if code in SERVER_FAULTS else None, **{"rpc.grpc.status_code": code.value[0]}
                )
                request_id.current.reset(token)
        raise AssertionError("unreachable")

    # The metrics' children per label set, looked up once (labels() takes a lock and walks a dict per call).
    def _seconds(self, method: str) -> Any:
        child = self._seconds_children.get(method)
        if child is None:
            child = self._seconds_children[method] = self.state.metrics.request_seconds.labels("grpc", method)
        return child

    def _count(self, method: str, code: str) -> Any:
        child = self._count_children.get((method, code))
        if child is None:
            child = self._count_children[method, code] = self.state.metrics.requests.labels("grpc", method, code)
        return child

    async def Embed(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The serialized EmbedResponse (encode_response): the handler has no response serializer."""
        deadline = self._deadline(context)

        async def work() -> bytes:
            with applied(self._priority(raw, context)):
                embedded = await self.lifecycle.embed(self._parse_embed(raw), deadline)
            with tracing.stage("encode", **{tracing.ENCODING: embedded.params.encoding.name.lower()}):
                return encode_response(embedded)

        return await self._answer("Embed", context, work)

    async def EmbedStream(
        self, raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes | pb.EmbedResponse]:
        """Each message is embedded on its own, at most `stream_window` at a time; a window slot is freed
        when its response has been handed to the transport, so a client that stops reading stops the
        stream's work. Every message read gets one response: its vectors, or `error` set (the stream goes
        on), matched by request_id. With no message read and none of its work in progress for
        grpc_idle_timeout_s, the stream ends with DEADLINE_EXCEEDED."""
        window = asyncio.Semaphore(self.stream_window)
        done: asyncio.Queue[bytes | pb.EmbedResponse | None] = asyncio.Queue()
        # One request id for the stream (trailing metadata, logs); each message is traced as a request of
        # its own under the stream's trace context.
        metadata = context.invocation_metadata() or ()
        rid = request_id.choose(metadata_value(metadata, request_id.HEADER))
        context.set_trailing_metadata(((request_id.HEADER, rid),))
        request_id.current.set(rid)  # this call's task, and the message tasks it starts
        parent = tracing.carrier(metadata) if tracing.enabled() else {}
        span_name = f"{SERVICE_NAME}/EmbedStream"
        tasks: set[asyncio.Task[None]] = set()
        started = 0
        last_read = 0.0

        async def one(raw: bytes) -> None:
            with tracing.request_span(span_name, parent, **call_attributes("EmbedStream", rid)) as span:
                response = await answer(raw)
                code = "OK" if isinstance(response, bytes) else response.error.code
                status = grpc.StatusCode[code]
                tracing.set_outcome(
                    span, code if status in SERVER_FAULTS else None, **{"rpc.grpc.status_code": status.value[0]}
                )
            self._count("EmbedStream", code).inc()
            done.put_nowait(response)

        async def answer(raw: bytes) -> bytes | pb.EmbedResponse:
            message_id = ""
            try:

                async def parse(models: Models) -> tuple[EmbedParams, Embedder]:
                    nonlocal message_id
                    params, embedder = await self._parse_embed(raw)(models)
                    message_id = params.request_id
                    return params, embedder

                with applied(self._priority(raw, context, echo=False)):
                    embedded = await self.lifecycle.embed(parse, self._deadline(context), stream=True)
                with tracing.stage("encode", **{tracing.ENCODING: embedded.params.encoding.name.lower()}):
                    return encode_response(embedded)
            except ServiceError as exc:
                return error_reply(message_id, exc)
            except Exception:
                log.exception("unexpected error in EmbedStream")
                return error_reply(message_id, ServiceError(ErrorKind.INTERNAL, "internal error; it was logged"))

        async def reader() -> None:
            nonlocal started, last_read
            try:
                async for raw in raws:
                    last_read = time.monotonic()
                    await window.acquire()  # backpressure: stop reading while the window is full
                    started += 1
                    task = asyncio.create_task(one(raw))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                done.put_nowait(None)

        reading = asyncio.create_task(reader())
        answered, input_ended = 0, False
        idle_s = self.state.settings.grpc_idle_timeout_s
        active = time.monotonic()  # the last message read or response sent
        try:
            while not (input_ended and answered == started):
                if input_ended or answered < started:
                    item = await done.get()  # work in progress: the stream is not idle
                else:
                    # Waiting on the client alone: an open stream that sends nothing ends (service/api/grpc/limits.py).
                    try:
                        item = await asyncio.wait_for(done.get(), max(0.0, active + idle_s - time.monotonic()))
                    except TimeoutError:
                        if last_read > active:
                            active = last_read
                            continue
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, idle_message(idle_s, "no message"))
                if item is None:
                    input_ended = True
                    await asyncio.wait({reading})
                    if (failure := reading.exception()) is not None:
                        raise failure  # a transport error while reading ends the stream
                    continue
                answered += 1
                yield item
                window.release()
                active = time.monotonic()
        finally:
            reading.cancel()
            for task in list(tasks):
                task.cancel()

    async def Tokenize(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        deadline = self._deadline(context)

        async def work() -> pb.TokenizeResponse:
            request = pb.TokenizeRequest()

            async def parse(models: Models) -> tuple[EmbedParams, Embedder]:
                request.CopyFrom(parse_request(raw, pb.TokenizeRequest, self.state.settings.max_batch_inputs))
                params = EmbedParams(
                    texts=tuple(request.inputs),
                    instruction=request.instruction,
                    prompt_name=request.prompt_name,
                    truncate=_truncate(request.truncate),
                    model=request.model,
                )
                return chosen_embedder(models, params)

            with applied(self._priority(raw, context, TOKENIZE_PRIORITY_FIELD)):
                tokenized, embedder = await self.lifecycle.tokenize(parse, deadline)
            response = pb.TokenizeResponse(
                usage=pb.Usage(prompt_tokens=tokenized.token_count, total_tokens=tokenized.token_count)
            )
            for i, (ids, cut) in enumerate(zip(tokenized.ids, tokenized.truncated, strict=True)):
                item = response.inputs.add(index=i, ids=ids, count=len(ids), truncated=cut)
                if request.return_tokens:
                    item.tokens.extend(embedder.tokenizer.id_to_token(t) for t in ids)
            return response

        return await self._answer("Tokenize", context, work)

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        async def work() -> pb.GetInfoResponse:
            fields = info_fields(self.state)
            described = fields.pop("models")
            response = pb.GetInfoResponse(**fields)
            for model in described:
                kind = pb.MODEL_KIND_RERANKER if model.pop("kind") == "reranker" else pb.MODEL_KIND_EMBEDDING
                response.models.add(kind=kind, **model)
            return response

        return await self._answer("GetInfo", context, work)

    async def Rerank(self, raw: bytes, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        deadline = self._deadline(context)

        async def parse(models: Models) -> RerankParams:
            return parse_rerank(raw, self.state.settings.max_batch_inputs)

        async def work() -> pb.RerankResponse:
            with applied(self._priority(raw, context)):
                return rerank_response(await self.lifecycle.rerank(parse, deadline))

        return await self._answer("Rerank", context, work)


def method_handlers(service: GrpcApi) -> grpc.GenericRpcHandler:
    """The service's handlers; Embed, EmbedStream, Tokenize and Rerank take raw bytes (see the module doc)."""
    handlers = {
        "Embed": grpc.unary_unary_rpc_method_handler(service.Embed),
        "EmbedStream": grpc.stream_stream_rpc_method_handler(service.EmbedStream, response_serializer=serialize_embed),
        "Tokenize": grpc.unary_unary_rpc_method_handler(
            service.Tokenize, response_serializer=pb.TokenizeResponse.SerializeToString
        ),
        "Rerank": grpc.unary_unary_rpc_method_handler(
            service.Rerank, response_serializer=pb.RerankResponse.SerializeToString
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            service.GetInfo,
            request_deserializer=pb.GetInfoRequest.FromString,
            response_serializer=pb.GetInfoResponse.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)
