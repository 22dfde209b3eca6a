"""OpenTelemetry spans of the request path, exported over OTLP/gRPC; off by default (settings.tracing).

One SERVER span per API request (HTTP POST routes, gRPC calls, each EmbedStream message), continuing the
client's W3C `traceparent`, and under it one span per stage, measured where the proto's timings are:

    admission  waiting for an in-flight slot (service/lifecycle.py)
    tokenize   templating, tokenization and truncation (the pipeline's tokenize step)
    queue      a chunk of rows waiting in the coalescer for its Triton call (one per chunk)
    inference  that Triton call, padding included, until its rows are back (one per chunk; a call carrying
               other requests' rows too is the same call in each of their traces)
    encode     the response body: vectors to JSON/base64 (HTTP) or to protobuf (gRPC)

A Triton call carries the W3C `traceparent` of one inference span in its gRPC metadata, so Triton's own spans
(its tracing in OpenTelemetry mode) join that trace. A call serving several requests' chunks carries the first
traced chunk's (the batch's first in fair-queue order); the other chunks' inference spans link to it.

Export never waits on the collector: finished spans go to a bounded queue (settings.tracing_queue_spans;
when full, new spans are dropped) that a background thread sends in batches, each export bounded by
settings.tracing_export_timeout_s. With tracing off, every helper here returns at its first test: no tracer,
no context extraction, no span objects.

The process-wide tracer lives in this module (one facade per process; `serve --workers N` sets up one per
worker process). The SDK and the exporter are imported only when tracing is turned on.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = "qwen3-embedding-service"
# Span attribute names: OpenTelemetry's GenAI conventions where one exists, the service's own otherwise.
MODEL = "gen_ai.request.model"
OPERATION = "gen_ai.operation.name"
TOKENS = "gen_ai.usage.input_tokens"
INPUTS = "qwen3_embed.inputs"
PRIORITY = "qwen3_embed.priority"
REQUEST_ID = "qwen3_embed.request_id"
WIDTH = "qwen3_embed.padded_width"
ROWS = "qwen3_embed.rows"
CALL_ROWS = "qwen3_embed.call_rows"
ENCODING = "qwen3_embed.encoding"
# The headers (and gRPC metadata keys) trace context arrives in: W3C trace context and baggage.
CARRIER_KEYS = frozenset({"traceparent", "tracestate", "baggage"})

_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None
# The request span of the request being served in this context: stages deep inside the pipeline name the
# request's model and token count on it without being handed the span.
_request_span: ContextVar[trace.Span | None] = ContextVar("request_span", default=None)
_OFF: AbstractContextManager[None] = contextlib.nullcontext()


def enabled() -> bool:
    return _tracer is not None


def install(provider: TracerProvider | None) -> None:
    """Makes `provider`'s tracer the one the request path uses (None: tracing off). Tests install one with an
    in-memory exporter; setup() installs the OTLP one."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("qwen3_embed")


def setup(settings: Settings) -> TracerProvider | None:
    """The OTLP pipeline when settings.tracing is on (installed here), else None. The service name is
    OTEL_SERVICE_NAME when set; OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_HEADERS,
    _CERTIFICATE, _INSECURE and OTEL_BSP_SCHEDULE_DELAY / _MAX_EXPORT_BATCH_SIZE apply as the SDK reads them."""
    if not settings.tracing:
        install(None)
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from service import __version__

    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME, "service.version": __version__}
    )
    # The SDK's own exit hook would flush with a 30 s bound; shutdown() below bounds it by the export timeout.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint or None, timeout=settings.tracing_export_timeout_s)
    timeout_ms = int(settings.tracing_export_timeout_s * 1000)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.tracing_queue_spans,
            max_export_batch_size=min(512, settings.tracing_queue_spans),
            export_timeout_millis=timeout_ms,
        )
    )
    install(provider)
    log.info(
        "tracing: OTLP/gRPC spans to %s, at most %d queued, %.1f s per export",
        settings.otlp_endpoint
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "http://localhost:4317",
        settings.tracing_queue_spans,
        settings.tracing_export_timeout_s,
    )
    return provider


