"""OpenAI-compatible HTTP API end to end, with the official `openai` client, against the real facade."""

from __future__ import annotations

import base64

import grpc
import httpx
import numpy as np
import openai
import pytest

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import Facade, cosine, embed, vectors

TEXTS = ["How are you today?", "The capital of China is Beijing.", "def f(x): return x * 2"]


@pytest.fixture(scope="module")
def client(facade: Facade) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{facade.base_url}/v1", api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def model_name(facade: Facade) -> str:
    return httpx.get(f"{facade.base_url}/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def stub(facade: Facade):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(facade.target) as channel:
        yield facade.stub(channel)


def as_array(data: list[object]) -> np.ndarray:
    """The SDK decodes base64 itself only when it chose the format; an explicit base64 stays a string."""
    rows = [d.embedding for d in data]  # type: ignore[attr-defined]
    if rows and isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows])
    return np.array(rows, dtype=np.float32)


def test_seed_example_verbatim(client: openai.OpenAI, model_name: str, stub) -> None:  # type: ignore[no-untyped-def]
    response = client.embeddings.create(model=model_name, input="How are you today?")
    assert response.object == "list" and response.model == model_name
    assert len(response.data) == 1 and len(response.data[0].embedding) == 64
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0
    grpc_vec = vectors(embed(stub, ["How are you today?"]))[0]
    assert cosine(response.data[0].embedding, grpc_vec) >= 0.99999


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_list_and_dimensions_match_grpc(client: openai.OpenAI, model_name: str, stub, encoding_format: str) -> None:  # type: ignore[no-untyped-def]
    for dims in (None, 64, 32):
        kwargs = {"dimensions": dims} if dims else {}
        response = client.embeddings.create(
            model=model_name,
            input=TEXTS,
            encoding_format=encoding_format,
            **kwargs,  # type: ignore[arg-type]
        )
        ours = as_array(response.data)
        expected = vectors(embed(stub, TEXTS, dimensions=dims or 0))
        assert ours.shape == expected.shape == (3, dims or 64)
        for a, b in zip(ours, expected, strict=True):
            assert cosine(a, b) >= 0.99999


