"""Unit tests of the pure pipeline steps: no servers."""

from __future__ import annotations

import numpy as np
import pytest

from service.contract import default_buckets, instruction_prefix, pad
from service.errors import ErrorKind, ServiceError
from service.pipeline.batching import bucket_for, plan_chunks
from service.pipeline.encoding import float32_base64, pack
from service.pipeline.inference import resolve_buckets
from service.pipeline.params import Encoding, Truncate
from service.pipeline.postprocess import check_dimensions, finalize
from service.pipeline.templating import apply_prefix, resolve_prefix
from service.pipeline.truncation import fit
from tests.oracles import unpack

PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}


def test_template_exact() -> None:
    assert instruction_prefix("Find code") == "Instruct: Find code\nQuery:"
    assert apply_prefix(resolve_prefix("Find code", "", PROMPTS), ["x"]) == ["Instruct: Find code\nQuery:x"]
    assert resolve_prefix("", "query", PROMPTS) == PROMPTS["query"]
    assert resolve_prefix("", "document", PROMPTS) == ""
    assert resolve_prefix("", "", PROMPTS) == ""


@pytest.mark.parametrize(
    ("instruction", "prompt_name", "needle"),
    [("a", "query", "not both"), ("", "nope", "document, query"), ("   ", "", "blank")],
)
def test_template_errors(instruction: str, prompt_name: str, needle: str) -> None:
    with pytest.raises(ServiceError) as err:
        resolve_prefix(instruction, prompt_name, PROMPTS)
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and needle in err.value.message


def test_truncation_policies_keep_eos_last() -> None:
    content = list(range(10))
    assert fit(content, 11, Truncate.NONE, 99) == ([*content, 99], False)
    assert fit(content, 6, Truncate.END, 99) == ([0, 1, 2, 3, 4, 99], True)
    assert fit(content, 6, Truncate.START, 99) == ([5, 6, 7, 8, 9, 99], True)
    # START keeps the instruction prefix
    assert fit(content, 6, Truncate.START, 99, keep_prefix=2) == ([0, 1, 7, 8, 9, 99], True)
    with pytest.raises(ServiceError) as err:
        fit(content, 6, Truncate.NONE, 99, index=3)
    assert "input 3 has 11 tokens" in err.value.message and "limit of 6" in err.value.message


def test_buckets_and_chunks() -> None:
    # Powers of two (the ladder before 3 per octave became the default: tests/unit/test_buckets.py).
    assert default_buckets(512, per_octave=1) == [16, 32, 64, 128, 256, 512]
    assert default_buckets(300, per_octave=1) == [16, 32, 64, 128, 256, 300]
    assert resolve_buckets([64, 8, 1000], 512) == [8, 64, 512]
    buckets = default_buckets(512, per_octave=1)
    assert bucket_for(1, buckets) == 16 and bucket_for(17, buckets) == 32 and bucket_for(512, buckets) == 512
    with pytest.raises(ValueError):
        bucket_for(513, buckets)
    lengths = [3, 500, 20, 16, 17, 200, 1]
    chunks = plan_chunks(lengths, buckets, token_budget=1024, max_rows=2)
    seen = sorted(i for c in chunks for i in c.indices)
    assert seen == list(range(len(lengths)))  # every input exactly once
    for c in chunks:
        assert all(lengths[i] <= c.width for i in c.indices)
        assert len(c.indices) <= 2
        assert c.padded_tokens <= 1024 or len(c.indices) == 1
    assert {c.width for c in chunks} == {16, 32, 256, 512}


def test_left_pad() -> None:
    ids, mask = pad([[1, 2], [3, 4, 5]], 4, pad_id=0, side="left")
    assert ids.tolist() == [[0, 0, 1, 2], [0, 3, 4, 5]]
    assert mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert ids.dtype == np.int64


def test_mrl_then_normalise() -> None:
    v = np.array([[3.0, 4.0, 12.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(finalize(v, 2, True), [[0.6, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(finalize(v, 4, False), v)
    assert check_dimensions(0, 32, 64) == 64 and check_dimensions(32, 32, 64) == 32
    for bad in (31, 65):
        with pytest.raises(ServiceError) as err:
            check_dimensions(bad, 32, 64)
        assert "between 32 and 64" in err.value.message


def test_encodings_roundtrip_and_match_sentence_transformers() -> None:
    from sentence_transformers.quantization import quantize_embeddings

    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 64)).astype(np.float32)
    halves = [unpack(b, Encoding.FLOAT16, 64) for b in pack(v, Encoding.FLOAT16)]
    np.testing.assert_allclose(np.stack(halves), v, rtol=1e-3, atol=1e-3)
    for enc, precision in ((Encoding.BINARY, "binary"), (Encoding.UBINARY, "ubinary")):
        packed = pack(v, enc)
        expected = quantize_embeddings(v, precision=precision)
        assert [np.frombuffer(b, dtype=expected.dtype).tolist() for b in packed] == expected.tolist()
        bits = np.stack([unpack(b, enc, 64) for b in packed])
        assert (bits == (v > 0)).all()
    decoded = np.frombuffer(__import__("base64").b64decode(float32_base64(v[0])), dtype="<f4")
    np.testing.assert_array_equal(decoded, v[0])


def test_instance_defaults() -> None:
    import os

    from export.triton_config import RepoSettings, resolved_instances, resolved_ort_threads

    cores = max(1, min(os.cpu_count() or 1, 8))
    cpu = RepoSettings(backend="python")
    assert resolved_instances(cpu) == cores
    assert resolved_ort_threads(cpu) == (1 if cores > 1 else 0)
    gpu = RepoSettings(backend="onnxruntime")
    assert resolved_instances(gpu) == 1 and resolved_ort_threads(gpu) == 0
    explicit = RepoSettings(backend="python", instances=3, ort_intra_op_threads=2)
    assert resolved_instances(explicit) == 3 and resolved_ort_threads(explicit) == 2
