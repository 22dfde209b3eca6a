"""The model-repository contract (service/contract.py): one definition that export writes, the facade reads,
and the standalone Triton template (export/templates/model.py) repeats name for name."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from export.checkpoint import embedding_special_ids, resolve
from export.errors import ExportError
from export.prompts import DEFAULT_TASK, OFFICIAL_PROMPTS
from service import contract
from service.contract import ModelFacts, ModelInfo, Param, Precision, SpecialIds, instruction_prefix
from tests.helpers import ROOT

TEMPLATE = ROOT / "export" / "templates" / "model.py"


def template_constants() -> dict[str, str]:
    """Module-level NAME = "string" assignments of model.py (it cannot be imported outside Triton)."""
    tree = ast.parse(TEMPLATE.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def test_template_names_equal_the_contract() -> None:
    names = template_constants()
    for tensor in ("INPUT_IDS", "ATTENTION_MASK", "EMBEDDING", "RERANK_LOGITS"):
        assert names[tensor] == getattr(contract, tensor), tensor
    kinds = {k.removeprefix("KIND_"): v for k, v in names.items() if k.startswith("KIND_")}
    assert kinds == {kind.name: kind.value for kind in contract.ModelKind}
    params = {k.removeprefix("PARAM_"): v for k, v in names.items() if k.startswith("PARAM_")}
    assert params, "model.py reads its parameter keys through PARAM_* constants"
    for name, key in params.items():
        assert Param[name].value == key, name
    # And it reads them through the constants, not a second spelling of the same string.
    source = TEMPLATE.read_text()
    for key in params.values():
        assert source.count(f'"{key}"') == 1, key


def facts(**overrides: object) -> ModelFacts:
    values: dict[str, object] = dict(
        source_model="Qwen/Qwen3-Embedding-4B",
        hidden_size=2560,
        max_input_tokens=8192,
        embedding_rows=151665,
        pad_id=151643,
        eos_id=151643,
        precision="bf16",
        prompts={"query": "Instruct: q\nQuery:", "document": ""},
        backend="python",
        max_batch_tokens=16384,
        expected_peak_bytes_per_instance=123,
        ort_intra_op_threads=1,
        activation_bytes_per_token=7,
        activation_bytes_per_score=9,
        ort_arena_keep_bytes=11,
        length_buckets=(16, 24, 32, 8192),
        source_revision="sha256:" + "0" * 64,
    )
    values.update(overrides)
    return ModelFacts(**values)  # type: ignore[arg-type]


def test_parameters_round_trip_and_every_field_has_a_key() -> None:
    original = facts()
    params = original.to_parameters()
    quantization = {
        Param.QUANTIZATION_METHOD,
        Param.QUANTIZATION_BLOCK_SIZE,
        Param.QUANTIZATION_AGREEMENT,
        Param.QUANTIZATION_COMPUTE,
        Param.QUANTIZATION_ACTIVATIONS,
    }
    # A float export writes no quantization keys; a quantized one writes them all.
    assert set(params) == {p.value for p in Param} - {p.value for p in quantization}
    assert ModelFacts.from_parameters(params) == original
    quantized = facts(
        precision="int4",
        quantization_method="hqq",
        quantization_block_size=32,
        quantization_agreement={"worst_cosine": 0.99, "overlap_at_10": 0.9},
        quantization_compute="int8",
        quantization_activations="fp16",
    )
    assert set(quantized.to_parameters()) == {p.value for p in Param}
    assert ModelFacts.from_parameters(quantized.to_parameters()) == quantized
    assert quantized.precision.weight_bits == 4 and quantized.precision.dtype_name == "float32"
    assert original.precision is Precision.BF16 and json.loads(params[Param.PROMPTS])["document"] == ""
    # Unset optional numbers are left out, and read back as unset.
    bare = facts(max_batch_tokens=0, expected_peak_bytes_per_instance=0)
    assert Param.MAX_BATCH_TOKENS not in bare.to_parameters()
    assert ModelFacts.from_parameters(bare.to_parameters()) == bare


def test_missing_required_parameters_name_the_keys() -> None:
    with pytest.raises(ValueError, match=r"lacks parameters \['embedding_rows', 'hidden_size'\]"):
        ModelFacts.from_parameters({"max_input_tokens": "512"}, "m")


def triton_config(params: dict[str, str], **fields: object) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name="qwen3_embedding", max_batch_size=32, **fields)  # type: ignore[arg-type]
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    return cfg


def test_model_info_from_triton_config() -> None:
    info = ModelInfo.from_triton_config(triton_config(facts().to_parameters()))
    assert (info.triton_name, info.served_name, info.max_batch_size) == ("qwen3_embedding", "Qwen3-Embedding-4B", 32)
    assert (info.pad_id, info.eos_id, info.precision, info.backend) == (151643, 151643, "bf16", "python")
    assert ModelInfo.from_triton_config(triton_config(facts().to_parameters()), "emb").served_name == "emb"
    # An older export: no ids, precision or backend parameter; Triton's platform names the backend.
    legacy = {"hidden_size": "64", "max_input_tokens": "512", "embedding_rows": "151669"}
    old = ModelInfo.from_triton_config(triton_config(legacy, platform="onnxruntime_onnx"))
    assert (old.pad_id, old.eos_id, old.backend, old.source_model) == (
        151643,
        151643,
        "onnxruntime_onnx",
        "qwen3_embedding",
    )
    assert old.precision is Precision.FP32 and old.max_batch_tokens == 0


def test_special_ids_come_from_the_checkpoint(dev_model_dir: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    assert embedding_special_ids(dev_model_dir) == SpecialIds(pad_id=151643, eos_id=151643)
    # A tokenizer that appends nothing (old Qwen3-Embedding revisions) is refused by name.
    broken = tmp_path / "broken"
    shutil.copytree(dev_model_dir, broken)
    tok = Tokenizer.from_file(str(broken / "tokenizer.json"))
    tok.post_processor = None
    tok.save(str(broken / "tokenizer.json"))
    with pytest.raises(ExportError, match="appends no end-of-text token"):
        resolve(str(broken)).special_ids()
    # Another pad token in tokenizer_config.json is what left padding uses.
    other = tmp_path / "other-pad"
    shutil.copytree(dev_model_dir, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["pad_token"] = "<|im_start|>"
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    assert embedding_special_ids(other) == SpecialIds(pad_id=151644, eos_id=151643)


def test_one_template_for_export_and_serving() -> None:
    assert OFFICIAL_PROMPTS["query"] == instruction_prefix(DEFAULT_TASK)
    assert OFFICIAL_PROMPTS["query"].endswith("the query\nQuery:")


def test_the_serving_side_imports_neither_export_nor_torch() -> None:
    code = (
        "import sys, service.contract\n"
        "bad = [m for m in sys.modules if m == 'torch' or m == 'export' or m.startswith('export.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
