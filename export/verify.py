"""ONNX Runtime vs PyTorch before anything is written as final.

The reference is the backbone's last hidden state at the last token of each text run alone, unpadded:
independent of the graph's pooling, so a pooling or padding bug in the graph shows up as a low cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.errors import ExportError
from service.contract import ATTENTION_MASK, EMBEDDING, INPUT_IDS, Precision
from service.pipeline.batching import pad

THRESHOLDS = {Precision.FP32: 0.99999, Precision.FP16: 0.999, Precision.BF16: 0.999}


@dataclass(frozen=True)
class SampleResult:
    name: str
    tokens: int
    cosine_alone: float
    cosine_batched: float
    max_abs_diff: float
    finite: bool


@dataclass(frozen=True)
class Verification:
    precision: Precision
    threshold: float
    provider: str
    results: list[SampleResult]

    @property
    def worst_cosine(self) -> float:
        return min(min(r.cosine_alone, r.cosine_batched) for r in self.results)

    @property
    def passed(self) -> bool:
        return all(r.finite for r in self.results) and self.worst_cosine >= self.threshold


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64) * np.linalg.norm(b64)
    return float(a64 @ b64 / denom) if denom > 0 else float("nan")


def reference_vectors(backbone: nn.Module, sequences: list[list[int]]) -> list[np.ndarray]:
    device = next(backbone.parameters()).device
    out = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq], device=device)
            hidden = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
            out.append(hidden.last_hidden_state[0, -1].float().cpu().numpy())
    return out


def ort_session(onnx_path: Path, precision: Precision) -> tuple[object, str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if precision == Precision.BF16 and "CUDAExecutionProvider" not in available:
        raise ExportError(
            "bf16 graphs can only be verified with onnxruntime-gpu (CUDAExecutionProvider): ONNX Runtime's "
            "CPU provider has no bf16 kernels. Export on a GPU host, or use --precision fp16/fp32 here."
        )
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    # Basic optimisations. The fused graph is built with ONNX Runtime's fused ops already in it
    # (SkipSimplifiedLayerNormalization, QuickGelu, GroupQueryAttention, merged projections): EXTENDED and ALL
    # find nothing more to fuse there (same nodes with ORT 1.32). The traced eager graph stays on the level it
    # has always been verified at (the offline transformer fusions do not support qwen3, onnxruntime#25083).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    return session, session.get_providers()[0]


def verify(
    onnx_path: Path,
    reference: list[np.ndarray],
    samples: dict[str, list[int]],
    precision: Precision,
    pad_id: int,
    padding_side: str = "left",
) -> Verification:
    """`reference` comes from reference_vectors(), computed before the PyTorch model was freed. Padded the way
    the facade will pad for this graph (`padding_side`, written into the model's contract)."""
    session, provider = ort_session(onnx_path, precision)
    names = list(samples)
    sequences = [samples[n] for n in names]

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([EMBEDDING], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])  # type: ignore[attr-defined]

    alone = [run(*pad([s], len(s), pad_id, padding_side))[0] for s in sequences]
    batched = run(*pad(sequences, max(len(s) for s in sequences), pad_id, padding_side))
    results = [
        SampleResult(
            name=name,
            tokens=len(seq),
            cosine_alone=cosine(alone[i], reference[i]),
            cosine_batched=cosine(batched[i], reference[i]),
            max_abs_diff=float(np.max(np.abs(alone[i] - reference[i]))),
            finite=bool(np.isfinite(alone[i]).all() and np.isfinite(batched[i]).all()),
        )
        for i, (name, seq) in enumerate(zip(names, sequences, strict=True))
    ]
    return Verification(
        precision=precision, threshold=THRESHOLDS[precision], provider=provider, results=results
    )
