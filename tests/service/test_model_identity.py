"""Model identity end to end: the export records what it holds, the facade refuses (exit 2, one message) a served
name that contradicts it and shows it in GetInfo and /v1/models; the exporter never skips over or replaces an
export of another source; a repository holding only a reranker serves /v1/rerank with the reference's scores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from service.contract import ModelFacts, ModelKind, Precision
from service.errors import Misconfiguration
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.model_identity import check_served_name, claim_of, contradiction
from service.triton.runtime import free_port
from tests.helpers import ROOT
from tests.service.test_rerank_api import CASES, Reference
from tests.service.test_supervision import assert_one_clear_message, local_facade


def facts(source: str, hidden: int = 2560, kind: ModelKind = ModelKind.EMBEDDING, **kw: object) -> ModelFacts:
    return ModelFacts(
        source_model=source, hidden_size=hidden, max_input_tokens=512, embedding_rows=10, pad_id=0, eos_id=0,
        kind=kind, precision=Precision.FP16, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("served", "source", "hidden", "kind", "fragment"),
    [
        ("Qwen3-Embedding-8B", "Qwen/Qwen3-Embedding-4B", 2560, ModelKind.EMBEDDING, "names the 8B model"),
        ("Qwen3-Embedding-4B", "Qwen/Qwen3-Embedding-0.6B", 1024, ModelKind.EMBEDDING, "names the 4B model"),
        ("Qwen3-Embedding-8B", "/workspace/ckpt", 2560, ModelKind.EMBEDDING, "4096 wide"),
        ("Qwen/Qwen3-Reranker-4B", "Qwen/Qwen3-Embedding-4B", 2560, ModelKind.EMBEDDING, "names a reranker"),
    ],
)
def test_a_served_name_that_contradicts_the_export_is_refused(
    served: str, source: str, hidden: int, kind: ModelKind, fragment: str
) -> None:
    held = facts(source, hidden, kind, source_revision="abc123")
    assert fragment in contradiction(served, held)
    with pytest.raises(Misconfiguration, match="contradicts the model 'qwen3_embedding'"):
        check_served_name(served, held, "qwen3_embedding")


@pytest.mark.parametrize(
    ("served", "source", "hidden"),
    [
        ("", "Qwen/Qwen3-Embedding-4B", 2560),  # no name: the export's own
        ("embeddings-prod", "Qwen/Qwen3-Embedding-4B", 2560),  # an alias claims nothing
        ("Qwen3-Embedding-4B", "Qwen/Qwen3-Embedding-4B", 2560),
        ("qwen3-embedding-8b", "/workspace/my-finetune", 4096),  # width fits the 8B
    ],
)
def test_names_that_agree_or_claim_nothing_pass(served: str, source: str, hidden: int) -> None:
    assert contradiction(served, facts(source, hidden)) == ""
    check_served_name(served, facts(source, hidden))


def test_claims_read_kind_and_size() -> None:
    claim = claim_of("Qwen/Qwen3-Embedding-0.6B")
    assert claim is not None and (claim.kind, claim.size) == (ModelKind.EMBEDDING, "0.6b")
    assert claim_of("Qwen3-Embedding-80B-x") is not None and claim_of("my-model") is None


# --------------------------------------------------------------------------------- the export records it


def test_the_export_records_source_revision_and_refuses_another_source(
    model_repository: Path, dev_model_dir: Path, tmp_path: Path
) -> None:
    from export.repository import published_identity

    published = published_identity(model_repository / "qwen3_embedding")
    assert published is not None
    assert published.source_model == str(dev_model_dir)
    assert published.source_revision.startswith("sha256:") and len(published.source_revision) == 7 + 64
    assert published.kind is ModelKind.EMBEDDING and published.hidden_size > 0
    report = (model_repository / "qwen3_embedding" / "export_report.json").read_text()
    assert published.source_revision in report

    def export(model: str, precision: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable, "-m", "service.cli", "export", "--model", model, "--output", str(model_repository),
            "--name", "qwen3_embedding", "--precision", precision, "--skip-if-published",
        ]  # fmt: skip
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)

    before = (model_repository / "qwen3_embedding" / "config.pbtxt").read_text()
    same = export(str(dev_model_dir), str(published.precision))
    assert same.returncode == 0 and "nothing to export" in same.stdout, same.stderr
    other = export("Qwen/Qwen3-Embedding-8B", str(published.precision))
    assert other.returncode == 2 and "already holds another model" in other.stderr
    assert "source " in other.stderr and "new version" in other.stderr
    precision = export(str(dev_model_dir), "bf16" if published.precision != "bf16" else "fp32")
    assert precision.returncode == 2 and "precision" in precision.stderr
    assert (model_repository / "qwen3_embedding" / "config.pbtxt").read_text() == before  # nothing replaced


# ------------------------------------------------------------------------------------------ a real facade


def test_a_facade_told_another_name_than_the_export_exits_2_with_one_message(
    model_repository: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / "qwen3_embedding", repo / "qwen3_embedding")
    cmd = [
        sys.executable, "-m", "service.cli", "serve", "--model-repository", str(repo),
        "--grpc-port", str(free_port()), "--http-port", str(free_port()),
    ]  # fmt: skip
    env = {
        **os.environ,
        "QWEN3_EMBED_HOST": "127.0.0.1",
        "QWEN3_EMBED_WORKERS": "1",
        "QWEN3_EMBED_SERVED_MODEL_NAME": "Qwen3-Embedding-8B",
        "QWEN3_EMBED_TRITON_LOG": str(tmp_path / "triton.log"),
    }
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result.stderr
    assert_one_clear_message(result.stderr, "served model name 'Qwen3-Embedding-8B' (QWEN3_EMBED_SERVED_MODEL_NAME)")
    assert "contradicts the model 'qwen3_embedding'" in result.stderr and "4096 wide" in result.stderr
    assert not (tmp_path / "triton.log").exists()  # refused before Triton was started


def test_a_reranker_only_repository_serves_rerank_with_the_reference_scores(
    model_repository: Path, dev_reranker_dir: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repository / "qwen3_reranker", repo / "qwen3_reranker")
    # Named as the default model: without that, a repository lacking the default embedding model is refused
    # (a failed embedding export must not turn into a service without embeddings: test_supervision.py).
    with local_facade(repo, tmp_path, {"QWEN3_EMBED_MODEL_NAME": "qwen3_reranker"}) as facade:
        with grpc.insecure_channel(facade.target) as channel:
            info = pb_grpc.EmbeddingServiceStub(channel).GetInfo(pb.GetInfoRequest(), timeout=30)
        [described] = info.models
        assert described.kind == pb.MODEL_KIND_RERANKER and described.is_default
        assert described.source_model == str(dev_reranker_dir)
        assert described.source_revision.startswith("sha256:")
        assert info.model == "" and info.dimensions == 0  # no embedding model: the top-level fields stay empty
        reference = Reference(dev_reranker_dir, described.max_input_tokens)
        for instruction, query, documents in CASES:
            body = (
                {"query": query, "documents": documents, "instruction": instruction}
                if instruction
                else {"query": query, "documents": documents}
            )
            response = httpx.post(f"{facade.base_url}/v1/rerank", json=body, timeout=60)
            assert response.status_code == 200, response.text
            got = np.zeros(len(documents))
            for result in response.json()["results"]:
                got[result["index"]] = result["relevance_score"]
            np.testing.assert_allclose(got, reference.scores(instruction, query, documents), atol=1e-5)
        cards = httpx.get(f"{facade.base_url}/v1/models", timeout=10).json()["data"]
        assert [(c["kind"], c["source_model"]) for c in cards] == [("reranker", str(dev_reranker_dir))]
        assert cards[0]["source_revision"] == described.source_revision and cards[0]["precision"]
        body = {"input": "x", "model": described.name}
        embed = httpx.post(f"{facade.base_url}/v1/embeddings", json=body, timeout=30)
        assert embed.status_code == 400 and "is a reranker model" in embed.text


def test_the_revision_is_the_hub_commit_or_a_hash_of_the_weights(tmp_path: Path) -> None:
    import hashlib

    from export.checkpoint import Checkpoint

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--Qwen--Qwen3-Embedding-4B" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    assert Checkpoint("Qwen/Qwen3-Embedding-4B", snapshot, {}).revision() == commit

    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "model.safetensors").write_bytes(b"weights")
    (local / "config.json").write_text("{}")  # not a weight file: not hashed
    first = Checkpoint(str(local), local, {}).revision()
    inner = hashlib.sha256(b"weights").hexdigest()
    assert first == "sha256:" + hashlib.sha256(b"model.safetensors\0" + inner.encode() + b"\n").hexdigest()
    (local / "model.safetensors").write_bytes(b"other weights")
    assert Checkpoint(str(local), local, {}).revision() != first  # other weights, another revision
    # A hub-cache link to a blob named by its sha256: the name stands in for reading the file.
    blob = tmp_path / "blobs" / ("f" * 64)
    blob.parent.mkdir()
    blob.write_bytes(b"not what the name says")
    (local / "model.safetensors").unlink()
    (local / "model.safetensors").symlink_to(blob)
    expected = hashlib.sha256(b"model.safetensors\0" + b"f" * 64 + b"\n").hexdigest()
    assert Checkpoint(str(local), local, {}).revision() == "sha256:" + expected
