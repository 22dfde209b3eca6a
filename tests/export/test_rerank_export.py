"""Reranker export: the dev Qwen3-Reranker-like checkpoint -> a verified `logits` [batch, 2] (no, yes) graph.

The reference is computed here, independently of export/verify.py: transformers' Qwen3ForCausalLM with its full LM
head, each formatted pair run alone and unpadded, score = sigmoid(logit_yes - logit_no), the pairs built as the
official usage builds them (prefix ids + body ids without special tokens + suffix ids)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import json_format
from tokenizers import Tokenizer

from export.checkpoint import Checkpoint, resolve
from export.errors import ExportError
from export.triton_config import parse_pbtxt
from service.contract import (
    ATTENTION_MASK,
    INPUT_IDS,
    RERANK_LABELS,
    RERANK_LOGITS,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    ModelFacts,
    ModelKind,
    Param,
    pad,
    rerank_body,
)
from tests.conftest import TEST_MAX_TOKENS, export_dev_reranker

NAME = "qwen3_reranker"
TEMPLATE = Path(__file__).resolve().parents[2] / "export" / "templates" / "model.py"
PAIRS = [
    ("What is the capital of China?", "The capital of China is Beijing."),
    ("What is the capital of China?", "Photosynthesis turns light into chemical energy."),
    ("如何学习编程？", "多写代码，多读代码，坚持练习。"),
    ("reverse a list in python", "xs[::-1] returns a reversed copy; xs.reverse() reverses in place."),
    ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600."),
    ("best hiking boots", "Gravity is a force that attracts two bodies towards each other. " * 30),
]


def formatted(tok: Tokenizer, query: str, document: str, max_tokens: int = TEST_MAX_TOKENS) -> list[int]:
    prefix = tok.encode(RERANK_PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(RERANK_SUFFIX, add_special_tokens=False).ids
    body = tok.encode(rerank_body("", query, document), add_special_tokens=False).ids
    return prefix + body[: max_tokens - len(prefix) - len(suffix)] + suffix


def scores(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(x[..., 0] - x[..., 1]))


@pytest.fixture(scope="module")
def tokenizer(dev_reranker_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(dev_reranker_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def label_ids(tokenizer: Tokenizer) -> list[int]:
    ids = [tokenizer.token_to_id(label) for label in RERANK_LABELS]
    assert all(isinstance(i, int) for i in ids)
    return ids


@pytest.fixture(scope="module")
def sequences(tokenizer: Tokenizer) -> list[list[int]]:
    return [formatted(tokenizer, q, d) for q, d in PAIRS]


@pytest.fixture(scope="module")
def reference(dev_reranker_dir: Path, sequences: list[list[int]], label_ids: list[int]) -> np.ndarray:
    """[len(PAIRS), 2] logits (no, yes) from the causal LM's full head at the last position, each pair alone."""
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(str(dev_reranker_dir), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for seq in sequences:
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
            out.append(logits[label_ids].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def reranker_repository(dev_reranker_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_dev_reranker(dev_reranker_dir, tmp_path_factory.mktemp("rerank-repo"), warmup_lengths=(16,))


def onnx_logits(model_dir: Path, sequences: list[list[int]], side: str) -> np.ndarray:
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = pad(sequences, max(len(s) for s in sequences), 151643, side)
    return np.asarray(session.run([RERANK_LOGITS], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])


def config_params(model_dir: Path) -> tuple[Any, dict[str, str]]:
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    return cfg, {k: v.string_value for k, v in cfg.parameters.items()}


def test_dev_reranker_checkpoint(dev_reranker_dir: Path, reference: np.ndarray) -> None:
    config = json.loads((dev_reranker_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["tie_word_embeddings"] is False
    assert not (dev_reranker_dir / "modules.json").exists()
    # Scores spread over (0, 1): a swapped or wrong head row would change them and their order.
    s = scores(reference)
    assert s.max() - s.min() > 0.5 and len(set(np.argsort(s).tolist())) == len(PAIRS)


def test_checkpoint_kind_and_label_ids(dev_reranker_dir: Path, label_ids: list[int], tmp_path: Path) -> None:
    ckpt = resolve(str(dev_reranker_dir))
    assert ckpt.kind is ModelKind.RERANKER and ckpt.rerank_token_ids() == tuple(label_ids)
    assert ckpt.prompts() == {}
    # The graph keeps 2 head rows; the export loads the untied vocab x hidden head as well.
    assert ckpt.parameter_count() == ckpt.backbone_parameter_count() + 2 * 64
    assert ckpt.loaded_parameter_count() == ckpt.backbone_parameter_count() + 151669 * 64
    # The reranker tokenizer appends nothing: pad and eos come from its files.
    assert (ckpt.special_ids().pad_id, ckpt.special_ids().eos_id) == (151643, 151645)
    # Qwen3-Embedding checkpoints may name Qwen3ForCausalLM too: sentence-transformers' modules.json decides.
    (tmp_path / "modules.json").write_text("[]")
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}
    assert Checkpoint("x", tmp_path, config).kind is ModelKind.EMBEDDING
    assert Checkpoint("x", tmp_path, {**config, "architectures": ["Qwen3Model"]}).kind is ModelKind.EMBEDDING


def test_repository_entry_is_a_reranker(reranker_repository: Path, label_ids: list[int]) -> None:
    import onnx

    model_dir = reranker_repository / NAME
    for rel in ("config.pbtxt", "1/model.onnx", "1/model.py", "tokenizer/tokenizer.json", "export_report.json"):
        assert (model_dir / rel).exists(), rel
    cfg, params = config_params(model_dir)
    assert cfg.name == NAME and [o.name for o in cfg.output] == [RERANK_LOGITS] and list(cfg.output[0].dims) == [2]
    assert params[Param.KIND] == "reranker" and params[Param.PADDING_SIDE] == "right"
    assert params[Param.RERANK_TOKEN_IDS] == ",".join(map(str, label_ids))
    facts = ModelFacts.from_parameters(params, cfg.name)
    assert facts.kind is ModelKind.RERANKER and facts.prompts == {} and facts.max_input_tokens == TEST_MAX_TOKENS
    assert facts.kind.output == RERANK_LOGITS
    report = json.loads((model_dir / "export_report.json").read_text())
    assert report["kind"] == "reranker" and report["worst_score_diff"] <= 1e-5 and report["ranking_kept"]
    graph = onnx.load(str(model_dir / "1" / "model.onnx")).graph
    assert [o.name for o in graph.output] == [RERANK_LOGITS]
    # Only the two head rows: no vocab x hidden LM head besides the embedding table.
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    assert shapes["rerank_head.weight"] == [64, 2]
    assert sum(1 for dims in shapes.values() if 151669 in dims) == 1


def test_onnx_scores_match_the_causal_lm(
    reranker_repository: Path, sequences: list[list[int]], reference: np.ndarray
) -> None:
    model_dir = reranker_repository / NAME
    _, params = config_params(model_dir)
    side = params[Param.PADDING_SIDE]
    batched = onnx_logits(model_dir, sequences, side)
    alone = np.concatenate([onnx_logits(model_dir, [s], side) for s in sequences])
    for ours in (batched, alone):
        assert np.abs(scores(ours) - scores(reference)).max() <= 1e-5
        assert np.abs(ours - reference).max() <= 1e-4
        assert np.argsort(scores(ours)).tolist() == np.argsort(scores(reference)).tolist()


def test_python_backend_template_serves_the_logits(
    reranker_repository: Path, sequences: list[list[int]], reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model.py (one template for both kinds) names its output after the config: logits here."""
    from tests.export.test_triton_token_budget import fake_pb_utils

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location("rerank_model_under_test", TEMPLATE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_dir = reranker_repository / NAME
    cfg, _ = config_params(model_dir)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
            "model_repository": str(model_dir),
            "model_version": "1",
            "model_instance_kind": "CPU",
            "model_name": NAME,
            "model_instance_name": f"{NAME}_0",
        }
    )
    assert model.output_name == RERANK_LOGITS
    ids, mask = pad(sequences[:3], max(len(s) for s in sequences[:3]), 151643, "right")
    (response,) = model.execute([{INPUT_IDS: ids, ATTENTION_MASK: mask}])
    assert response.error is None and response.output_tensors[0].name == RERANK_LOGITS
    logits = response.output_tensors[0].array
    assert logits.shape == (3, 2) and np.abs(scores(logits) - scores(reference[:3])).max() <= 1e-5
    model.finalize()


def test_a_wrong_head_is_refused_and_nothing_is_written(
    dev_reranker_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.graph

    original = export.graph.rerank_head_rows

    def swapped(causal_lm: torch.nn.Module, token_ids: tuple[int, int]) -> torch.Tensor:
        return original(causal_lm, token_ids).flip(0)  # [yes, no]: every score becomes 1 - score

    monkeypatch.setattr(export.graph, "rerank_head_rows", swapped)
    with pytest.raises(ExportError, match="verification failed"):
        export_dev_reranker(dev_reranker_dir, tmp_path / "repo", warmup_lengths=())
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_fp16_reranker_export_verifies(
    dev_reranker_dir: Path, tmp_path: Path, sequences: list[list[int]], reference: np.ndarray
) -> None:
    export_dev_reranker(dev_reranker_dir, tmp_path / "repo", precision="fp16", warmup_lengths=())
    model_dir = tmp_path / "repo" / NAME
    _, params = config_params(model_dir)
    assert params[Param.PRECISION] == "fp16"
    report = json.loads((model_dir / "export_report.json").read_text())
    assert report["score_tolerance"] == 5e-3 and report["worst_score_diff"] <= 5e-3
    logits = onnx_logits(model_dir, sequences, "right")
    assert np.abs(scores(logits) - scores(reference)).max() <= 5e-3  # against the fp32 reference


def test_eager_reranker_export_is_left_padded_and_matches(
    dev_reranker_dir: Path, tmp_path: Path, sequences: list[list[int]], reference: np.ndarray
) -> None:
    """--attention eager (what --backend tensorrt gets): the traced graph with the same two-row head."""
    export_dev_reranker(dev_reranker_dir, tmp_path / "repo", attention="eager", warmup_lengths=())
    model_dir = tmp_path / "repo" / NAME
    cfg, params = config_params(model_dir)
    assert params[Param.PADDING_SIDE] == "left" and params[Param.KIND] == "reranker"
    assert list(cfg.output[0].dims) == [2]
    logits = onnx_logits(model_dir, sequences, "left")
    assert np.abs(scores(logits) - scores(reference)).max() <= 1e-5
    assert np.argsort(scores(logits)).tolist() == np.argsort(scores(reference)).tolist()
