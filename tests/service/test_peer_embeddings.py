"""The peers' /v1/embeddings fields end to end (vLLM, NIM, Jina, Infinity) through the real `openai` SDK and
plain HTTP, against gRPC on the same facade and against sentence-transformers (the reference): vectors within
cosine 0.99999, packed bytes identical."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import httpx
import numpy as np
import openai
import pytest
from sentence_transformers.quantization import quantize_embeddings

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.pipeline.encoding import int8_ranges
from tests.helpers import PACKED_DTYPE, PACKED_ENCODING, Facade, cosine, embed, vectors

TEXTS = ["How are you today?", "The capital of China is Beijing.", "def f(x): return x * 2"]
LONG = ["Como o Brasil pode fomentar o desenvolvimento de modelos de IA? " * 6, "word " * 40]


@pytest.fixture(scope="module")
def client(facade: Facade) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{facade.base_url}/v1", api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def model_name(facade: Facade) -> str:
    return str(httpx.get(f"{facade.base_url}/v1/models").json()["data"][0]["id"])


@pytest.fixture(scope="module")
def stub(facade: Facade):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(facade.target) as channel:
        yield facade.stub(channel)


def post(facade: Facade, body: dict[str, Any], path: str = "/v1/embeddings") -> httpx.Response:
    return httpx.post(f"{facade.base_url}{path}", json=body, timeout=60)


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def reference_truncated(reference: Any, texts: list[str], k: int, side: str, prompt: str | None = None) -> np.ndarray:
    """sentence-transformers cutting each text to k tokens, its EOS included (vLLM's truncate_prompt_tokens
    with the tokenizer's truncation side)."""
    old = reference.tokenizer.truncation_side, reference.max_seq_length
    try:
        reference.tokenizer.truncation_side, reference.max_seq_length = side, k
        return np.asarray(reference.encode(texts, prompt=prompt))
    finally:
        reference.tokenizer.truncation_side, reference.max_seq_length = old


def test_vllm_fields_through_the_openai_sdk(client: openai.OpenAI, model_name: str, stub, reference: Any) -> None:  # type: ignore[no-untyped-def]
    # truncate_prompt_tokens: the first k tokens (Qwen3's tokenizer truncates on the right), EOS included.
    got = client.embeddings.create(
        model=model_name, input=LONG, encoding_format="float", extra_body={"truncate_prompt_tokens": 10}
    )
    assert got.usage.prompt_tokens == 20
    want = reference_truncated(reference, LONG, 10, "right")
    for a, b in zip(got.data, want, strict=True):
        assert cosine(a.embedding, b) >= 0.99999
    # The query prompt counts in the k tokens, as when a vLLM client writes the instruction into the text.
    query = client.embeddings.create(
        model=model_name,
        input=LONG,
        encoding_format="float",
        extra_body={"truncate_prompt_tokens": 24, "input_type": "query"},
    )
    assert query.usage.prompt_tokens == 48
    prompt = reference.prompts["query"]
    for a, b in zip(query.data, reference_truncated(reference, LONG, 24, "right", prompt), strict=True):
        assert cosine(a.embedding, b) >= 0.99999
    # truncation_side left keeps the last k tokens.
    left = client.embeddings.create(
        model=model_name,
        input=LONG,
        encoding_format="float",
        extra_body={"truncate_prompt_tokens": 10, "truncation_side": "left"},
    )
    for a, b in zip(left.data, reference_truncated(reference, LONG, 10, "left"), strict=True):
        assert cosine(a.embedding, b) >= 0.99999
    # -1 = the model's limit; a text under it is untouched.
    whole = client.embeddings.create(
        model=model_name,
        input=TEXTS,
        encoding_format="float",
        extra_body={"truncate_prompt_tokens": -1, "add_special_tokens": True},
    )
    for a, b in zip(whole.data, vectors(embed(stub, TEXTS)), strict=True):
        assert cosine(a.embedding, b) >= 0.99999
    # use_activation false (and the older normalize) = the raw pooled vector, as gRPC normalize=false.
    raw = vectors(embed(stub, TEXTS, normalize=False))
    for field in ("use_activation", "normalize"):
        r = client.embeddings.create(model=model_name, input=TEXTS, encoding_format="float", extra_body={field: False})
        np.testing.assert_allclose(np.array([d.embedding for d in r.data]), raw, rtol=1e-4, atol=1e-4)
    # dimensions with base64 float16, big-endian: the gRPC float16 bytes, swapped.
    r = client.embeddings.create(
        model=model_name,
        input=TEXTS,
        dimensions=32,
        encoding_format="base64",
        extra_body={"embed_dtype": "float16", "endianness": "big"},
    )
    half = embed(stub, TEXTS, dimensions=32, encoding=pb.ENCODING_FLOAT16)
    for d, e in zip(r.data, half.embeddings, strict=True):
        big = np.frombuffer(base64.b64decode(d.embedding), dtype=">f2")
        assert big.astype("<f2").tobytes() == e.packed


@pytest.mark.parametrize("endianness", ["native", "little", "big"])
@pytest.mark.parametrize("embed_dtype", ["float32", "float16", "bfloat16"])
def test_vllm_base64_dtypes_are_the_grpc_bytes(
    facade: Facade,
    model_name: str,
    stub,
    embed_dtype: str,  # type: ignore[no-untyped-def]
    endianness: str,
) -> None:
    body = {
        "model": model_name,
        "input": TEXTS,
        "encoding_format": "base64",
        "embed_dtype": embed_dtype,
        "endianness": endianness,
    }
    data = ok(post(facade, body))["data"]
    order = ">" if endianness == "big" else "<"  # native is the server's: little-endian
    floats = vectors(embed(stub, TEXTS))
    for d, f, e in zip(data, floats, embed(stub, TEXTS, encoding=pb.ENCODING_FLOAT16).embeddings, strict=True):
        raw = base64.b64decode(d["embedding"])
        if embed_dtype == "float32":
            assert raw == f.astype(order + "f4").tobytes()
        elif embed_dtype == "float16":
            assert np.frombuffer(raw, dtype=order + "f2").astype("<f2").tobytes() == e.packed
        else:
            import torch

            want = torch.from_numpy(f.copy()).to(torch.bfloat16).view(torch.int16).numpy().astype(order + "i2")
            assert raw == want.tobytes()


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
@pytest.mark.parametrize("kind", list(PACKED_ENCODING))
def test_nim_embedding_type_is_the_grpc_bytes(
    facade: Facade,
    client: openai.OpenAI,
    model_name: str,
    stub,  # type: ignore[no-untyped-def]
    kind: str,
    encoding_format: str,
) -> None:
    r = client.embeddings.create(
        model=model_name,
        input=TEXTS,
        dimensions=48,
        encoding_format=encoding_format,  # type: ignore[arg-type]
        extra_body={"embedding_type": kind, "input_type": "query", "truncate": "END"},
    )
    grpc_packed = embed(
        stub, TEXTS, dimensions=48, prompt_name="query", truncate=pb.TRUNCATE_END, encoding=PACKED_ENCODING[kind]
    )
    floats = vectors(embed(stub, TEXTS, dimensions=48, prompt_name="query"))
    if kind.endswith("int8"):
        reference = quantize_embeddings(floats, precision=kind, ranges=int8_ranges(48))
    else:
        reference = quantize_embeddings(floats, precision=kind)
    for d, e, want in zip(r.data, grpc_packed.embeddings, reference, strict=True):
        got = (
            base64.b64decode(d.embedding)
            if encoding_format == "base64"
            else np.array(  # type: ignore[arg-type]
                d.embedding, dtype=PACKED_DTYPE[kind]
            ).tobytes()
        )
        assert got == e.packed == want.tobytes()


def test_nim_model_suffix_and_input_type(facade: Facade, client: openai.OpenAI, model_name: str, stub) -> None:  # type: ignore[no-untyped-def]
    query = vectors(embed(stub, TEXTS, prompt_name="query"))
    doc = vectors(embed(stub, TEXTS))
    for model, extra, want in (
        (f"{model_name}-query", {}, query),
        (f"{model_name}-passage", {}, doc),
        (model_name, {"input_type": "query"}, query),
        (f"{model_name}-query", {"input_type": "query"}, query),
    ):
        r = client.embeddings.create(model=model, input=TEXTS, encoding_format="float", extra_body=extra)
        for a, b in zip(r.data, want, strict=True):
            assert cosine(a.embedding, b) >= 0.99999
    e = post(facade, {"model": f"{model_name}-query", "input": "x", "input_type": "passage"})
    assert e.status_code == 400 and e.json()["error"]["param"] == "model"
    assert post(facade, {"model": "nope-query", "input": "x"}).status_code == 404


def test_jina_fields(facade: Facade, model_name: str, stub) -> None:  # type: ignore[no-untyped-def]
    body = {
        "model": model_name,
        "input": TEXTS,
        "task": "retrieval.query",
        "embedding_type": "base64",
        "normalized": True,
        "late_chunking": False,
        "truncate": True,
        "dimensions": 32,
    }
    data = ok(post(facade, body))["data"]
    grpc_vectors = embed(stub, TEXTS, prompt_name="query", dimensions=32, truncate=pb.TRUNCATE_END)
    for d, e in zip(data, grpc_vectors.embeddings, strict=True):
        assert base64.b64decode(d["embedding"]) == np.array(e.values, dtype="<f4").tobytes()
    passage = ok(post(facade, {**body, "task": "retrieval.passage", "embedding_type": "ubinary"}))["data"]
    grpc_bits = embed(stub, TEXTS, dimensions=32, encoding=pb.ENCODING_UBINARY)
    assert [bytes(d["embedding"]) for d in passage] == [e.packed for e in grpc_bits.embeddings]


def test_infinity_route_and_modality(facade: Facade, model_name: str) -> None:
    body = {"model": model_name, "input": TEXTS, "encoding_format": "base64", "modality": "text"}
    infinity, openai_route = ok(post(facade, body, "/embeddings")), ok(post(facade, body))
    assert infinity == openai_route and infinity["model"] == model_name and len(infinity["data"]) == 3
    assert post(facade, {**body, "modality": "image"}, "/embeddings").json()["error"]["param"] == "modality"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"encoding_format": "bytes"}, "encoding_format"),
        ({"embedding_type": "int4"}, "embedding_type"),
        ({"embed_dtype": "fp8_e4m3", "encoding_format": "base64"}, "embed_dtype"),
        ({"embed_dtype": "float64"}, "embed_dtype"),
        ({"embed_dtype": "float16", "embedding_type": "binary"}, "embed_dtype"),
        ({"endianness": "middle"}, "endianness"),
        ({"truncate_prompt_tokens": 513}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": 8, "truncate": "END"}, "truncate_prompt_tokens"),
        ({"truncation_side": "middle"}, "truncation_side"),
        ({"add_special_tokens": False}, "add_special_tokens"),
        ({"use_activation": "yes"}, "use_activation"),
        ({"use_activation": False, "normalize": True}, "use_activation"),
        ({"normalized": 1}, "normalized"),
        ({"task": "text-matching"}, "task"),
        ({"task": "retrieval.query", "input_type": "passage"}, "task"),
        ({"late_chunking": True}, "late_chunking"),
        ({"modality": "image"}, "modality"),
        ({"modality": ["text", "text", "text"]}, "modality"),
        ({"truncate": "MIDDLE"}, "truncate"),
        ({"embedding_type": "int8", "normalize": False}, "normalize"),
        ({"embedding_type": "uint8", "use_activation": False}, "normalize"),
        ({"priority_of_nothing": 1}, "priority_of_nothing"),
    ],
)
def test_bad_values_are_a_400_naming_the_field(
    facade: Facade, model_name: str, fields: dict[str, Any], param: str
) -> None:
    for path in ("/v1/embeddings", "/embeddings"):
        r = post(facade, {"model": model_name, "input": ["a", "b"], **fields}, path)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", error
        assert param in error["message"] or str(next(iter(fields.values()))) in error["message"], error


