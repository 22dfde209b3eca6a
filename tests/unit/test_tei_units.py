"""The pure pieces of the TEI and tokenizer routes: token listing (ids, byte offsets, the EOS), decoding, TEI's
request -> pipeline parameters, how /tokenize tells TEI's body from vLLM's, and TEI's error statuses."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from export.qwen_tokenizer_offline import build_tokenizer
from service.api.http.tei import params_from_tei, truncate_policy
from service.api.http.tei_schemas import TeiEmbedRequest
from service.api.http.tei_wire import TeiError, from_service_error, parse_tei
from service.api.http.tokenize import shape_of
from service.errors import ErrorKind, ServiceError, invalid
from service.pipeline.params import Truncate
from service.pipeline.token_view import byte_offsets, check_ids, decode, token_strings, tokens_of
from service.pipeline.tokenization import TextTokenizer

EOS = 151643
TEXTS = ["What is Deep Learning?", "北京是首都。", "emoji 🤖 café", "a<|endoftext|>b"]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(build_tokenizer(append_eos=False))


@pytest.fixture(scope="module")
def with_eos():  # type: ignore[no-untyped-def]
    return build_tokenizer()  # the embedding checkpoint's tokenizer: its post-processor appends the EOS


@pytest.mark.parametrize("text", TEXTS)
def test_tokens_are_the_checkpoints_with_byte_offsets(tok: TextTokenizer, with_eos, text: str) -> None:  # type: ignore[no-untyped-def]
    tokens = tokens_of(tok, text, EOS)
    assert [t.id for t in tokens] == with_eos.encode(text).ids
    *content, last = tokens
    assert (last.id, last.text, last.special, last.start, last.stop) == (EOS, "<|endoftext|>", True, None, None)
    raw = text.encode()
    # A character split over several byte-level tokens gives each of them the character's whole range (as
    # TEI's byte offsets do): the ranges are whole characters, in order, and leave no gap.
    ranges = [(t.start, t.stop) for t in content]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(raw)
    assert all(a2 <= b1 and a1 <= a2 for (a1, b1), (a2, _) in pairwise(ranges))  # type: ignore[operator]
    for t in content:
        assert raw[t.start : t.stop].decode() == t.text  # whole characters: strict UTF-8 decodes them
    assert all(t.start is not None and t.stop is not None and not t.special for t in content)
    assert [t.id for t in tokens_of(tok, text, None)] == [t.id for t in content]


def test_byte_offsets() -> None:
    assert byte_offsets("aé北🤖") == [0, 1, 3, 6, 10]


def test_decode_and_token_strings(tok: TextTokenizer) -> None:
    ids = tok.tokenizer.encode("Hello world", add_special_tokens=False).ids
    assert decode(tok, [*ids, EOS], skip_special_tokens=True) == "Hello world"
    assert decode(tok, [*ids, EOS], skip_special_tokens=False) == "Hello world<|endoftext|>"
    assert token_strings(tok, ids) == ["Hello", "Ġworld"]
    check_ids([0, 151668], 151669, "ids")
    with pytest.raises(ServiceError) as err:
        check_ids([1, 151669], 151669, "ids")
    assert err.value.param == "ids" and "151669" in err.value.message


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_params_from_tei() -> None:
    one = params_from_tei(parse_tei(TeiEmbedRequest, body(inputs="a")))
    assert one.texts == ("a",) and one.truncate is Truncate.NONE and one.normalize and one.dimensions == 0
    many = params_from_tei(
        parse_tei(TeiEmbedRequest, body(inputs=["a", "b"], prompt_name="query", dimensions=32, normalize=False))
    )
    assert many.texts == ("a", "b") and many.prompt_name == "query" and many.dimensions == 32 and not many.normalize
    assert params_from_tei(parse_tei(TeiEmbedRequest, body(inputs=[1, 2]))).token_ids == ((1, 2),)
    assert params_from_tei(parse_tei(TeiEmbedRequest, body(inputs=[[1], [2, 3]]))).token_ids == ((1,), (2, 3))
    for bad, status in ((body(inputs=[]), 400), (body(inputs=["a", [1]]), 422)):
        with pytest.raises(TeiError) as err:
            params_from_tei(parse_tei(TeiEmbedRequest, bad))
        assert err.value.status == status and "inputs" in err.value.message
    for bad in (body(inputs="a", pooling="cls"), body(inputs="a", truncate="yes"), b"{", body(inputs=True)):
        with pytest.raises(TeiError) as err:
            parse_tei(TeiEmbedRequest, bad)
        assert err.value.status == 422


def test_truncate_policy() -> None:
    assert truncate_policy(None, "Right") is truncate_policy(False, "Left") is Truncate.NONE
    assert truncate_policy(True, "Right") is truncate_policy(True, "right") is Truncate.END
    assert truncate_policy(True, "Left") is truncate_policy(True, "left") is Truncate.START


def test_shape_of() -> None:
    assert shape_of(body(inputs="a")) == "tei" and shape_of(body(prompt="a", model="m")) == "vllm"
    for bad in (body(inputs="a", prompt="a"), body(text="a"), b"[1]", b"{"):
        with pytest.raises(ServiceError) as err:
            shape_of(bad)
        assert err.value.param == "inputs"


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        (ErrorKind.INVALID_ARGUMENT, 413, "validation"),
        (ErrorKind.RESOURCE_EXHAUSTED, 429, "overloaded"),
        (ErrorKind.UNAVAILABLE, 503, "unhealthy"),
        (ErrorKind.INTERNAL, 424, "backend"),
        (ErrorKind.NOT_FOUND, 424, "backend"),
    ],
)
def test_tei_statuses(kind: ErrorKind, status: int, error_type: str) -> None:
    response = from_service_error(ServiceError(kind, "input 3 is too long", "input"))
    assert response.status_code == status
    assert json.loads(response.body) == {"error": "inputs: input 3 is too long", "error_type": error_type}
    assert (response.headers.get("retry-after") == "1") is (status == 429)
    named = from_service_error(invalid("prompt_name: unknown", "prompt_name"))
    assert json.loads(named.body)["error"] == "prompt_name: unknown"