def test_base64_is_little_endian_float32(facade: Facade, model_name: str) -> None:
    body = {"model": model_name, "input": TEXTS, "encoding_format": "base64"}
    raw = httpx.post(f"{facade.base_url}/v1/embeddings", json=body).json()
    floats = httpx.post(f"{facade.base_url}/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    for a, b in zip(raw["data"], floats["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(a["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(b["embedding"], dtype=np.float32))


def test_token_id_input(client: openai.OpenAI, model_name: str, stub) -> None:  # type: ignore[no-untyped-def]
    tok = stub.Tokenize(pb.TokenizeRequest(inputs=TEXTS), timeout=30)
    ids = [list(i.ids) for i in tok.inputs]
    expected = vectors(embed(stub, TEXTS))
    many = as_array(client.embeddings.create(model=model_name, input=ids).data)
    one = as_array(client.embeddings.create(model=model_name, input=ids[0]).data)
    without_eos = as_array(client.embeddings.create(model=model_name, input=[i[:-1] for i in ids]).data)
    for got, want in zip(many, expected, strict=True):
        assert cosine(got, want) >= 0.99999
    assert cosine(one[0], expected[0]) >= 0.99999
    assert cosine(without_eos[1], expected[1]) >= 0.99999  # EOS appended when missing


def test_extensions(facade: Facade, model_name: str, stub) -> None:  # type: ignore[no-untyped-def]
    url = f"{facade.base_url}/v1/embeddings"
    query = httpx.post(url, json={"model": model_name, "input": TEXTS, "input_type": "query"}).json()
    grpc_query = vectors(embed(stub, TEXTS, prompt_name="query"))
    assert cosine(query["data"][0]["embedding"], grpc_query[0]) >= 0.99999
    passage = httpx.post(url, json={"model": model_name, "input": TEXTS, "input_type": "passage"}).json()
    assert cosine(passage["data"][0]["embedding"], vectors(embed(stub, TEXTS))[0]) >= 0.99999
    instr = httpx.post(url, json={"model": model_name, "input": TEXTS, "instruction": "Find code"}).json()
    assert cosine(instr["data"][2]["embedding"], vectors(embed(stub, TEXTS, instruction="Find code"))[2]) >= 0.99999
    raw = httpx.post(url, json={"model": model_name, "input": TEXTS, "normalize": False}).json()
    assert abs(np.linalg.norm(raw["data"][0]["embedding"]) - 1) > 1e-3
    cut = httpx.post(url, json={"model": model_name, "input": "word " * 2000, "truncate": "END"})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 512


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error  # type: ignore[no-any-return]


def test_error_shapes(facade: Facade, model_name: str) -> None:
    url = f"{facade.base_url}/v1/embeddings"
    e = error_of(httpx.post(url, json={"model": model_name, "input": ""}), 400)
    assert "empty" in str(e["message"])
    e = error_of(httpx.post(url, json={"model": model_name, "input": "x", "dimensions": 4}), 400)
    assert e["param"] == "dimensions"
    e = error_of(httpx.post(url, json={"model": model_name, "input": [[1, 999999]]}), 400)
    assert "outside" in str(e["message"])
    e = error_of(httpx.post(url, json={"model": model_name, "input": "word " * 2000}), 400)
    assert "limit of 512" in str(e["message"])
    e = error_of(httpx.post(url, json={"model": "gpt-4", "input": "x"}), 404)
    assert model_name in str(e["message"])
    e = error_of(
        httpx.post(url, content=b'{"model": "x", "input": "\xff\xfe"}', headers={"content-type": "application/json"}),
        400,
    )
    e = error_of(httpx.post(url, content=b"input=x", headers={"content-type": "text/plain"}), 415)
    e = error_of(httpx.post(url, json={"model": model_name}), 400)
    assert e["param"] == "input"
    big = {"model": model_name, "input": ["x" * 1_000_000] * 17}
    error_of(httpx.post(url, json=big, timeout=60), 413)


def test_openai_client_raises_typed_errors(client: openai.OpenAI, model_name: str) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=model_name, input="x", dimensions=1000)


def test_models_health_info_openapi(facade: Facade, model_name: str) -> None:
    base = facade.base_url
    models = httpx.get(f"{base}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    assert httpx.get(f"{base}/health/live").status_code == 200
    assert httpx.get(f"{base}/health/ready").status_code == 200
    info = httpx.get(f"{base}/info").json()
    assert info["model"] == model_name and info["dimensions"] == 64 and info["min_dimensions"] == 32
    spec = httpx.get(f"{base}/openapi.json").json()
    assert "/v1/embeddings" in spec["paths"]


def test_metrics_move(facade: Facade, client: openai.OpenAI, model_name: str) -> None:
    def sample(text: str, name: str, labels: str = "") -> float:
        for line in text.splitlines():
            if line.startswith(name + labels) and (labels or line[len(name)] in " {"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = httpx.get(f"{facade.base_url}/metrics").text
    client.embeddings.create(model=model_name, input=TEXTS)
    after = httpx.get(f"{facade.base_url}/metrics").text
    http_ok = '{api="http",code="200",method="/v1/embeddings"}'
    assert (
        sample(after, "qwen3_embed_requests_total", http_ok)
        == sample(before, "qwen3_embed_requests_total", http_ok) + 1
    )
    for name in (
        "qwen3_embed_real_tokens_total",
        "qwen3_embed_padded_tokens_total",
        "qwen3_embed_tokenize_duration_seconds_count",
        "qwen3_embed_inputs_per_request_sum",
    ):
        assert sample(after, name) > sample(before, name), name
    assert sample(after, "qwen3_embed_padded_tokens_total") >= sample(after, "qwen3_embed_real_tokens_total")
    assert 'qwen3_embed_triton_requests_total{bucket="16"}' in after
    assert sample(after, "qwen3_embed_triton_up") == 1.0
    assert "qwen3_embed_in_flight_requests" in after


def test_strict_like_openai(facade: Facade, model_name: str) -> None:
    url = f"{facade.base_url}/v1/embeddings"

    def post(body: dict[str, object]) -> httpx.Response:
        return httpx.post(url, json={"model": model_name, **body}, timeout=60)

    # Fields no peer mapping here implements (vLLM's cache_salt, padding) are unknown: a 400 naming them.
    r = post({"input": "x", "cache_salt": "s" * 43, "padding": "max_length"})
    assert r.status_code == 400
    assert "cache_salt" in r.json()["error"]["message"] and "padding" in r.json()["error"]["message"]
    for bad in ({"input": [True, False]}, {"input": "x", "dimensions": "64"}, {"input": "x", "dimensions": 64.0}):
        assert post(bad).status_code == 400, bad
    r = post({"input": "x", "dimensions": 0})
    assert r.status_code == 400 and "between 32 and 64" in r.text and "or 0" not in r.text
    assert post({"input": "x", "dimensions": 64}).status_code == 200


def test_lone_surrogates_are_a_json_400(facade: Facade, model_name: str) -> None:
    for body in (
        f'{{"model": "{model_name}", "input": ["abc\\ud800"]}}',
        f'{{"model": "{model_name}", "input": "ok", "instruction": "\\udfff x"}}',
        '{"model": "\\ud800", "input": "ok"}',
    ):
        r = httpx.post(
            f"{facade.base_url}/v1/embeddings", content=body, headers={"content-type": "application/json"}, timeout=60
        )
        assert r.status_code in (400, 404), (body, r.text)
        assert r.headers["content-type"] == "application/json" and "error" in r.json()


def test_conflicting_framing_is_refused_and_closed(facade: Facade) -> None:
    import socket

    body = b'{"model": "x", "input": "y"}'
    chunked = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\ntransfer-encoding: chunked\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", facade.http_port), timeout=10) as s:
        s.sendall(head + chunked)
        received = b""
        while chunk := s.recv(65536):  # ends when the server closes the connection
            received += chunk
    assert received.startswith(b"HTTP/1.1 400"), received[:200]
    assert b"connection: close" in received.lower()


def test_model_retrieve_and_no_cdn_docs(client: openai.OpenAI, model_name: str, facade: Facade) -> None:
    assert client.models.retrieve(model_name).id == model_name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert httpx.get(f"{facade.base_url}/docs", timeout=10).status_code == 404
    assert httpx.get(f"{facade.base_url}/openapi.json", timeout=10).status_code == 200
