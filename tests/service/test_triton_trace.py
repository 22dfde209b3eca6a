"""Trace context reaches Triton, end to end: the facade traces to an OTLP/gRPC receiver started here, and a
real tritonserver (the pytriton wheel's) runs its own tracing in OpenTelemetry mode with the flags
docs/configuration.md gives, exporting OTLP/HTTP (JSON) to a second receiver started here. Triton's span of a
facade request's call must be in that request's trace, under the request's `inference` span: the facade sent
that span's W3C `traceparent` in the call's metadata."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.triton.runtime import TritonProcess, start_triton
from tests.doc_pages import section, shell_lines
from tests.helpers import Facade, run_facade, wait_for
from tests.service.test_tracing import Receiver, serve_receiver, tracing_env

CLIENT_SPAN = "b7ad6b7169203331"
DOC_COLLECTOR = "http://otel-collector:4318/v1/traces"


def doc_trace_config() -> list[str]:
    """The `--trace-config` values of the tritonserver line in docs/configuration.md's Tracing section."""
    [line] = shell_lines(section("docs/configuration.md", "## Tracing"), "tritonserver")
    words = line.split()
    values = [words[i + 1] for i, word in enumerate(words) if word == "--trace-config"]
    assert "mode=opentelemetry" in values and f"opentelemetry,url={DOC_COLLECTOR}" in values, line
    return values


class TritonSpans(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver for Triton's exporter (JSON bodies on /v1/traces): keeps every span."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["traceId"].lower() == trace_id]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: TritonSpans

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        found = [
            span
            for resource in json.loads(body).get("resourceSpans", [])
            for scope in resource.get("scopeSpans", [])
            for span in scope.get("spans", [])
        ]
        with self.server.lock:
            self.server.spans.extend(found)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:  # quiet: the test reads the spans, not an access log
        pass


@pytest.fixture(scope="module")
def triton_spans() -> Iterator[TritonSpans]:
    server = TritonSpans()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def traced_triton(
    model_repository: Path, triton_spans: TritonSpans, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonProcess]:
    """A Triton of its own, tracing every request in OpenTelemetry mode (W3C trace context from the call's
    metadata) to the test's receiver."""
    url = f"http://127.0.0.1:{triton_spans.server_address[1]}/v1/traces"
    args = [f"--trace-config={value.replace(DOC_COLLECTOR, url)}" for value in doc_trace_config()]
    assert any(url in arg for arg in args)
    proc = start_triton(model_repository, tmp_path_factory.mktemp("traced-triton") / "triton.log", extra_args=args)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def facade_receiver() -> Iterator[tuple[Receiver, int]]:
    yield from serve_receiver()


@pytest.fixture(scope="module")
def facade_spans(facade_receiver: tuple[Receiver, int]) -> Receiver:
    return facade_receiver[0]


@pytest.fixture(scope="module")
def facade(
    model_repository: Path,
    traced_triton: TritonProcess,
    facade_receiver: tuple[Receiver, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Facade]:
    env = tracing_env(f"http://127.0.0.1:{facade_receiver[1]}")
    with run_facade(model_repository, traced_triton.grpc_url, tmp_path_factory.mktemp("facade"), env=env) as running:
        yield running


def test_tritons_span_of_a_call_is_under_the_requests_inference_span(
    facade: Facade, facade_spans: Receiver, triton_spans: TritonSpans
) -> None:
    trace_id = "7" * 32
    metadata = (("traceparent", f"00-{trace_id}-{CLIENT_SPAN}-01"),)
    with grpc.insecure_channel(facade.target) as channel:
        reply = pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=["to triton"]), metadata=metadata)
    assert len(reply.embeddings) == 1

    def arrived() -> bool:
        ours = [s.span_id.hex() for s in facade_spans.trace(trace_id) if s.name == "inference"]
        theirs = triton_spans.trace(trace_id)
        under = any(s.get("parentSpanId", "").lower() in ours for s in theirs)
        return under and "qwen3_embedding" in {s["name"] for s in theirs}

    wait_for(arrived, 30, "the facade's inference span and Triton's spans under it")
    (inference,) = [s for s in facade_spans.trace(trace_id) if s.name == "inference"]
    theirs = triton_spans.trace(trace_id)
    by_id = {s["spanId"].lower(): s for s in theirs}
    # Triton's root span of the call (its request span; the model's and compute spans hang under it) is a
    # child of the facade's inference span, and every other Triton span of the trace is under that root.
    roots = [s for s in theirs if s.get("parentSpanId", "").lower() not in by_id]
    assert len(roots) == 1, theirs
    assert roots[0]["parentSpanId"].lower() == inference.span_id.hex()
    assert len(theirs) >= 2  # the model's own span, in the same trace


def test_without_a_traced_request_triton_starts_its_own_trace(facade: Facade, triton_spans: TritonSpans) -> None:
    """A caller whose trace is not sampled (flags 00): the facade makes no spans for it, sends Triton no
    trace context, and Triton's spans of the call are in a trace of their own."""
    trace_id = "8" * 32

    def roots() -> set[str]:
        with triton_spans.lock:  # Triton's spans without a parent: the first of each trace it starts itself
            return {s["traceId"].lower() for s in triton_spans.spans if not s.get("parentSpanId")}

    before = roots()
    metadata = (("traceparent", f"00-{trace_id}-{CLIENT_SPAN}-00"),)
    with grpc.insecure_channel(facade.target) as channel:
        reply = pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=["unsampled"]), metadata=metadata)
    assert len(reply.embeddings) == 1
    wait_for(lambda: roots() - before, 30, "Triton's own trace of the call")
    assert triton_spans.trace(trace_id) == []