def shutdown(timeout_s: float) -> bool:
    """Flushes what is queued and stops the exporter, waiting at most `timeout_s` (an unreachable collector
    must not hold the process's exit). True when it finished in time."""
    provider = _provider
    install(None)
    if provider is None:
        return True
    # A daemon thread: if the exporter is still stuck when the process exits, nothing waits for it.
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("tracing: spans not flushed within %.1f s at shutdown (collector unreachable?)", timeout_s)
        return False
    return True


# ------------------------------------------------------------------------------------------ the request span


def carrier(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """The trace-context entries of HTTP headers (ASGI: bytes) or gRPC metadata (str), keys lowercased."""
    found: dict[str, str] = {}
    for key, value in pairs:
        name = (key.decode("latin-1") if isinstance(key, bytes) else key).lower()
        if name in CARRIER_KEYS:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else value
    return found


class _RequestSpan:
    """The SERVER span of one request, current (with the request-span variable) while the request runs."""

    def __init__(self, tracer: trace.Tracer, name: str, parent: Mapping[str, str], attributes: dict[str, Any]):
        context = propagate.extract(parent) if parent else None
        self.span = tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
        self._scope = trace.use_span(self.span, end_on_exit=True, record_exception=False, set_status_on_exception=False)
        self._token: Any = None

    def __enter__(self) -> trace.Span:
        self._scope.__enter__()
        self._token = _request_span.set(self.span)
        return self.span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        _request_span.reset(self._token)
        self._scope.__exit__(kind, exc, tb)


def request_span(
    name: str, parent: Mapping[str, str] | Iterable[tuple[Any, Any]] | None, **attributes: Any
) -> AbstractContextManager[trace.Span | None]:
    """The request's span (None when tracing is off), continuing the trace context in `parent` (a carrier()
    dict, or the header or metadata pairs to find it in). The caller sets its outcome (set_outcome)."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    found = parent if isinstance(parent, Mapping) else carrier(parent or ())
    return _RequestSpan(tracer, name, found, attributes)


def set_outcome(span: trace.Span | None, error: str | None, **attributes: Any) -> None:
    """Ends a request span's story: its status code attributes, and ERROR with `error` as description."""
    if span is None or not span.is_recording():
        return
    span.set_attributes(attributes)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))


def describe_request(model: str, inputs: int, operation: str = "embeddings", priority: str | None = None) -> None:
    """What the request asks, on its span once parsed. `priority`: the request's class (issue 28's priority
    classes pass it here)."""
    span = _request_span.get() if _tracer is not None else None
    if span is None or not span.is_recording():
        return
    span.set_attributes({MODEL: model, INPUTS: inputs, OPERATION: operation})
    if priority:
        span.set_attribute(PRIORITY, priority)


def count_tokens(tokens: int) -> None:
    """The request's tokens (after templating and truncation), on the request span and the current stage."""
    if _tracer is None:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attribute(TOKENS, tokens)
    span = _request_span.get()
    if span is not None and span is not current and span.is_recording():
        span.set_attribute(TOKENS, tokens)


# ------------------------------------------------------------------------------------------------ the stages


