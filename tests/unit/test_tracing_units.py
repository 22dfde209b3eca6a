"""Request ids, their log tag, and the request path's spans in-process (the SDK's in-memory exporter, the
Embedder over a fake backend); the live facade's traces are tests/service/test_tracing.py."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service import request_id, tracing
from service.admission import Admission
from service.errors import ServiceError
from service.logs import TEXT_FORMAT, JsonFormatter, RepeatLimiter, RequestIdFilter
from service.metrics import Metrics
from service.pipeline.coalescer import Coalescer
from service.pipeline.params import EmbedParams, Truncate
from service.pipeline.tokenization import TextTokenizer, load_tokenizer
from service.priority import Priority
from service.settings import Settings
from tests.unit.test_coalescer import far, rows, settle
from tests.unit.test_request_path_units import FakeBackend, make_embedder

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "sent",
    [
        "abc",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f",
        "x" * 128,
    ],
)
def test_a_valid_client_id_is_kept(sent: str) -> None:
    assert request_id.choose(sent) == sent
    assert request_id.choose(sent.encode()) == sent


@pytest.mark.parametrize(
    "sent",
    ["", None, "x" * 129, "abc\ndef", "abc\rdef", "tab\there", "nul\x00", "del\x7f", "space here", 'q"uote', "ü"],
)
def test_a_hostile_or_missing_id_is_replaced(sent: str | None) -> None:
    chosen = request_id.choose(sent)
    assert chosen != sent and len(chosen) == 32 and int(chosen, 16) >= 0
    assert request_id.choose(b"\xff\xfe") != "\xff\xfe"  # not ASCII: replaced, never decoded loosely


def test_new_ids_differ() -> None:
    assert len({request_id.new() for _ in range(1000)}) == 1000


def test_logs_carry_the_request_id_in_both_formats() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("test_tracing_units.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for formatter in (logging.Formatter(TEXT_FORMAT), JsonFormatter()):
            handler.setFormatter(formatter)
            token = request_id.current.set("req-42")
            logger.warning("inside")
            request_id.current.reset(token)
            logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    text_inside, text_outside, json_inside, json_outside = stream.getvalue().splitlines()
    assert text_inside.endswith("inside [request_id=req-42]") and "request_id" not in text_outside
    assert json.loads(json_inside)["request_id"] == "req-42" and "request_id" not in json.loads(json_outside)


def test_the_access_lines_are_not_rate_limited() -> None:
    limiter = RepeatLimiter()

    def record(name: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.DEBUG, __file__, 1, "%s %s %d in %.1f ms", ("GET", "/", 200, 1.0), None)

    assert sum(limiter.filter(record("qwen3_embed.access")) for _ in range(100)) == 100
    assert sum(limiter.filter(record("other")) for _ in range(100)) == 5  # other repeats still are


# ------------------------------------------------------------------------------------------------- spans


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


@pytest.fixture(scope="module")
def tokenizer(dev_model_dir: Path) -> TextTokenizer:
    return TextTokenizer(load_tokenizer(dev_model_dir, 151669))


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name == name]


def test_an_embed_request_has_its_stages_under_one_span_continuing_the_client_trace(
    spans: InMemorySpanExporter, tokenizer: TextTokenizer
) -> None:
    # A token budget of 64 splits these inputs into several chunks: one queue and one inference span each.
    embedder = make_embedder(tokenizer, FakeBackend(16, delay_s=0.01))
    admission = Admission(4, Metrics())
    params = EmbedParams(texts=("short", "a somewhat longer text " * 3, "x " * 40), truncate=Truncate.END)

    async def request() -> None:
        with tracing.request_span("POST /v1/embeddings", [(b"traceparent", TRACEPARENT.encode())], k="v"):
            async with tracing.acquired("admission", admission.unary()):
                tracing.describe_request("fake", params.count, priority="interactive")
                result = await embedder.embed(params, time.monotonic() + 10)
                with tracing.stage("encode"):
                    assert result.vectors.shape == (3, 16)

    asyncio.run(request())
    embedder.close()
    finished = spans.get_finished_spans()
    (root,) = by_name(finished, "POST /v1/embeddings")
    assert root.kind is SpanKind.SERVER and root.parent is not None and root.parent.is_remote
    assert f"{root.context.trace_id:032x}" == TRACE_ID and f"{root.parent.span_id:016x}" == "00f067aa0ba902b7"
    tokens = root.attributes[tracing.TOKENS]  # type: ignore[index]
    assert root.attributes == {
        "k": "v", tracing.MODEL: "fake", tracing.INPUTS: 3, tracing.OPERATION: "embeddings",
        tracing.PRIORITY: "interactive", tracing.TOKENS: tokens,
    }  # fmt: skip
    assert isinstance(tokens, int) and tokens > 40
    (tokenize,) = by_name(finished, "tokenize")
    assert tokenize.attributes == {tracing.INPUTS: 3, tracing.TOKENS: tokens}
    queues, inferences = by_name(finished, "queue"), by_name(finished, "inference")
    assert len(queues) == len(inferences) >= 2
    assert sum(q.attributes[tracing.ROWS] for q in queues) == 3  # type: ignore[index,misc]
    stages = [*by_name(finished, "admission"), tokenize, *queues, *inferences, *by_name(finished, "encode")]
    assert len(stages) == len(finished) - 1
    for span in stages:
        assert span.parent is not None and span.parent.span_id == root.context.span_id
        assert span.context.trace_id == root.context.trace_id
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time  # type: ignore[operator]
    for queue, inference in zip(
        sorted(queues, key=lambda s: s.start_time or 0),
        sorted(inferences, key=lambda s: s.start_time or 0),
        strict=True,
    ):
        assert queue.end_time == inference.start_time  # the call went out when the wait ended
        assert inference.end_time - inference.start_time >= 9_000_000  # type: ignore[operator]  # the 10 ms call


def test_a_refused_request_marks_its_stage(spans: InMemorySpanExporter, tokenizer: TextTokenizer) -> None:
    embedder = make_embedder(tokenizer, FakeBackend(16), max_request_tokens=20)

    async def request() -> None:
        with tracing.request_span("Embed", None):
            await embedder.embed(EmbedParams(texts=("word " * 40,), truncate=Truncate.END), time.monotonic() + 10)

    with pytest.raises(ServiceError):
        asyncio.run(request())
    embedder.close()
    (tokenize,) = by_name(spans.get_finished_spans(), "tokenize")
    assert tokenize.status.status_code is StatusCode.ERROR and "more than the limit of 20" in str(
        tokenize.status.description
    )
    assert not by_name(spans.get_finished_spans(), "inference")


def test_tracing_off_makes_no_spans(tokenizer: TextTokenizer) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(None)  # off: the provider is not the service's
    embedder = make_embedder(tokenizer, FakeBackend(16))

    async def request() -> None:
        with tracing.request_span("Embed", {"traceparent": TRACEPARENT}) as span:
            assert span is None
            await embedder.embed(EmbedParams(texts=("x " * 40,), truncate=Truncate.END), time.monotonic() + 10)

    asyncio.run(request())
    embedder.close()
    assert not tracing.enabled() and exporter.get_finished_spans() == ()
    slot = Admission(1, Metrics()).unary()
    assert tracing.acquired("admission", slot) is slot  # the admission slot itself, unwrapped


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


def test_the_otlp_endpoint_is_a_url_and_tracing_is_off_by_default() -> None:
    assert settings().tracing is False and settings().otlp_endpoint == ""
    assert settings(otlp_endpoint="https://collector:4317").otlp_endpoint == "https://collector:4317"
    with pytest.raises(ValueError, match="otlp_endpoint is a URL"):
        settings(otlp_endpoint="collector:4317")


def test_setup_installs_the_otlp_pipeline_and_shutdown_is_bounded() -> None:
    """An exporter to a port with nothing behind it: spans are taken at once, and shutdown (the flush) returns
    within its bound."""
    from service.triton.runtime import free_port

    config = settings(tracing=True, otlp_endpoint=f"http://127.0.0.1:{free_port()}", tracing_export_timeout_s=1.0)
    assert tracing.setup(config) is not None and tracing.enabled()
    started = time.monotonic()
    for _ in range(100):
        with tracing.request_span("x", None):
            pass
    assert time.monotonic() - started < 1.0  # never waits on the exporter
    started = time.monotonic()
    tracing.shutdown(2.0)
    assert time.monotonic() - started < 2.5 and not tracing.enabled()
    assert tracing.setup(settings()) is None and not tracing.enabled()


def test_a_coalesced_triton_call_carries_its_first_traced_chunks_inference_span(spans: InMemorySpanExporter) -> None:
    """Calls of one slot in turn. The first carries a traced request's chunk: its inference span's W3C
    traceparent is what the call sends Triton. The second carries three requests' chunks (one not traced,
    then two traced, in the order the coalescer takes them): it sends the first traced chunk's inference span,
    and the other traced chunk's inference span, in its own trace, links to that one. The third carries an
    untraced chunk only and sends nothing, though it is started when a traced request's call ends."""
    sent: list[tuple[tuple[str, str], ...] | None] = []
    gates: list[asyncio.Future[None]] = []
    trace_x, trace_c, trace_d = "e" * 32, "c" * 32, "d" * 32

    async def call(width: int, sequences: list[Sequence[int]], timeout_s: float, cls: Priority) -> np.ndarray:
        sent.append(tracing.outgoing_metadata())
        gates.append(asyncio.get_running_loop().create_future())
        await gates[-1]
        return np.zeros((len(sequences), 2), dtype=np.float32)

    async def scenario() -> None:
        co = Coalescer(call, max_in_flight=1, token_budget=1024, max_rows=32)

        async def traced(trace_id: str, tag: int) -> np.ndarray:
            with tracing.request_span("Embed", {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}):
                return await co.run(16, rows(tag, 1), far())

        first = asyncio.create_task(traced(trace_x, 1))  # holds the one call in flight
        await settle()
        waiting = [asyncio.create_task(co.run(16, rows(2, 1), far()))]
        await settle()
        waiting.append(asyncio.create_task(traced(trace_c, 3)))
        await settle()
        waiting.append(asyncio.create_task(traced(trace_d, 4)))
        await settle()
        gates[0].set_result(None)
        await first
        await settle()
        assert len(gates) == 2  # the three waiting chunks went out together
        last = asyncio.create_task(co.run(16, rows(5, 1), far()))
        await settle()
        gates[1].set_result(None)
        await asyncio.gather(*waiting)
        await settle()
        assert len(gates) == 3
        gates[2].set_result(None)
        await last

    asyncio.run(scenario())
    finished = spans.get_finished_spans()
    inferences = {f"{s.context.trace_id:032x}": s for s in by_name(finished, "inference")}
    assert set(inferences) == {trace_x, trace_c, trace_d}  # the untraced requests have none
    carried, linked = inferences[trace_c], inferences[trace_d]
    assert sent[0] == (("traceparent", f"00-{trace_x}-{inferences[trace_x].context.span_id:016x}-01"),)
    assert sent[1] == (("traceparent", f"00-{trace_c}-{carried.context.span_id:016x}-01"),)
    assert sent[2] is None
    assert [link.context.span_id for link in linked.links] == [carried.context.span_id]
    assert not carried.links
    for span in (carried, linked):
        assert span.attributes is not None and span.attributes[tracing.CALL_ROWS] == 3
        assert span.attributes[tracing.ROWS] == 1
    for trace_id, span in inferences.items():
        (request,) = [s for s in by_name(finished, "Embed") if f"{s.context.trace_id:032x}" == trace_id]
        assert span.parent is not None and span.parent.span_id == request.context.span_id
        assert span.start_time is not None and span.end_time is not None and span.start_time <= span.end_time


def test_tracing_off_sends_no_trace_context() -> None:
    tracing.install(None)
    assert tracing.outgoing_metadata() is None
    assert tracing.snapshot() is None
    assert tracing.start_calls([None, None], [1, 2], 16, 3, 0) == ([None, None], None)  # the task's own context
