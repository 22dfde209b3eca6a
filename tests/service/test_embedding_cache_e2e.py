"""The embedding cache through a real facade, real Triton and ONNX Runtime: repeated and partly cached
requests over gRPC, EmbedStream and HTTP equal the sentence-transformers reference and each other, the cache's
metrics count them, and a model swapped behind a running facade (same Triton name, same served name, same
width, other weights) never gets the old model's vectors served."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from export.dev_model import DevModelShape, build_dev_model
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import TritonProcess, free_port, start_triton
from tests.conftest import export_dev
from tests.helpers import Facade, cosine, embed, run_facade, vectors

CACHE_BYTES = 4 * 1024 * 1024
CACHE_ON = {"QWEN3_EMBED_EMBEDDING_CACHE_BYTES": str(CACHE_BYTES)}
TEXTS = ["What is the capital of China?", "Explain gravity", "最好的编程语言是什么？", "def f(x):\n    return x"]


def metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def counts(base_url: str) -> tuple[float, float]:
    return metric(base_url, "qwen3_embed_cache_hits_total"), metric(base_url, "qwen3_embed_cache_misses_total")


def assert_reference(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    for a, b in zip(got, want, strict=True):
        assert cosine(a, b) >= 0.99999


@pytest.fixture(scope="module")
def cached(model_repository: Path, triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facade]:
    with run_facade(model_repository, triton.grpc_url, tmp_path_factory.mktemp("cache-logs"), env=CACHE_ON) as running:
        yield running


@pytest.fixture(scope="module")
def stub(cached: Facade) -> Iterator[object]:
    with grpc.insecure_channel(cached.target) as channel:
        yield cached.stub(channel)


def test_a_repeated_request_is_answered_from_the_cache_with_the_same_vectors(  # type: ignore[no-untyped-def]
    cached: Facade, stub, reference: SentenceTransformer
) -> None:
    texts = [f"repeat {t}" for t in TEXTS]
    hits, misses = counts(cached.base_url)
    first = embed(stub, texts, prompt_name="query")
    second = embed(stub, texts, prompt_name="query")
    assert counts(cached.base_url) == (hits + len(texts), misses + len(texts))
    np.testing.assert_array_equal(vectors(first), vectors(second))  # bit for bit: the stored vector
    assert_reference(vectors(second), reference.encode(texts, prompt_name="query"))
    assert second.usage.prompt_tokens == first.usage.prompt_tokens > 0
    assert metric(cached.base_url, "qwen3_embed_cache_bytes") > 0
    assert metric(cached.base_url, "qwen3_embed_cache_limit_bytes") == CACHE_BYTES
    # Another template is another key: computed, and the document vectors are the reference's, not the query's.
    documents = embed(stub, texts)
    assert counts(cached.base_url)[1] == misses + 2 * len(texts)
    assert_reference(vectors(documents), reference.encode(texts))


def test_a_partly_cached_batch_equals_the_reference(  # type: ignore[no-untyped-def]
    cached: Facade, stub, reference: SentenceTransformer
) -> None:
    warm = [f"partly {t}" for t in TEXTS[:2]]
    embed(stub, warm)
    mixed = [f"partly {TEXTS[2]}", warm[1], f"partly {TEXTS[3]}", warm[0], f"partly {TEXTS[2]}"]
    hits, misses = counts(cached.base_url)
    got = embed(stub, mixed, dimensions=32)
    assert counts(cached.base_url) == (hits + 2, misses + 3)
    want = reference.encode(mixed, normalize_embeddings=False)[:, :32]
    assert_reference(vectors(got), want / np.linalg.norm(want, axis=1, keepdims=True))
    plain = embed(stub, mixed, dimensions=32)  # all hits now
    np.testing.assert_array_equal(vectors(plain), vectors(got))
    assert plain.usage.prompt_tokens == got.usage.prompt_tokens
    tokens = stub.Tokenize(pb.TokenizeRequest(inputs=mixed), timeout=30)
    assert got.usage.prompt_tokens == tokens.usage.prompt_tokens > 0


def test_http_and_streams_share_the_cache(  # type: ignore[no-untyped-def]
    cached: Facade, stub, reference: SentenceTransformer
) -> None:
    texts = [f"shared {t}" for t in TEXTS]
    from_grpc = vectors(embed(stub, texts))
    model = stub.GetInfo(pb.GetInfoRequest(), timeout=10).model
    hits, misses = counts(cached.base_url)
    body = {"model": model, "input": texts, "encoding_format": "float"}
    answer = httpx.post(f"{cached.base_url}/v1/embeddings", json=body, timeout=30).json()
    from_http = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
    streamed = list(stub.EmbedStream(iter([pb.EmbedRequest(inputs=[t], request_id=t) for t in texts]), timeout=60))
    from_stream = np.stack([vectors(next(r for r in streamed if r.request_id == t))[0] for t in texts])
    assert counts(cached.base_url) == (hits + 2 * len(texts), misses)
    np.testing.assert_array_equal(from_http, from_grpc)
    np.testing.assert_array_equal(from_stream, from_grpc)
    assert_reference(from_http, reference.encode(texts))


# ------------------------------------------------------------------------------- a model swapped under it


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another checkpoint of the session model's shape: other weights."""
    return build_dev_model(tmp_path_factory.mktemp("other") / "Qwen3-Embedding-Other", DevModelShape(seed=7))