def stage(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A stage span around a block (current inside it); an exception in the block marks it ERROR."""
    tracer = _tracer
    if tracer is None:
        return _OFF
    return tracer.start_as_current_span(name, attributes=attributes or None)


class _Acquired(AbstractAsyncContextManager[T]):
    def __init__(self, tracer: trace.Tracer, name: str, inner: AbstractAsyncContextManager[T]) -> None:
        self.tracer, self.name, self.inner = tracer, name, inner

    async def __aenter__(self) -> T:
        with self.tracer.start_as_current_span(self.name):
            return await self.inner.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self.inner.__aexit__(kind, exc, tb)


def acquired(name: str, inner: AbstractAsyncContextManager[T]) -> AbstractAsyncContextManager[T]:
    """`inner` (an admission slot), with a span over the wait to enter it only: the span ends once it is
    entered (or refused), not when it is left."""
    tracer = _tracer
    if tracer is None:
        return inner
    return _Acquired(tracer, name, inner)


def snapshot() -> contextvars.Context | None:
    """The request's context for a chunk it queues (its trace position, request id and class), when the
    request is traced: the Triton call that carries the chunk may run its inference span there."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return None
    return contextvars.copy_context()


def start_calls(
    snapshots: Sequence[contextvars.Context | None], rows: Sequence[int], width: int, call_rows: int, start_ns: int
) -> tuple[list[trace.Span | None], contextvars.Context | None]:
    """The `inference` spans of one Triton call's chunks (each in its request's trace; None for a chunk
    whose request is not traced), started when the call goes out and ended by model_call, and the context
    to make the call in: the first traced chunk's, with its inference span current, so the call's metadata
    carries that span's traceparent (outgoing_metadata), or one with no span current when no chunk is traced.
    The other chunks' spans link to the carried one: their traces lead to the trace Triton's spans are in."""
    tracer = _tracer
    spans: list[trace.Span | None] = []
    carrier: tuple[trace.Span, contextvars.Context] | None = None
    if tracer is None:
        return [None] * len(snapshots), None
    for snap, n in zip(snapshots, rows, strict=True):
        if snap is None:
            spans.append(None)
            continue
        attributes = {WIDTH: width, ROWS: n, CALL_ROWS: call_rows}
        links = [Link(carrier[0].get_span_context())] if carrier is not None else None
        span = tracer.start_span(
            "inference",
            context=snap.run(otel_context.get_current),
            start_time=start_ns,
            attributes=attributes,
            links=links,
        )
        spans.append(span)
        if carrier is None:
            call_context = snap.copy()
            call_context.run(otel_context.attach, trace.set_span_in_context(span))
            carrier = (span, call_context)
    if carrier is None:
        # No traced chunk: the call runs with no span current (not in whichever request's context happened to
        # start it), so it carries no trace context and Triton's spans, if it traces, start a trace of their own.
        untraced = contextvars.copy_context()
        untraced.run(otel_context.attach, otel_context.Context())
        return spans, untraced
    return spans, carrier[1]


def outgoing_metadata() -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata with the current span's W3C trace context (`traceparent`, `tracestate`), for a call to
    Triton; None when tracing is off or no span is current (nothing to continue)."""
    if _tracer is None:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return tuple(headers.items()) or None


def model_call(
    width: int,
    rows: int,
    call_rows: int,
    queued_ns: int,
    sent_ns: int,
    end_ns: int,
    error: str | None,
    inference: trace.Span | None = None,
) -> None:
    """A chunk's `queue` span (queued_ns to sent_ns) and `inference` span (sent_ns to end_ns), written once it
    is over from the times the coalescer took (time.time_ns()); `inference`: the span start_calls started
    when the call went out, ended here. sent_ns 0: never sent (its deadline passed or its request went away
    while it waited): a queue span only, until end_ns."""
    tracer = _tracer
    if tracer is None or not trace.get_current_span().is_recording():
        if inference is not None:
            inference.end(end_time=end_ns)
        return
    attributes = {WIDTH: width, ROWS: rows}
    queue = tracer.start_span("queue", start_time=queued_ns, attributes=attributes)
    if not sent_ns:
        queue.set_status(Status(StatusCode.ERROR, error or "never sent"))
        queue.end(end_time=end_ns)
        return
    queue.end(end_time=sent_ns)
    if inference is None:
        inference = tracer.start_span("inference", start_time=sent_ns, attributes={**attributes, CALL_ROWS: call_rows})
    if error is not None:
        inference.set_status(Status(StatusCode.ERROR, error))
    inference.end(end_time=end_ns)
