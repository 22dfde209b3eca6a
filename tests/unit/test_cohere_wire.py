"""Cohere's request translation and response bodies in-process (service/api/http/cohere_wire.py): input_type to
Qwen3-Embedding's prompts, every embedding type against sentence-transformers' quantize_embeddings and the gRPC
packing, the two v1 response types, rerank v2 defaults, refusals naming their field, and the error body."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from sentence_transformers.quantization import quantize_embeddings

from service.api.http.cohere_wire import (
    CohereEmbedV1Request,
    CohereEmbedV2Request,
    CohereRerankV2Request,
    Embedded,
    cohere_error,
    embed_body,
    params_from_rerank_v2,
    params_from_v1,
    params_from_v2,
)
from service.errors import ErrorKind, ServiceError
from service.pipeline.encoding import int8_ranges
from service.pipeline.params import Truncate


def unit_vectors(n: int = 3, d: int = 64) -> np.ndarray:
    rng = np.random.default_rng(7)
    v = rng.standard_normal((n, d)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def v2(**fields: object) -> CohereEmbedV2Request:
    return CohereEmbedV2Request.model_validate({"model": "m", "texts": ["a"], "input_type": "search_query", **fields})


@pytest.mark.parametrize(
    ("input_type", "instruction", "prompt"),
    [
        ("search_query", None, ("", "query")),
        ("search_document", None, ("", "")),
        ("classification", None, ("", "")),
        ("clustering", None, ("", "")),
        ("clustering", "Identify the topic", ("Identify the topic", "")),
        ("search_query", "Find code", ("Find code", "")),
    ],
)
def test_input_type_picks_qwen3s_prompt(input_type: str, instruction: str | None, prompt: tuple[str, str]) -> None:
    params = params_from_v2(v2(input_type=input_type, instruction=instruction))
    assert (params.instruction, params.prompt_name) == prompt
    assert params.truncate is Truncate.END  # Cohere's default


def test_v1_defaults() -> None:
    params = params_from_v1(CohereEmbedV1Request.model_validate({"texts": ["a", "b"]}))
    assert params.texts == ("a", "b") and params.prompt_name == "" and params.truncate is Truncate.END


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input_type": "image"}, "input_type"),
        ({"input_type": "search_document", "instruction": "Find"}, "instruction"),
        ({"max_tokens": 10}, "max_tokens"),
        ({"priority": 1}, "priority"),
        ({"images": ["data:,"]}, "images"),
        ({"inputs": []}, "inputs"),
        ({"texts": None}, "texts"),
        ({"embedding_types": ["float", "float"]}, "embedding_types"),
    ],
)
def test_refusals_name_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(ServiceError) as err:
        params_from_v2(v2(**fields))
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and err.value.param == param
    assert param.split("_")[0] in err.value.message


def test_every_type_is_the_reference_encoding() -> None:
    vectors = unit_vectors()
    body = orjson.loads(
        orjson.dumps(
            embed_body(
                Embedded(vectors, ("a", "b", "c"), 9), ["float", "int8", "uint8", "binary", "ubinary", "base64"], "2"
            ),
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
    )
    got = body["embeddings"]
    assert body["response_type"] == "embeddings_by_type" and body["texts"] == ["a", "b", "c"]
    assert body["meta"] == {
        "api_version": {"version": "2"},
        "billed_units": {"input_tokens": 9},
        "tokens": {"input_tokens": 9},
    }
    np.testing.assert_array_equal(np.asarray(got["float"], dtype=np.float32), vectors)
    np.testing.assert_array_equal(np.stack([np.frombuffer(base64.b64decode(s), "<f4") for s in got["base64"]]), vectors)
    ranges = int8_ranges(vectors.shape[1])
    for name in ("int8", "uint8", "binary", "ubinary"):
        kwargs = {"ranges": ranges} if name in ("int8", "uint8") else {}
        expected = quantize_embeddings(vectors, precision=name, **kwargs)  # type: ignore[arg-type]
        np.testing.assert_array_equal(np.asarray(got[name]), expected.astype(np.int64), err_msg=name)
        low, high = (-128, 127) if name in ("int8", "binary") else (0, 255)
        assert low <= min(min(r) for r in got[name]) and max(max(r) for r in got[name]) <= high


def test_v1_floats_response_and_v2_default() -> None:
    vectors = unit_vectors(2)
    floats = embed_body(Embedded(vectors, ("a", "b"), 4), None, "1")
    assert floats["response_type"] == "embeddings_floats" and floats["embeddings"].shape == (2, 64)
    by_type = embed_body(Embedded(vectors, ("a", "b"), 4), None, "2")
    assert by_type["response_type"] == "embeddings_by_type" and set(by_type["embeddings"]) == {"float"}


def test_rerank_v2_defaults_and_refusals() -> None:
    body = CohereRerankV2Request.model_validate({"model": "r", "query": "q", "documents": ["a", "b"]})
    params = params_from_rerank_v2(body)
    assert params.max_tokens_per_doc == 4096 and params.truncate is Truncate.END and params.top_n == 0
    capped = params_from_rerank_v2(body.model_copy(update={"max_tokens_per_doc": 7, "top_n": 1}))
    assert capped.max_tokens_per_doc == 7 and capped.top_n == 1
    disabled = body.model_copy(update={"relevant_spans": {"mode": "disabled"}})
    assert params_from_rerank_v2(disabled).documents == ("a", "b")
    for update, param in (({"relevant_spans": {"mode": "enabled"}}, "relevant_spans"), ({"priority": 3}, "priority")):
        with pytest.raises(ServiceError) as err:
            params_from_rerank_v2(body.model_copy(update=update))
        assert err.value.param == param


def test_error_body_is_coheres() -> None:
    for kind, status in (
        (ErrorKind.INVALID_ARGUMENT, 400),
        (ErrorKind.NOT_FOUND, 404),
        (ErrorKind.RESOURCE_EXHAUSTED, 429),
    ):
        response = cohere_error(ServiceError(kind, "bad \ud800 thing " + "x" * 5000, "texts"))
        assert response.status_code == status
        body = orjson.loads(response.body)
        assert set(body) == {"message"} and body["message"].startswith("bad ") and len(body["message"]) < 2100
        assert ("retry-after" in response.headers) == (status == 429)
