"""Tracing and request ids on the live facade (real process, the session's real Triton).

Traces go over real OTLP/gRPC (the SDK's exporter in the facade) to a real OTLP receiver started here: a gRPC
server with OpenTelemetry's generated TraceService. A collector that never answers (a socket that accepts
nothing) or a port with nothing behind it never slows or fails a request. Request ids: `X-Request-Id` on 200,
4xx and 5xx HTTP responses (echoed when valid, replaced when hostile), `x-request-id` in gRPC trailing
metadata, and in the facade's log lines."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.triton.runtime import free_port
from tests.doc_pages import section, shell_lines
from tests.helpers import Facade, run_facade, wait_for

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
STAGES = ("admission", "tokenize", "queue", "inference", "encode")
MODEL = "qwen3_embedding"  # the Triton name: requests may name a model by it


class Receiver(otlp_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.services: set[str] = set()  # the senders' service.name
        self.lock = threading.Lock()

    def Export(self, request: otlp.ExportTraceServiceRequest, context: Any) -> otlp.ExportTraceServiceResponse:
        with self.lock:
            for resource in request.resource_spans:
                self.services |= {
                    kv.value.string_value for kv in resource.resource.attributes if kv.key == "service.name"
                }
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return otlp.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id]


def serve_receiver() -> Iterator[tuple[Receiver, int]]:
    """A real OTLP/gRPC receiver on a free loopback port, for the life of the generator."""
    found = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    otlp_grpc.add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield found, port
    server.stop(0)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    yield from serve_receiver()


def tracing_env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "QWEN3_EMBED_TRACING": "true",
        "QWEN3_EMBED_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms between exports: the test sees its spans soon
        **extra,
    }


DOC = section("docs/configuration.md", "## Tracing")
[DOC_SERVE] = shell_lines(DOC, "QWEN3_EMBED_TRACING=true")
[DOC_CURL] = shell_lines(DOC, "curl")


def doc_settings() -> dict[str, str]:
    """The variables the page's serve line sets (`NAME=value ... qwen3-embed serve`)."""
    words = DOC_SERVE.split()
    assert words[-2:] == ["qwen3-embed", "serve"], DOC_SERVE
    return dict(word.split("=", 1) for word in words[:-2])


@pytest.fixture(scope="module")
def traced(model_repository: Path, triton: Any, logs_dir: Path, receiver: tuple[Receiver, int]) -> Iterator[Facade]:
    """The facade as the page starts it, with the test's receiver in place of the page's collector."""
    settings = doc_settings()
    assert settings["QWEN3_EMBED_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    env = tracing_env(f"http://127.0.0.1:{receiver[1]}", QWEN3_EMBED_LOG_LEVEL="DEBUG", QWEN3_EMBED_LOG_FORMAT="json")
    env = {**settings, **env}
    with run_facade(model_repository, triton.grpc_url, logs_dir, env=env) as facade:
        yield facade


def spans_of(receiver: Receiver, trace_id: str, root_name: str) -> dict[str, list[Span]]:
    """The trace's spans by name, once its request span and its encode span have arrived."""

    def arrived() -> bool:
        names = {s.name for s in receiver.trace(trace_id)}
        return root_name in names and set(STAGES) <= names

    wait_for(arrived, 20, f"the spans of trace {trace_id}")
    found: dict[str, list[Span]] = {}
    for span in receiver.trace(trace_id):
        found.setdefault(span.name, []).append(span)
    return found


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def check_tree(found: dict[str, list[Span]], root_name: str, model: str, inputs: int, tokens: int) -> Span:
    (root,) = found[root_name]
    assert root.kind == Span.SPAN_KIND_SERVER
    assert root.parent_span_id.hex() == CLIENT_SPAN  # continues the client's trace, under the client's span
    attrs = attributes(root)
    assert attrs["gen_ai.request.model"] == model and attrs["qwen3_embed.inputs"] == inputs
    assert attrs["gen_ai.usage.input_tokens"] == tokens
    assert attrs["qwen3_embed.priority"] == "interactive"  # the class it ran as (no header: the default)
    for name in STAGES:
        assert found[name], name
        for span in found[name]:
            assert span.parent_span_id == root.span_id, name
            assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
            assert span.end_time_unix_nano <= root.end_time_unix_nano
    (tokenize,) = found["tokenize"]
    assert attributes(tokenize) == {"qwen3_embed.inputs": inputs, "gen_ai.usage.input_tokens": tokens}
    assert sum(attributes(q)["qwen3_embed.rows"] for q in found["queue"]) == inputs
    assert len(found["queue"]) == len(found["inference"])
    return root


def test_an_http_request_is_traced_with_its_five_stages(traced: Facade, receiver: tuple[Receiver, int]) -> None:
    texts = ["tracing an embedding request", "a second input, longer than the first one " * 8]
    headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "x-request-id": "trace-test-1"}
    reply = httpx.post(f"{traced.base_url}/v1/embeddings", json={"model": MODEL, "input": texts}, headers=headers)
    assert reply.status_code == 200 and reply.headers["x-request-id"] == "trace-test-1"
    body = reply.json()
    found = spans_of(receiver[0], TRACE_ID, "POST /v1/embeddings")
    root = check_tree(found, "POST /v1/embeddings", body["model"], 2, body["usage"]["prompt_tokens"])
    attrs = attributes(root)
    assert attrs["http.response.status_code"] == 200 and attrs["qwen3_embed.request_id"] == "trace-test-1"

    # The request's log line carries its id (DEBUG access line, JSON format; written once the response is out).
    def logged() -> bool:
        lines = [json.loads(line) for line in traced.log().splitlines() if line.startswith("{")]
        return any(e.get("request_id") == "trace-test-1" and "POST /v1/embeddings 200" in e["message"] for e in lines)

    wait_for(logged, 10, "the request's log line with its id")


def test_a_grpc_call_is_traced_and_answers_its_request_id(traced: Facade, receiver: tuple[Receiver, int]) -> None:
    trace_id = "1" * 32
    metadata = (("traceparent", f"00-{trace_id}-{CLIENT_SPAN}-01"), ("x-request-id", "grpc-call-7"))
    with grpc.insecure_channel(traced.target) as channel:
        reply, call = pb_grpc.EmbeddingServiceStub(channel).Embed.with_call(
            pb.EmbedRequest(inputs=["one", "two", "three"]), metadata=metadata, timeout=30
        )
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-call-7"
    name = "embedding.v1.EmbeddingService/Embed"
    root = check_tree(spans_of(receiver[0], trace_id, name), name, reply.model, 3, reply.usage.prompt_tokens)
    attrs = attributes(root)
    assert attrs["rpc.method"] == "Embed" and attrs["rpc.grpc.status_code"] == 0
    assert attrs["qwen3_embed.request_id"] == "grpc-call-7"


def test_each_stream_message_is_a_request_span_of_the_streams_trace(
    traced: Facade, receiver: tuple[Receiver, int]
) -> None:
    trace_id = "2" * 32
    metadata = (("traceparent", f"00-{trace_id}-{CLIENT_SPAN}-01"), ("x-request-id", "stream-9"))
    messages = [pb.EmbedRequest(inputs=[f"stream message {i}"] * (i + 1), request_id=f"m{i}") for i in range(2)]
    with grpc.insecure_channel(traced.target) as channel:
        call = pb_grpc.EmbeddingServiceStub(channel).EmbedStream(iter(messages), metadata=metadata, timeout=30)
        replies = list(call)
        assert dict(call.trailing_metadata())["x-request-id"] == "stream-9"
    assert sorted(r.request_id for r in replies) == ["m0", "m1"] and not any(r.HasField("error") for r in replies)
    name = "embedding.v1.EmbeddingService/EmbedStream"

    def both() -> bool:
        return len([s for s in receiver[0].trace(trace_id) if s.name == name]) == 2

    wait_for(both, 20, "both messages' spans")
    found = spans_of(receiver[0], trace_id, name)
    roots = sorted(found[name], key=lambda r: attributes(r)["qwen3_embed.inputs"])
    assert [attributes(r)["qwen3_embed.inputs"] for r in roots] == [1, 2]
    for stage in STAGES:  # each message has its own stages, under its own span
        assert {s.parent_span_id for s in found[stage]} == {r.span_id for r in roots}, stage
    assert all(r.parent_span_id.hex() == CLIENT_SPAN for r in roots)


def test_the_pages_curl_continues_its_trace(traced: Facade, receiver: tuple[Receiver, int]) -> None:
    line = DOC_CURL.replace("localhost:8080", traced.base_url.removeprefix("http://"))
    line = line.replace('"model": "Qwen3-Embedding-0.6B"', f'"model": "{MODEL}"')
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    head = done.stdout.lower()
    assert head.startswith("http/1.1 200") and "x-request-id: search-1234" in head, done.stdout
    trace_id, parent = re.search(r"traceparent: 00-(\w{32})-(\w{16})-01", DOC_CURL).groups()  # type: ignore[union-attr]
    found = spans_of(receiver[0], trace_id, "POST /v1/embeddings")
    (root,) = found["POST /v1/embeddings"]
    assert root.parent_span_id.hex() == parent and attributes(root)["qwen3_embed.request_id"] == "search-1234"
    assert all(found[name] for name in STAGES)
    assert receiver[0].services == {doc_settings()["OTEL_SERVICE_NAME"]}


def test_a_request_without_trace_context_starts_its_own_trace(traced: Facade, receiver: tuple[Receiver, int]) -> None:
    reply = httpx.post(f"{traced.base_url}/v1/embeddings", json={"model": MODEL, "input": "no parent here"})
    assert reply.status_code == 200
    rid = reply.headers["x-request-id"]

    def root() -> Span | None:
        with receiver[0].lock:
            spans = list(receiver[0].spans)
        return next((s for s in spans if any(kv.value.string_value == rid for kv in s.attributes)), None)

    wait_for(lambda: root() is not None, 20, "the request's span")
    span = root()
    assert span is not None and span.parent_span_id == b"" and span.trace_id.hex() != TRACE_ID


# --------------------------------------------------------------------------------------- a bad collector


def blackhole() -> Iterator[int]:
    """A port that takes TCP connections (the kernel's backlog) but never reads or answers: the worst
    collector, an export waits for its whole timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(params=["blackhole", "refused"])
def bad_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}"  # nothing listens there
    else:
        for port in blackhole():
            yield f"http://127.0.0.1:{port}"


EXPORT_TIMEOUT_S = 10.0
QUEUE_SPANS = 64
REQUESTS = 120


def test_a_bad_collector_never_slows_or_fails_requests(
    model_repository: Path, triton: Any, logs_dir: Path, bad_endpoint: str
) -> None:
    """Spans wait in a queue of 64 (then are dropped), exported by a background thread with a 10 s timeout:
    120 requests (about 700 spans) all answer, none near the export timeout, and the facade still stops
    within its drain plus that timeout."""
    env = tracing_env(
        bad_endpoint,
        QWEN3_EMBED_TRACING_QUEUE_SPANS=str(QUEUE_SPANS),
        QWEN3_EMBED_TRACING_EXPORT_TIMEOUT_S=str(EXPORT_TIMEOUT_S),
    )
    with run_facade(model_repository, triton.grpc_url, logs_dir, env=env) as facade:
        slowest = 0.0
        with httpx.Client(base_url=facade.base_url, timeout=60) as client:
            for i in range(REQUESTS):
                started = time.perf_counter()
                reply = client.post(
                    "/v1/embeddings",
                    json={"model": MODEL, "input": [f"request {i}", "beside a dead collector"]},
                    headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"},
                )
                slowest = max(slowest, time.perf_counter() - started)
                assert reply.status_code == 200, reply.text
                assert len(reply.json()["data"]) == 2
        print(f"{bad_endpoint}: slowest of {REQUESTS} requests {slowest * 1000:.0f} ms")
        # A wide safety bound: a request that waited on the export would take the export timeout (10 s).
        assert slowest < EXPORT_TIMEOUT_S / 4
        wait_for(lambda: "Queue full" in facade.log(), 20, "the span queue to overflow (spans dropped)")
        stopping = time.monotonic()
        facade.process.terminate()
        facade.process.wait(timeout=60)
        stopped_in = time.monotonic() - stopping
    print(f"{bad_endpoint}: stopped in {stopped_in:.1f} s")
    assert facade.process.returncode == 0
    assert stopped_in < 5 + EXPORT_TIMEOUT_S + 10  # drain (5 s in tests) + the bounded flush + margin


# ------------------------------------------------------------------------------------------- request ids


def raw_http(base_url: str, request: bytes) -> tuple[int, dict[str, str]]:
    """One raw HTTP/1.1 exchange (headers no client library would send): the status and headers."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:])}
    return status, headers


def is_new_id(value: str | None) -> bool:
    return value is not None and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def test_every_http_response_has_a_request_id(facade: Facade) -> None:
    """200, 4xx and 5xx; the client's valid id is echoed, a missing one is made up."""
    url = facade.base_url
    with httpx.Client(base_url=url, timeout=30) as client:
        ok = client.post("/v1/embeddings", json={"model": MODEL, "input": "hello"})
        assert ok.status_code == 200 and is_new_id(ok.headers.get("x-request-id"))
        echoed = client.post("/v1/embeddings", json={"model": MODEL, "input": "hi"}, headers={"X-Request-Id": "abc-1"})
        assert echoed.status_code == 200 and echoed.headers["x-request-id"] == "abc-1"
        bad = client.post("/v1/embeddings", json={"model": MODEL, "input": []}, headers={"x-request-id": "r-400"})
        assert bad.status_code == 400 and bad.headers["x-request-id"] == "r-400"
        missing = client.get("/no/such/path", headers={"x-request-id": "r-404"})
        assert missing.status_code == 404 and missing.headers["x-request-id"] == "r-404"
        unsupported = client.post("/v1/embeddings", content=b"x", headers={"content-type": "text/plain"})
        assert unsupported.status_code == 415 and is_new_id(unsupported.headers.get("x-request-id"))
        assert client.get("/health/live").headers["x-request-id"]
        assert ok.headers["x-request-id"] != unsupported.headers["x-request-id"]
    # 5xx: a transfer coding the server does not implement (the gate's 501).
    status, headers = raw_http(
        url,
        b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: gzip, chunked\r\nx-request-id: r-501\r\n\r\n0\r\n\r\n",
    )
    assert status == 501 and headers["x-request-id"] == "r-501"


@pytest.mark.parametrize(
    "hostile",
    [b"x" * 129, b"y" * 4000, b"a\x01b", b"tab\there", b"del\x7f", b"caf\xc3\xa9", b"'; DROP TABLE", b"a,b"],
    ids=["129-chars", "4000-chars", "control", "tab", "del", "non-ascii", "spaces-quotes", "comma"],
)
def test_a_hostile_request_id_is_replaced(facade: Facade, hostile: bytes) -> None:
    status, headers = raw_http(
        facade.base_url,
        b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-request-id: " + hostile + b"\r\nconnection: close\r\n\r\n",
    )
    # 200 with a new id; or the HTTP parser's own 400 (the app never saw the request), with a new id too.
    assert status in (200, 400) and is_new_id(headers.get("x-request-id")), (status, headers)
    if hostile in (b"tab\there", b"x" * 129, b"caf\xc3\xa9"):
        assert status == 200  # these reach the app: it replaces them


def test_grpc_answers_a_request_id_in_trailing_metadata(facade: Facade) -> None:
    with grpc.insecure_channel(facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        _, call = stub.Embed.with_call(pb.EmbedRequest(inputs=["x"]), metadata=(("x-request-id", "g-1"),), timeout=30)
        assert dict(call.trailing_metadata())["x-request-id"] == "g-1"
        _, call = stub.Embed.with_call(pb.EmbedRequest(inputs=["x"]), timeout=30)
        assert is_new_id(dict(call.trailing_metadata())["x-request-id"])
        _, call = stub.Embed.with_call(
            pb.EmbedRequest(inputs=["x"]), metadata=(("x-request-id", "bad id; " * 40),), timeout=30
        )
        assert is_new_id(dict(call.trailing_metadata())["x-request-id"])
        with pytest.raises(grpc.RpcError) as failed:
            stub.Embed(pb.EmbedRequest(inputs=[]), metadata=(("x-request-id", "g-err"),), timeout=30)
        assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert dict(failed.value.trailing_metadata())["x-request-id"] == "g-err"  # type: ignore[attr-defined]
