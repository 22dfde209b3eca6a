"""Writes a Triton model repository entry: config.pbtxt, version 1 with the graph, tokenizer files."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from export.triton_config import RepoSettings, build_config, to_pbtxt, warmup_file
from service.contract import ModelFacts, Precision

TOKENIZER_DIR = "tokenizer"
REPORT_FILE = "export_report.json"


def write_model_dir(
    staging: Path,
    settings: RepoSettings,
    facts: ModelFacts,
    tokenizer_files: list[Path],
    report: dict[str, object],
) -> None:
    """Fills `staging` (the future <repo>/<name>) with everything but the graph in 1/."""
    (staging / "1").mkdir(parents=True, exist_ok=True)
    (staging / "config.pbtxt").write_text(to_pbtxt(build_config(settings, facts)))
    if settings.backend == "python":
        template = resources.files("export") / "templates" / "model.py"
        (staging / "1" / "model.py").write_text(template.read_text())
    if settings.warmup_lengths:
        (staging / "warmup").mkdir(exist_ok=True)
        for length in settings.warmup_lengths:
            np.ones(length, dtype="<i8").tofile(staging / "warmup" / warmup_file(length))
    tok_dir = staging / TOKENIZER_DIR
    tok_dir.mkdir(exist_ok=True)
    for src in tokenizer_files:
        shutil.copy2(src, tok_dir / src.name)
    (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def publish(staging: Path, final: Path) -> None:
    """Replaces <repo>/<name> by the verified staging directory (same filesystem: a rename)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        backup = final.with_name(f".{final.name}.old")
        if backup.exists():
            shutil.rmtree(backup)
        final.rename(backup)
        staging.rename(final)
        shutil.rmtree(backup)
    else:
        staging.rename(final)


def published_identity(final: Path) -> ModelFacts | None:
    """The facts of the model published at <repo>/<name> (its config.pbtxt), None when nothing is there."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = final / "config.pbtxt"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    config = text_format.Parse(text, model_config_pb2.ModelConfig(), allow_unknown_field=True)
    params = {k: v.string_value for k, v in config.parameters.items()}
    return ModelFacts.from_parameters(params, final.name)


def same_source(
    published: ModelFacts,
    model: str,
    precision: str,
    quant_method: str = "",
    quant_block_size: int = 0,
    quant_compute: str = "",
    quant_activations: str = "",
) -> str:
    """"" when the published export was made from `model` at `precision` (and, quantized, with `quant_method`,
    `quant_block_size` and `quant_compute`, when given); else what differs. A source that names the same hub id or
    the same local directory counts as the same (its revision is not known before loading it; a new revision of one
    id goes to a new version by choice). An int4 rtn export is not an int4 gptq one: other weights, other
    agreement; nor is one computing in int8 the same as one computing in fp32 (other results, other speed). A
    published export that does not record its compute mode (written before the key) is not known to be the same.
    Nor is a float16-activation graph the float32 one (`quant_activations`; exports before that key are fp32)."""
    differs = []
    if published.source_model.rstrip("/") != model.rstrip("/"):
        differs.append(f"source {published.source_model} (asked: {model})")
    if published.precision is not Precision(precision):
        differs.append(f"precision {published.precision} (asked: {precision})")
    elif Precision(precision).weight_bits:
        if quant_method and published.quantization_method != quant_method:
            differs.append(f"quantization method {published.quantization_method or '?'} (asked: {quant_method})")
        if quant_block_size and published.quantization_block_size != quant_block_size:
            differs.append(
                f"quantization block size {published.quantization_block_size or '?'} (asked: {quant_block_size})"
            )
        if quant_compute and published.quantization_compute != quant_compute:
            differs.append(f"quantization compute {published.quantization_compute or '?'} (asked: {quant_compute})")
        held = published.quantization_activations or "fp32"
        if quant_activations and held != quant_activations:
            differs.append(f"quantization activations {held} (asked: {quant_activations})")
    return ", ".join(differs)