@pytest.fixture(scope="module")
def other_repository(other_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """That checkpoint exported under the session model's Triton name."""
    return export_dev(other_model, tmp_path_factory.mktemp("other-repo") / "model_repository")


def source_revision(stub) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(stub.GetInfo(pb.GetInfoRequest(), timeout=5).source_revision)
    except grpc.RpcError:
        return ""


def test_a_model_swapped_behind_a_running_facade_never_gets_old_vectors(
    model_repository: Path,
    other_model: Path,
    other_repository: Path,
    reference: SentenceTransformer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    first_repo = tmp_path_factory.mktemp("first") / "model_repository"
    shutil.copytree(model_repository / "qwen3_embedding", first_repo / "qwen3_embedding")
    other = SentenceTransformer(str(other_model), device="cpu")
    port, logs = free_port(), tmp_path_factory.mktemp("swap-logs")
    # One served name for both, as a deployment that redeploys under a stable name has.
    env = {**CACHE_ON, "QWEN3_EMBED_SERVED_MODEL_NAME": "embed-prod", "QWEN3_EMBED_HEALTH_POLL_S": "0.2"}
    triton = start_triton(first_repo, logs / "triton-1.log", grpc_port=port)
    try:
        with (
            run_facade(first_repo, f"127.0.0.1:{port}", logs, env=env) as facade,
            grpc.insecure_channel(facade.target) as channel,
        ):
            stub = facade.stub(channel)
            before = source_revision(stub)
            old = [vectors(embed(stub, TEXTS)) for _ in range(2)]
            assert counts(facade.base_url) == (len(TEXTS), len(TEXTS))
            assert_reference(old[1], reference.encode(TEXTS))
            triton.stop()
            triton = start_triton(other_repository, logs / "triton-2.log", grpc_port=port)
            deadline = time.monotonic() + 60
            while source_revision(stub) in ("", before) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert source_revision(stub) not in ("", before), "the facade did not pick up the new export"
            hits, misses = counts(facade.base_url)
            new = vectors(embed(stub, TEXTS))
            assert counts(facade.base_url) == (hits, misses + len(TEXTS))  # no old entry answered
            assert_reference(new, other.encode(TEXTS))
            assert all(cosine(a, b) < 0.999 for a, b in zip(new, old[1], strict=True))  # really other vectors
            np.testing.assert_array_equal(vectors(embed(stub, TEXTS)), new)  # and the new ones are cached
    finally:
        triton.stop()


def test_the_benchmark_runs(model_repository: Path, triton: TritonProcess, tmp_path: Path) -> None:
    """benchmarks/embedding_cache.py in seconds: its own checks (equal vectors, the bound under a flood that
    evicts) pass; no timing is asserted."""
    from benchmarks.embedding_cache import OFF, ON, measure

    result = measure(
        model_repository, triton.grpc_url, tmp_path, duration=1.0, concurrency=2, cache_bytes=1 << 20,
        queries=40, zipf_s=1.1, flood_texts=3200,
    )  # fmt: skip
    assert [len(result["runs"][label]) for label in (OFF, ON)] == [2, 2]
    assert result["runs"][ON][1]["hit_ratio"] > 0.9 and result["runs"][OFF][0]["hit_ratio"] == 0.0
    assert result["equality"]["queries"] == 40 and result["equality"]["min_cosine"] >= 0.99999
    assert result["memory"][ON]["evictions"] > 0 and result["memory"][ON]["cache_bytes_mib"] <= 1.0
