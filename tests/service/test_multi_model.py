"""Several models behind one facade and one Triton: two embedding models of different shapes (as 0.6B and 4B
would be) and the session's reranker, in one repository. Requests pick a model by name; each gets its own
model's vectors (parity with its own sentence-transformers reference), also when they interleave."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from export.dev_model import DevModelShape, build_dev_model
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import TritonProcess, start_triton
from tests.conftest import export_dev
from tests.helpers import Facade, cosine, embed, run_facade, vectors

ALT = "qwen3_embedding_alt"
TEXTS = ["What is the capital of China?", "def add(a, b):\n    return a + b", "最好的编程语言是什么？"]


@pytest.fixture(scope="module")
def alt_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = DevModelShape(hidden_size=96, heads=4, kv_heads=2, head_dim=32, intermediate_size=160, seed=1)
    return build_dev_model(tmp_path_factory.mktemp("alt-model") / "Qwen3-Embedding-Alt", shape)


@pytest.fixture(scope="module")
def repository(model_repository: Path, alt_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session repository (embedding model + reranker) plus a second embedding model."""
    repo = tmp_path_factory.mktemp("multi") / "model_repository"
    shutil.copytree(model_repository, repo)
    export_dev(alt_model_dir, repo, name=ALT, warmup_lengths=())
    return repo


@pytest.fixture(scope="module")
def triton3(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    proc = start_triton(repository, tmp_path_factory.mktemp("logs") / "triton.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def multi(repository: Path, triton3: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facade]:
    with run_facade(repository, triton3.grpc_url, tmp_path_factory.mktemp("facade-logs")) as running:
        yield running


@pytest.fixture(scope="module")
def stub(multi: Facade) -> Iterator[object]:
    with grpc.insecure_channel(multi.target) as channel:
        yield multi.stub(channel)


@pytest.fixture(scope="module")
def alt_reference(alt_model_dir: Path) -> SentenceTransformer:
    return SentenceTransformer(str(alt_model_dir), device="cpu")


def test_get_info_lists_every_model_with_its_kind(stub) -> None:  # type: ignore[no-untyped-def]
    info = stub.GetInfo(pb.GetInfoRequest(), timeout=30)
    by_name = {m.name: m for m in info.models}
    assert len(info.models) == 3, by_name
    kinds = sorted(pb.ModelKind.Name(m.kind) for m in info.models)
    assert kinds == ["MODEL_KIND_EMBEDDING", "MODEL_KIND_EMBEDDING", "MODEL_KIND_RERANKER"]
    # The top level still describes the default embedding model (clients written for one model keep working).
    default = next(m for m in info.models if m.is_default and m.kind == pb.MODEL_KIND_EMBEDDING)
    assert info.model == default.name and info.dimensions == default.dimensions == 64
    alt = by_name["Qwen3-Embedding-Alt"]
    assert alt.dimensions == 96 and not alt.is_default and alt.max_input_tokens == info.max_input_tokens
    reranker = next(m for m in info.models if m.kind == pb.MODEL_KIND_RERANKER)
    assert reranker.is_default and reranker.dimensions == 0 and not reranker.prompt_names


def test_each_model_returns_its_own_vectors(stub, reference: SentenceTransformer, alt_reference) -> None:  # type: ignore[no-untyped-def]
    default = vectors(embed(stub, TEXTS, prompt_name="query"))
    alt_response = embed(stub, TEXTS, prompt_name="query", model="Qwen3-Embedding-Alt")
    alt = vectors(alt_response)
    assert default.shape == (3, 64) and alt.shape == (3, 96) and alt_response.model == "Qwen3-Embedding-Alt"
    for ours, ref in (
        (default, reference.encode(TEXTS, prompt_name="query")),
        (alt, alt_reference.encode(TEXTS, prompt_name="query")),
    ):
        for a, b in zip(ours, ref, strict=True):
            assert cosine(a, b) >= 0.99999
    # The Triton name works as well as the served name.
    same = vectors(embed(stub, TEXTS, prompt_name="query", model=ALT))
    np.testing.assert_allclose(same, alt, atol=1e-6)


def test_interleaved_requests_to_both_models_never_mix(stub, reference, alt_reference) -> None:  # type: ignore[no-untyped-def]
    expected = {
        "": reference.encode(TEXTS),
        "Qwen3-Embedding-Alt": alt_reference.encode(TEXTS),
    }

    def one(i: int) -> tuple[str, int, np.ndarray]:
        model = "" if i % 2 else "Qwen3-Embedding-Alt"
        k = i % len(TEXTS)
        return model, k, vectors(embed(stub, [TEXTS[k]], model=model))[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(48)))
    for model, k, vector in results:
        assert cosine(vector, expected[model][k]) >= 0.99999, (model, k)


def test_http_routes_by_model_and_refuses_others(multi: Facade, alt_reference) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{multi.http_port}"
    with httpx.Client(base_url=url, timeout=60) as client:
        listed = client.get("/v1/models").json()["data"]
        assert sorted(m["kind"] for m in listed) == ["embedding", "embedding", "reranker"]
        alt = client.post("/v1/embeddings", json={"model": "Qwen3-Embedding-Alt", "input": TEXTS})
        assert alt.status_code == 200 and alt.json()["model"] == "Qwen3-Embedding-Alt"
        got = np.array([d["embedding"] for d in alt.json()["data"]], dtype=np.float32)
        for a, b in zip(got, alt_reference.encode(TEXTS), strict=True):
            assert cosine(a, b) >= 0.99999
        unknown = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
        assert unknown.status_code == 404 and "Qwen3-Embedding-Alt" in unknown.json()["error"]["message"]
        reranker = next(m["id"] for m in listed if m["kind"] == "reranker")
        wrong_kind = client.post("/v1/embeddings", json={"model": reranker, "input": "x"})
        assert wrong_kind.status_code == 400 and "reranker" in wrong_kind.json()["error"]["message"]
        assert client.get(f"/v1/models/{reranker}").json()["kind"] == "reranker"


def test_tokenize_uses_the_named_model(stub) -> None:  # type: ignore[no-untyped-def]
    response = stub.Tokenize(pb.TokenizeRequest(inputs=["hello world"], model="Qwen3-Embedding-Alt"), timeout=30)
    assert response.inputs[0].count >= 3
    with pytest.raises(grpc.RpcError) as err:
        stub.Tokenize(pb.TokenizeRequest(inputs=["x"], model="nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
