"""Session fixtures: the offline dev model and dev reranker, their verified exports in one repository, a real
Triton serving both, the reference model.

The session export is the graph that ships by default: fused attention (GroupQueryAttention), right padding."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from export.dev_model import build_dev_model, build_dev_reranker
from export.exporter import ExportOptions, run_export
from export.triton_config import RepoSettings
from service.contract import default_buckets
from service.triton.runtime import TritonProcess, start_triton

# Small limits keep the suite fast on 2 cores while still spanning several buckets.
TEST_MAX_TOKENS = 512
TEST_MAX_BATCH = 16


@pytest.fixture(scope="session")
def dev_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dev_model(tmp_path_factory.mktemp("dev-model"))


def export_dev(model_dir: Path, output: Path, attention: str = "auto", **repo: object) -> Path:
    from rich.console import Console

    values: dict[str, object] = {
        "max_input_tokens": TEST_MAX_TOKENS,
        "max_batch_size": TEST_MAX_BATCH,
        "warmup_lengths": tuple(default_buckets(TEST_MAX_TOKENS)),
        "ort_intra_op_threads": 1,
        **repo,
    }
    settings = RepoSettings(**values)  # type: ignore[arg-type]
    opts = ExportOptions(
        model=str(model_dir), output=output, repo=settings, verify_long_tokens=TEST_MAX_TOKENS, attention=attention
    )
    run_export(opts, Console(quiet=True))
    return output


@pytest.fixture(scope="session")
def dev_reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline dev reranker (Qwen3ForCausalLM, yes/no head rows spread, untied LM head)."""
    return build_dev_reranker(tmp_path_factory.mktemp("dev-reranker"))


def export_dev_reranker(model_dir: Path, output: Path, attention: str = "auto", **repo: object) -> Path:
    """export_dev for the dev reranker: the same small limits; the model is named qwen3_reranker unless `name`
    is given."""
    return export_dev(model_dir, output, attention, **{"name": "", **repo})


@pytest.fixture(scope="session")
def model_repository(dev_model_dir: Path, dev_reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One repository, two kinds: the dev embedding model (qwen3_embedding, the default) and the dev reranker
    (qwen3_reranker), served by the session's one Triton and facade."""
    repo = export_dev(dev_model_dir, tmp_path_factory.mktemp("repo") / "model_repository")
    return export_dev_reranker(dev_reranker_dir, repo)


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    proc = start_triton(model_repository, tmp_path_factory.mktemp("logs") / "triton.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def reference(dev_model_dir: Path) -> object:
    """sentence-transformers with the checkpoint's own configuration: the reference implementation."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(dev_model_dir), device="cpu")


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("facade-logs")


@pytest.fixture(scope="session")
def facade(model_repository: Path, triton: TritonProcess, logs_dir: Path) -> Iterator[object]:
    """The real facade process (gRPC + HTTP) against the session's Triton."""
    from tests.helpers import run_facade

    # Token-id input is off by default (LangChain's default would get wrong vectors); its own tests need it on.
    env = {"QWEN3_EMBED_ALLOW_TOKEN_IDS": "true"}
    with run_facade(model_repository, triton.grpc_url, logs_dir, env=env) as running:
        yield running
