"""torch -> ONNX for the last-token embedder or reranker (TorchScript exporter; dynamic batch and sequence
axes)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.errors import ExportError
from service.contract import EMBEDDING, INPUT_NAMES

TWO_GB = 2 * 1024**3


def export_onnx(
    embedder: nn.Module, path: Path, eos_id: int, opset: int = 17, output_name: str = EMBEDDING
) -> Path:
    """Traces with a left-padded sample and writes `path` (+ `path.data` external weights when > 2 GB). The graph's
    output is `output_name` (EMBEDDING, or RERANK_LOGITS for a LastTokenReranker)."""
    device = next(embedder.parameters()).device
    # Two rows ending in the end-of-text token as real inputs do, the first one left-padded.
    ids = torch.tensor([[eos_id, eos_id, 9707, 1879, eos_id], [3838, 374, 279, 6722, eos_id]], device=device)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], device=device)
    weight_bytes = sum(p.numel() * p.element_size() for p in embedder.parameters())
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-level shape checks in transformers' mask code; the sample's
        # shapes make them pass the same way for every real input (same length mask and ids).
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                embedder,
                (ids, mask),
                str(path),
                input_names=list(INPUT_NAMES),
                output_names=[output_name],
                dynamic_axes={
                    **{name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES},
                    output_name: {0: "batch"},
                },
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types; all mean the same to the user
            raise ExportError(f"ONNX export failed: {exc}") from exc
    if weight_bytes > TWO_GB or not path.exists():
        _consolidate_external_data(path)
    return path


def _consolidate_external_data(path: Path) -> None:
    """Large exports scatter one file per tensor; Triton wants model.onnx + one data file beside it."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    for stale in path.parent.iterdir():
        if stale != path and stale.suffix not in (".py", ".pbtxt"):
            stale.unlink()
    save_with_external_data(model, path)


def save_with_external_data(model: Any, path: Path) -> None:
    """model.onnx plus one model.onnx.data beside it: the layout Triton's ONNX Runtime backend expects."""
    import onnx

    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )
