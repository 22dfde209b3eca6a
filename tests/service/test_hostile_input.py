"""Hostile input over gRPC and HTTP against the session facade, while a stream of well-formed requests
runs beside it and has every vector checked against single-call results.

Each hostile input gets its documented error (INVALID_ARGUMENT / 400, RESOURCE_EXHAUSTED / 413, 415,
404, 405) or, where it is valid input, a vector equal to the reference implementation's. None may crash
the process, end in INTERNAL / 5xx, or disturb the concurrent requests."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import Facade, cosine, vectors

MB10 = 10 * 1024 * 1024
GOOD_TEXTS = [f"well-formed request {i}: the quick brown fox jumps over the lazy dog" for i in range(6)]
SPECIAL_TEXTS = ["<|endoftext|>", "<think>", "<|im_start|>user\nhi<|im_end|>", "a <|endoftext|> b"]
CONTROL_TEXTS = ["\x00", "\x01\x02\x1b[31mred\x1b[0m", "tab\tnew\nline\rcarriage\x7f", "\u200b\u200e\ufeff"]
WHITESPACE_TEXTS = [" ", "\n\t  \r\n", "\u3000\u00a0"]


class GoodTraffic:
    """Well-formed gRPC and HTTP requests in a loop on their own threads; every response is checked."""

    def __init__(self, facade: Facade, model: str, expected: np.ndarray) -> None:
        self.facade, self.model, self.expected = facade, model, expected
        self.stop = threading.Event()
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._grpc, daemon=True),
            threading.Thread(target=self._http, daemon=True),
        ]

    def _check(self, api: str, got: np.ndarray, picked: list[int]) -> None:
        for row, i in zip(got, picked, strict=True):
            if cosine(row, self.expected[i]) < 0.99999:
                self.failures.append(f"{api}: wrong vector for input {i}")
                return
        self.ok[api] += 1

    def _grpc(self) -> None:
        with grpc.insecure_channel(self.facade.target) as channel:
            stub = self.facade.stub(channel)
            k = 0
            while not self.stop.is_set():
                picked = [(k + j) % len(GOOD_TEXTS) for j in range(1 + k % 3)]
                k += 1
                try:
                    response = stub.Embed(pb.EmbedRequest(inputs=[GOOD_TEXTS[i] for i in picked]), timeout=60)
                except grpc.RpcError as exc:
                    self.failures.append(f"grpc: {exc.code().name} {exc.details()}")
                    continue
                self._check("grpc", vectors(response), picked)

    def _http(self) -> None:
        with httpx.Client(base_url=self.facade.base_url, timeout=60) as client:
            k = 0
            while not self.stop.is_set():
                picked = [(k + j) % len(GOOD_TEXTS) for j in range(1 + k % 2)]
                k += 1
                r = client.post("/v1/embeddings", json={"model": self.model, "input": [GOOD_TEXTS[i] for i in picked]})
                if r.status_code != 200:
                    self.failures.append(f"http: {r.status_code} {r.text[:200]}")
                    continue
                self._check("http", np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32), picked)


@pytest.fixture(scope="module")
def model_name(facade: Facade) -> str:
    return str(httpx.get(f"{facade.base_url}/v1/models").json()["data"][0]["id"])


@pytest.fixture(scope="module")
def stub(facade: Facade) -> Iterator[object]:
    with grpc.insecure_channel(facade.target, options=[("grpc.max_send_message_length", 128 * 1024 * 1024)]) as channel:
        yield facade.stub(channel)


@pytest.fixture(scope="module")
def traffic(facade: Facade, model_name: str, stub) -> Iterator[GoodTraffic]:  # type: ignore[no-untyped-def]
    """Started before the first hostile test of this module and checked after the last one."""
    expected = np.stack([vectors(stub.Embed(pb.EmbedRequest(inputs=[t]), timeout=60))[0] for t in GOOD_TEXTS])
    good = GoodTraffic(facade, model_name, expected)
    for t in good.threads:
        t.start()
    yield good
    good.stop.set()
    for t in good.threads:
        t.join(timeout=90)
    assert not good.failures, good.failures[:5]
    assert good.ok["grpc"] > 0 and good.ok["http"] > 0, good.ok
    assert facade.process.poll() is None, "the facade died"
    log = facade.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def grpc_error(stub, request: pb.EmbedRequest, timeout: float = 60) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(request, timeout=timeout)
    return err.value


@pytest.mark.parametrize(
    ("request_kwargs", "needle"),
    [
        ({"inputs": []}, "no inputs"),
        ({"inputs": [""]}, "input 0 is an empty string"),
        ({"inputs": ["ok", "", "ok"]}, "input 1 is an empty string"),
        ({"inputs": ["x" * MB10]}, "more than the model's limit"),
        ({"inputs": ["ok", "hello world " * (MB10 // 12)]}, "input 1 "),
        ({"inputs": [" " * MB10], "truncate": pb.TRUNCATE_END}, "could not be tokenized"),
        ({"inputs": ["x"] * 100_000}, "more than the limit of 2048"),
        ({"inputs": ["x"], "dimensions": 2**32 - 1}, "dimensions must be between"),
        ({"inputs": ["x"], "dimensions": 1}, "dimensions must be between"),
        ({"inputs": ["x"], "truncate": 99}, "unknown truncate"),  # type: ignore[dict-item]
        ({"inputs": ["x"], "encoding": -5}, "unknown encoding"),  # type: ignore[dict-item]
        ({"inputs": ["x"], "prompt_name": "<|endoftext|>"}, "unknown prompt_name"),
        ({"inputs": ["x"], "instruction": "y" * MB10}, "more than the model's limit"),
    ],
    ids=[
        "empty-list",
        "empty-string",
        "empty-among-valid",
        "10MB-one-word",
        "10MB-words",
        "10MB-spaces-truncated",
        "100k-inputs",
        "huge-dimensions",
        "tiny-dimensions",
        "bad-truncate",
        "bad-encoding",
        "special-prompt-name",
        "10MB-instruction",
    ],
)
def test_grpc_hostile_gets_invalid_argument(
    stub,
    traffic: GoodTraffic,
    request_kwargs: dict[str, object],  # type: ignore[no-untyped-def]
    needle: str,
) -> None:
    err = grpc_error(stub, pb.EmbedRequest(**request_kwargs))  # type: ignore[arg-type]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert needle in err.details()
    assert len(err.details()) < 1000  # the error never echoes the input back


def test_grpc_message_over_the_limit_is_resource_exhausted(stub, traffic: GoodTraffic) -> None:  # type: ignore[no-untyped-def]
    """settings.max_message_bytes (64 MiB): gRPC refuses the message before the service sees it."""
    err = grpc_error(stub, pb.EmbedRequest(inputs=["z" * (65 * 1024 * 1024)]))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())


def test_grpc_valid_oddities_get_the_reference_vector(
    stub,
    traffic: GoodTraffic,  # type: ignore[no-untyped-def]
    reference: SentenceTransformer,
) -> None:
    """Whitespace-only, control characters and text that spells special tokens are valid input: each gets
    the vector sentence-transformers gives the same text, in a mixed batch equal to single calls."""
    texts = WHITESPACE_TEXTS + CONTROL_TEXTS + SPECIAL_TEXTS
    batch = vectors(stub.Embed(pb.EmbedRequest(inputs=texts), timeout=60))
    ref = reference.encode(texts)
    assert batch.shape == (len(texts), 64)
    for i, text in enumerate(texts):
        alone = vectors(stub.Embed(pb.EmbedRequest(inputs=[text]), timeout=60))[0]
        assert cosine(alone, batch[i]) >= 0.99999, repr(text)
        assert cosine(alone, ref[i]) >= 0.9999, repr(text)
    # A 1 MB input with TRUNCATE_END is valid: the first 512 tokens are embedded.
    long_text = "hello world " * (1024 * 1024 // 12)
    cut = stub.Embed(pb.EmbedRequest(inputs=[long_text], truncate=pb.TRUNCATE_END), timeout=120)
    assert cut.usage.prompt_tokens == 512 and len(cut.embeddings[0].values) == 64


def post(
    facade: Facade, content: bytes, content_type: str | None = "application/json", path: str = "/v1/embeddings"
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(f"{facade.base_url}{path}", content=content, headers=headers, timeout=120)


def assert_error(response: httpx.Response, status: int, needle: str = "") -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"], error
    assert len(response.content) < 2000  # never echoes the input


def test_http_hostile_bodies(facade: Facade, model_name: str, traffic: GoodTraffic) -> None:
    import json

    def body(**fields: object) -> bytes:
        return json.dumps({"model": model_name, **fields}).encode()

    cases: list[tuple[bytes, int, str]] = [
        (body(input=[]), 400, "no inputs"),
        (body(input=""), 400, "empty string"),
        (body(input=["a", ""]), 400, "input 1 is an empty string"),
        (body(input=[[]]), 400, "empty token list"),
        (body(input="x" * MB10), 400, "more than the model's limit"),
        (body(input=[[-1]]), 400, "outside"),
        (body(input=[[151669]]), 400, "outside"),
        (body(input=[[2**63]]), 400, "outside"),
        (body(input=[1, 2**70]), 400, "outside"),
        (body(input="x", dimensions=-1), 400, "dimensions"),
        (body(input="x", dimensions=0), 400, "dimensions"),
        (body(input="x", dimensions=10**30), 400, "dimensions"),
        (body(input="x", dimensions=1.5), 400, "dimensions"),
        (body(input=["x"] * 2049), 400, "more than the limit of 2048"),
        (body(input=123), 400, "input"),
        (body(input=[1.5]), 400, "input"),
        (body(input=[["a"]]), 400, "input"),
        (body(input={"a": 1}), 400, "input"),
        (body(input="x", encoding_format="xml"), 400, "encoding_format"),
        (body(input="x", truncate="MIDDLE"), 400, "truncate"),
        (body(input="x", input_type="query", prompt_name="query"), 400, "either"),
        (body(input=[1, 2], instruction="x"), 400, "token-id"),
        (json.dumps({"model": "nope", "input": "x"}).encode(), 404, "not served"),
        (b'{"model": "x", "input": "\xff\xfe\xfd"}', 400, "JSON"),
        (b'{"model": "x", "input": ', 400, "JSON"),
        (b"[1, 2, 3]", 400, ""),
        (b"null", 400, ""),
        (b'{"model": "x", "input": "x", "dimensions": 1e400}', 400, "dimensions"),
        (b'{"model": "x", "input": NaN}', 400, "input"),
        (b"[" * 100_000 + b"]" * 100_000, 400, ""),
        (b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b', "model": "x"}', 400, ""),
        (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 400, ""),
    ]
    for content, status, needle in cases:
        try:
            assert_error(post(facade, content), status, needle)
        except AssertionError as exc:
            raise AssertionError(f"body {content[:80]!r}: {exc}") from None

    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        None,
    ):
        assert_error(post(facade, body(input="x"), content_type), 415)
    assert_error(post(facade, b'{"a": 1}', path="/v1/nothing"), 404)
    r = httpx.get(f"{facade.base_url}/v1/embeddings")
    assert_error(r, 405)

    # A chunked body (no content-length) over the 16 MiB limit is cut off at the limit: 413.
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "x", "input": "'
        for _ in range(18):
            yield b"y" * (1024 * 1024)
        yield b'"}'

    r = httpx.post(
        f"{facade.base_url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}, timeout=120
    )
    assert_error(r, 413, "limit")


def test_http_valid_oddities(facade: Facade, model_name: str, stub, traffic: GoodTraffic) -> None:  # type: ignore[no-untyped-def]
    """Control characters, whitespace-only and special-token spellings over HTTP equal their gRPC vectors."""
    texts = WHITESPACE_TEXTS + CONTROL_TEXTS + SPECIAL_TEXTS
    r = httpx.post(f"{facade.base_url}/v1/embeddings", json={"model": model_name, "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    want = vectors(stub.Embed(pb.EmbedRequest(inputs=texts), timeout=60))
    for a, b in zip(got, want, strict=True):
        assert cosine(a, b) >= 0.99999
    # Special token ids given directly are in range, so they are valid token input.
    r = httpx.post(f"{facade.base_url}/v1/embeddings", json={"model": model_name, "input": [[151644, 151645]]})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64
    # A charset parameter is accepted; an unknown field is a 400 naming it (as OpenAI answers).
    r = post(facade, f'{{"model": "{model_name}", "input": "x"}}'.encode(), "application/json; charset=utf-8")
    assert r.status_code == 200
    r = post(
        facade,
        f'{{"model": "{model_name}", "input": "x", "unknown": {{"deep": [1]}}}}'.encode(),
        "application/json; charset=utf-8",
    )
    assert r.status_code == 400 and "unknown" in r.json()["error"]["message"]


def raw_http(facade: Facade, head: bytes, body: bytes = b"") -> bytes:
    """One request over a raw socket (framing httpx would not send); the answer's first 64 KiB."""
    import socket

    with socket.create_connection(("127.0.0.1", facade.http_port), timeout=30) as s:
        s.sendall(head + body)
        answer = b""
        while len(answer) < 65536:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                break
    return answer


def test_http_errors_quote_a_bounded_prefix_and_framing_is_strict(
    facade: Facade, model_name: str, traffic: GoodTraffic
) -> None:
    import json

    # A 1 MB prompt_name is quoted to 64 characters.
    r = post(facade, json.dumps({"model": model_name, "input": "x", "prompt_name": "p" * 1_000_000}).encode())
    assert_error(r, 400, "unknown prompt_name")
    # 520k unknown keys: the error names five and counts the rest.
    keys = b",".join(b'"k%d":1' % i for i in range(520_000))
    r = post(facade, b'{"model": "m", "input": "x", ' + keys + b"}")
    assert_error(r, 400, "and 519995 more")
    # A key given twice is a 400, at the top level and inside a document object alike.
    r = post(facade, json.dumps({"model": model_name, "input": "x"}).encode()[:-1] + b', "input": "y"}')
    assert_error(r, 400, "duplicate key 'input'")
    r = post(facade, b'{"query": "q", "documents": [{"text": "a", "text": "b"}]}', path="/v1/rerank")
    assert_error(r, 400, "duplicate key 'text'")
    # Transfer-Encoding other than plain chunked: 501 and the connection closed, never read as chunked.
    body = json.dumps({"model": model_name, "input": "x"}).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    for coding in (b"gzip, chunked", b"identity, chunked", b"chunked, chunked"):
        answer = raw_http(
            facade,
            b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: " + coding + b"\r\n\r\n",
            chunked,
        )
        # llhttp itself refuses a repeated chunked (400); a coding before chunked reaches the guard (501).
        assert answer.startswith((b"HTTP/1.1 501", b"HTTP/1.1 400")), (coding, answer[:200])
        assert answer.startswith(b"HTTP/1.1 501") or coding == b"chunked, chunked", (coding, answer[:200])
        assert b"connection: close" in answer.lower()
    plain = raw_http(
        facade,
        b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n",
        chunked,
    )
    assert plain.startswith(b"HTTP/1.1 200"), plain[:200]
    # URL length and header count limits: 414 and 431; a head over 16 KiB: 431.
    assert_error(httpx.get(f"{facade.base_url}/health/live?q={'a' * 9000}"), 414, "URL")
    many = {f"x-h{i}": "v" for i in range(101)}
    assert_error(httpx.get(f"{facade.base_url}/health/live", headers=many), 431, "header fields")
    big = raw_http(facade, b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert big.startswith(b"HTTP/1.1 431"), big[:200]
    assert httpx.get(f"{facade.base_url}/health/live").status_code == 200
