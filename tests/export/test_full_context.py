"""Full context on the export that ships: default settings give the fused graph and the checkpoint's 32,768
tokens, and one 32,768-token input goes through the real facade and Triton with memory linear in tokens.

The reference is sentence-transformers with SDPA attention (eager attention would need GBs of scores at 32k) and
its max_seq_length raised to the model's limit (the checkpoint's sentence_bert_config says 8192)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from typer.testing import CliRunner

from export.triton_config import parse_pbtxt
from service.cli import app
from service.contract import ModelFacts
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.triton.runtime import TritonProcess, start_triton
from tests.export.test_triton_token_budget import sampling_peaks, tree_rss
from tests.helpers import cosine, run_facade

FULL = 32768
MODEL = "qwen3_embedding"
# Words that are one token each after a space: a text of n of them is exactly n content tokens.
WORDS = [" hello", " world", " the", " cat", " river", " blue", " number", " seven", " quick", " house", " and", " of"]


@pytest.fixture(scope="module")
def default_repository(dev_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`qwen3-embed export --model DIR --output OUT`: nothing else."""
    out = tmp_path_factory.mktemp("default-repo")
    result = CliRunner().invoke(app, ["export", "--model", str(dev_model_dir), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def default_triton(default_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    proc = start_triton(default_repository, tmp_path_factory.mktemp("full-logs") / "triton.log")
    yield proc
    proc.stop()


def test_default_export_is_fused_full_context(default_repository: Path) -> None:
    model_dir = default_repository / MODEL
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    facts = ModelFacts.from_parameters({k: v.string_value for k, v in cfg.parameters.items()})
    assert facts.max_input_tokens == FULL and facts.padding_side == "right"
    assert facts.activation_bytes_per_score == 0  # linear in tokens
    # Warm-up: every default bucket up to 8192 (the longest shapes would only slow every start).
    assert [w.inputs["input_ids"].dims[0] for w in cfg.model_warmup] == [16 << i for i in range(10)]
    import json

    report = json.loads((model_dir / "export_report.json").read_text())
    assert report["attention"] == "fused"
    assert max(s["tokens"] for s in report["samples"]) >= 16384  # the long verification sample


def long_text(tokens: int) -> str:
    rng = random.Random(7)
    return "".join(rng.choice(WORDS) for _ in range(tokens - 1))  # + the appended <|endoftext|>


def test_32k_input_through_the_facade_matches_sentence_transformers(
    default_repository: Path, default_triton: TritonProcess, dev_model_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    text = long_text(FULL)
    with (
        run_facade(
            default_repository, default_triton.grpc_url, tmp_path, env={"QWEN3_EMBED_DEFAULT_TIMEOUT_S": "300"}
        ) as facade,
        grpc.insecure_channel(facade.target) as channel,
    ):
        stub = pb_grpc.EmbeddingServiceStub(channel)
        stub.Embed(pb.EmbedRequest(inputs=["warm the path"]), timeout=60)
        root = psutil.Process(default_triton.process.pid)
        baseline = sum(tree_rss(root).values())
        with sampling_peaks(root, every_s=0.01) as peak:
            response = stub.Embed(pb.EmbedRequest(inputs=[text]), timeout=300)  # TRUNCATE_NONE: the default
    growth = peak.total - baseline
    assert response.usage.prompt_tokens == FULL
    assert growth < 1024**3, f"Triton grew {growth / 2**20:.0f} MiB for one {FULL}-token input"

    reference = SentenceTransformer(str(dev_model_dir), device="cpu", model_kwargs={"attn_implementation": "sdpa"})
    reference.max_seq_length = FULL
    assert len(reference.tokenize([text])["input_ids"][0]) == FULL
    expected = reference.encode([text])[0]
    similarity = cosine(list(response.embeddings[0].values), expected)
    print(f"32k: cosine {similarity:.7f}, Triton growth {growth / 2**20:.0f} MiB")
    assert similarity >= 0.99999
