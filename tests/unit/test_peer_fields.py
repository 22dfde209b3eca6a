"""The peers' embeddings fields -> EmbedParams and wire format (pure functions), and the float byte layouts
against their references (numpy's float16, torch's bfloat16, vLLM's byte-swap rule)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from service.api.http.peer_fields import params_from_request, split_model_suffix, wire_format
from service.api.http.schemas import EmbeddingsRequest
from service.errors import ServiceError
from service.pipeline.encoding import bfloat16_bits, float_bytes, pack
from service.pipeline.params import Encoding, Truncate


def request(**fields: Any) -> EmbeddingsRequest:
    return EmbeddingsRequest.model_validate({"model": "m", "input": ["a", "b"], **fields})


def refused(param: str, **fields: Any) -> str:
    with pytest.raises(ServiceError) as err:
        req = request(**fields)
        wire_format(req)
        params_from_request(req)
    assert err.value.param == param, err.value.message
    return err.value.message


def test_defaults_are_openai() -> None:
    params = params_from_request(request())
    assert params.normalize and params.truncate is Truncate.NONE and params.max_tokens == 0
    wire = wire_format(request())
    assert wire.encoding is Encoding.FLOAT and not wire.base64


@pytest.mark.parametrize(
    ("fields", "encoding", "as_base64", "dtype", "order"),
    [
        ({"encoding_format": "base64"}, Encoding.FLOAT, True, "float32", "<"),
        (
            {"encoding_format": "base64", "embed_dtype": "float16", "endianness": "big"},
            Encoding.FLOAT,
            True,
            "float16",
            ">",
        ),
        (
            {"encoding_format": "base64", "embed_dtype": "bfloat16", "endianness": "native"},
            Encoding.FLOAT,
            True,
            "bfloat16",
            "<",
        ),
        ({"embedding_type": "int8"}, Encoding.INT8, False, "float32", "<"),
        ({"embedding_type": "ubinary", "encoding_format": "base64"}, Encoding.UBINARY, True, "float32", "<"),
        ({"embedding_type": "base64"}, Encoding.FLOAT, True, "float32", "<"),  # Jina
    ],
)
def test_wire_formats(fields: dict[str, Any], encoding: Encoding, as_base64: bool, dtype: str, order: str) -> None:
    wire = wire_format(request(**fields))
    assert (wire.encoding, wire.base64, wire.float_dtype, wire.byteorder) == (encoding, as_base64, dtype, order)


def test_refusals_name_the_field() -> None:
    assert "fp8" in refused("embed_dtype", embed_dtype="fp8_e4m3", encoding_format="base64")
    refused("embed_dtype", embed_dtype="float16", embedding_type="int8")
    refused("embedding_type", embedding_type="base64", encoding_format="float")
    assert "EOS" in refused("add_special_tokens", add_special_tokens=False)
    refused("late_chunking", late_chunking=True)
    assert "'image'" in refused("modality", modality="image")
    refused("modality", modality=["text", "text", "text"])
    assert "'text-matching'" in refused("task", task="text-matching")
    refused("task", task="retrieval.query", input_type="passage")
    refused("normalized", normalize=True, normalized=False)
    refused("use_activation", normalize=True, use_activation=False)
    refused("truncate_prompt_tokens", truncate_prompt_tokens=0)
    refused("truncate_prompt_tokens", truncate_prompt_tokens=8, truncate="START")
    for bad in ({"truncate_prompt_tokens": -2}, {"truncate_prompt_tokens": "8"}):
        with pytest.raises(Exception, match="truncate_prompt_tokens"):
            request(**bad)


def test_peer_meanings() -> None:
    assert params_from_request(request(task="retrieval.query")).prompt_name == "query"
    assert params_from_request(request(task="retrieval.passage", input_type="passage")).prompt_name == ""
    assert params_from_request(request(), suffix_type="query").prompt_name == "query"
    assert not params_from_request(request(use_activation=False)).normalize
    assert not params_from_request(request(normalized=False, normalize=False)).normalize
    assert params_from_request(request(truncate=True)).truncate is Truncate.END  # Jina's bool
    assert params_from_request(request(truncate=False)).truncate is Truncate.NONE
    assert params_from_request(request(modality=["text", "text"], late_chunking=False, add_special_tokens=True))
    keep_first = params_from_request(request(truncate_prompt_tokens=10))
    assert (keep_first.truncate, keep_first.max_tokens) == (Truncate.END, 10)
    keep_last = params_from_request(request(truncate_prompt_tokens=10, truncation_side="left"))
    assert (keep_last.truncate, keep_last.max_tokens) == (Truncate.START, 10)
    model_max = params_from_request(request(truncate_prompt_tokens=-1))
    assert (model_max.truncate, model_max.max_tokens) == (Truncate.END, 0)


def test_model_suffix_only_for_a_served_base_without_an_exact_match() -> None:
    served = {"qwen", "other-query"}.__contains__
    assert split_model_suffix("qwen-query", served) == ("qwen", "query")
    assert split_model_suffix("qwen-passage", served) == ("qwen", "passage")
    assert split_model_suffix("other-query", served) == ("other-query", None)  # an exact name wins
    assert split_model_suffix("nope-query", served) == ("nope-query", None)
    assert split_model_suffix("qwen-document", served) == ("qwen-document", None)


def test_float_bytes_match_their_references() -> None:
    rng = np.random.default_rng(3)
    v = (rng.standard_normal((4, 64)) / 8).astype(np.float32)
    v[0, :6] = [0.0, -0.0, 1.0, -1.0, 1.0e4, 1.0e-40]
    for order in ("<", ">"):
        assert float_bytes(v, "float32", order) == [r.astype(order + "f4").tobytes() for r in v]
        assert float_bytes(v, "float16", order) == [r.astype(order + "f2").tobytes() for r in v]
    assert float_bytes(v, "float16", "<") == pack(v, Encoding.FLOAT16)  # the gRPC encoding
    reference = torch.from_numpy(v).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bfloat16_bits(v), reference)
    # Ties round to even, as torch does: 1 + 2^-8 is halfway between two bfloat16 values.
    tie = np.array([1 + 2**-8, 1 + 3 * 2**-8], dtype=np.float32)
    np.testing.assert_array_equal(
        bfloat16_bits(tie), torch.from_numpy(tie).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    )
    big = float_bytes(v, "bfloat16", ">")
    assert [np.frombuffer(b, dtype=">u2").tolist() for b in big] == reference.tolist()