def test_the_drop_in_python_block_runs(facade: Facade, model_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/clients.md, "Drop-in for peers' clients": its Python block as it is, aimed at the session's facade."""
    from tests.doc_pages import CLIENTS, code_blocks, section

    [code] = code_blocks(section(CLIENTS, "### Fields on `/v1/embeddings` (vLLM, NIM, Jina, Infinity)"), "python")
    for text, here in [("http://localhost:8080/v1", f"{facade.base_url}/v1"), ("Qwen3-Embedding-0.6B", model_name)]:
        assert text in code
        code = code.replace(text, here)
    exec(compile(code, f"{CLIENTS} (Drop-in for peers' clients)", "exec"), {})
    assert capsys.readouterr().out.split() == ["64", "16"]  # 64 int8 values; 16 tokens after truncation


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_python_client_int8_over_grpc_and_http_agree(facade: Facade, stub, precision: str) -> None:  # type: ignore[no-untyped-def]
    """service.client: gRPC returns the server's bytes, HTTP quantizes floats itself; both are the same."""
    from service.client import Client, EmbedOptions

    options = EmbedOptions("query", dimensions=48, encoding=precision)
    with Client(facade.target) as grpc_client, Client(f"{facade.base_url}/v1", api="http") as http_client:
        over_grpc = grpc_client.embed(TEXTS, options).vectors
        over_http = http_client.embed(TEXTS, options).vectors
    want = embed(stub, TEXTS, prompt_name="query", dimensions=48, encoding=PACKED_ENCODING[precision])
    assert over_grpc.dtype == over_http.dtype == PACKED_DTYPE[precision]
    assert [r.tobytes() for r in over_grpc] == [r.tobytes() for r in over_http] == [e.packed for e in want.embeddings]
