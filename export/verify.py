"""ONNX Runtime vs PyTorch before anything is written as final.

Embedding models: the reference is the backbone's last hidden state at the last token of each text run alone,
unpadded: independent of the graph's pooling, so a pooling or padding bug in the graph shows up as a low cosine.

Rerankers: the reference is transformers' causal LM itself, its full LM head's logits at the last position of
each formatted pair run alone, unpadded; the score is sigmoid(logit_yes - logit_no). The graph's two logits must
give the same scores (alone and in a padded batch) and the same ranking: a wrong head row, pooled token or
padding shows up as another score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.errors import ExportError
from service.contract import ATTENTION_MASK, EMBEDDING, INPUT_IDS, RERANK_LOGITS, Precision, pad

# Quantized graphs (weight-only, against the fp32 reference): measured on the dev model (docs/export.md,
# "Quantized models": worst cosine int8 0.99997 (rtn and gptq), int4 0.9915 (rtn), 0.9939 (gptq), 0.9941 (hqq))
# with a margin; trained checkpoints have outlier channels random weights lack, so the export checks them on the
# real weights every time.
THRESHOLDS = {
    Precision.FP32: 0.99999,
    Precision.FP16: 0.999,
    Precision.BF16: 0.999,
    Precision.INT8: 0.999,
    Precision.INT4: 0.98,
}
# Rerankers: the largest |score difference| (scores in [0, 1]) allowed against the reference, which runs in the
# graph's precision. In fp16 that reference is itself ~1e-3 from the fp32 scores (dev reranker, 512 tokens: up to
# 3.1e-3, while ORT's fp16 graph was within 1.7e-3 of fp32 and 2.0e-3 of the fp16 reference), so 1e-3 would refuse
# sound graphs; bf16 keeps 3 fewer mantissa bits than fp16 (8x the rounding).
SCORE_TOLERANCES = {
    Precision.FP32: 1e-5,
    Precision.FP16: 5e-3,
    Precision.BF16: 2e-2,
    # Quantized, against the fp32 causal LM; the dev reranker (random weights, logits amplified) measured worst
    # int8 2.1e-2 (rtn), 6.4e-3 (gptq); int4 7.3e-2 (rtn), 3.1e-2 (gptq), 1.6e-1 (hqq: refused at the default).
    Precision.INT8: 5e-2,
    Precision.INT4: 1e-1,
}
# The retrieval check of quantized embedding graphs: mean overlap of each query's top-10 documents with the fp32
# reference's, and mean Spearman correlation of each query's scores over all documents.
# Dev model (random weights, many near-ties among neighbours): int8 0.95 (rtn), 0.99 (gptq); int4 0.90 (rtn),
# 0.93 (gptq), 0.89 (hqq).
MIN_OVERLAP_AT_10 = {Precision.INT8: 0.9, Precision.INT4: 0.8}
MIN_SPEARMAN = {Precision.INT8: 0.99, Precision.INT4: 0.9}


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
    # ONNX Runtime's CPU provider has no fp16 MatMul: it casts each fp16 weight to fp32 at run time, and in
    # the default order every such Cast runs first, holding fp32 copies of all weights at once (a 4B fp16
    # verification was killed at 24 GiB). Priority order runs each Cast just before its MatMul.
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    session = ort.InferenceSession(str(onnx_path), options, providers=providers)
    return session, session.get_providers()[0]


def run_alone_and_batched(
    session: object, output: str, sequences: list[list[int]], pad_id: int, padding_side: str
) -> tuple[list[np.ndarray], np.ndarray]:
    """The graph's `output` for each sequence run alone, and for all of them in one padded batch."""

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])  # type: ignore[attr-defined]

    alone = [run(*pad([s], len(s), pad_id, padding_side))[0] for s in sequences]
    batched = run(*pad(sequences, max(len(s) for s in sequences), pad_id, padding_side))
    return alone, batched


def verify(
    onnx_path: Path,
    reference: list[np.ndarray],
    samples: dict[str, list[int]],
    precision: Precision,
    pad_id: int,
    padding_side: str = "left",
    threshold: float = 0.0,
) -> Verification:
    """`reference` comes from reference_vectors(), computed before the PyTorch model was freed. Padded the way
    the facade will pad for this graph (`padding_side`, written into the model's contract)."""
    session, provider = ort_session(onnx_path, precision)
    names = list(samples)
    sequences = [samples[n] for n in names]
    alone, batched = run_alone_and_batched(session, EMBEDDING, sequences, pad_id, padding_side)
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
        precision=precision, threshold=threshold or THRESHOLDS[precision], provider=provider, results=results
    )


def rerank_score(logits: np.ndarray) -> np.ndarray:
    """[..., 2] logits (RERANK_LABELS order: no, yes) -> sigmoid(yes - no) in float64, the official score
    (log_softmax over the two, exp of "yes")."""
    x = np.asarray(logits, dtype=np.float64)
    return np.asarray(1.0 / (1.0 + np.exp(x[..., 0] - x[..., 1])))


def reference_rerank_logits(
    causal_lm: nn.Module, sequences: list[list[int]], token_ids: tuple[int, int]
) -> list[np.ndarray]:
    """The causal LM's own logits of `token_ids` at the last position of each sequence run alone, unpadded:
    the full LM head (independent of the rows the graph keeps). Only the last position's logits are computed
    (logits_to_keep), not [length, vocab]."""
    device = next(causal_lm.parameters()).device
    out = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq], device=device)
            result = causal_lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1)
            logits = result.logits[0, -1].float()
            out.append(logits[list(token_ids)].cpu().numpy())
    return out


@dataclass(frozen=True)
class RerankSampleResult:
    name: str
    tokens: int
    reference_score: float
    score_alone: float
    score_batched: float
    max_logit_diff: float  # |graph - reference| over both logits, alone and batched
    finite: bool

    @property
    def score_diff(self) -> float:
        return max(abs(self.score_alone - self.reference_score), abs(self.score_batched - self.reference_score))


@dataclass(frozen=True)
class RerankVerification:
    precision: Precision
    tolerance: float
    provider: str
    results: list[RerankSampleResult]

    @property
    def worst_score_diff(self) -> float:
        return max(r.score_diff for r in self.results)

    @property
    def max_logit_diff(self) -> float:
        return max(r.max_logit_diff for r in self.results)

    @property
    def ranking_kept(self) -> bool:
        """The graph orders every pair of samples as the reference does, alone and batched. Pairs whose
        reference scores lie within 2 x tolerance of each other are ties the tolerance allows to swap."""
        for a in self.results:
            for b in self.results:
                if a.reference_score - b.reference_score > 2 * self.tolerance and not (
                    a.score_alone > b.score_alone and a.score_batched > b.score_batched
                ):
                    return False
        return True

    @property
    def passed(self) -> bool:
        return (
            all(r.finite for r in self.results) and self.worst_score_diff <= self.tolerance and self.ranking_kept
        )


def verify_reranker(
    onnx_path: Path,
    reference: list[np.ndarray],
    samples: dict[str, list[int]],
    precision: Precision,
    pad_id: int,
    padding_side: str = "left",
    tolerance: float = 0.0,
) -> RerankVerification:
    """`reference` comes from reference_rerank_logits() ([no, yes] per sample), computed before the causal LM was
    freed. Padded the way the facade will pad for this graph."""
    session, provider = ort_session(onnx_path, precision)
    names = list(samples)
    sequences = [samples[n] for n in names]
    alone, batched = run_alone_and_batched(session, RERANK_LOGITS, sequences, pad_id, padding_side)
    results = []
    for i, (name, seq) in enumerate(zip(names, sequences, strict=True)):
        ref = np.asarray(reference[i], dtype=np.float64)
        ours = np.stack([alone[i], batched[i]]).astype(np.float64)
        results.append(
            RerankSampleResult(
                name=name,
                tokens=len(seq),
                reference_score=float(rerank_score(ref)),
                score_alone=float(rerank_score(alone[i])),
                score_batched=float(rerank_score(batched[i])),
                max_logit_diff=float(np.max(np.abs(ours - ref))),
                finite=bool(np.isfinite(ours).all()),
            )
        )
    return RerankVerification(
        precision=precision, tolerance=tolerance or SCORE_TOLERANCES[precision], provider=provider, results=results
    )


@dataclass(frozen=True)
class Retrieval:
    """The quantized graph's neighbours against the fp32 reference's on the built-in retrieval set."""

    overlap_at_10: float  # mean over queries of |top10(graph) & top10(reference)| / 10
    worst_overlap_at_10: float
    spearman: float  # mean over queries of the rank correlation of the scores of all documents
    min_overlap_at_10: float
    min_spearman: float

    @property
    def passed(self) -> bool:
        return self.overlap_at_10 >= self.min_overlap_at_10 and self.spearman >= self.min_spearman


def _ranks(x: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (scores are continuous: ties do not occur in practice)."""
    ra, rb = _ranks(a), _ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def cosine_scores(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = documents / np.linalg.norm(documents, axis=1, keepdims=True)
    return np.asarray(q.astype(np.float64) @ d.astype(np.float64).T)


def retrieval_agreement(
    reference: tuple[np.ndarray, np.ndarray], graph: tuple[np.ndarray, np.ndarray], min_overlap: float,
    min_spearman: float, k: int = 10,
) -> Retrieval:
    """`reference` and `graph`: (query vectors, document vectors). Pure: the caller runs the models."""
    ref, ours = cosine_scores(*reference), cosine_scores(*graph)
    overlaps, rhos = [], []
    for r, o in zip(ref, ours, strict=True):
        top_r, top_o = set(np.argsort(-r)[:k].tolist()), set(np.argsort(-o)[:k].tolist())
        overlaps.append(len(top_r & top_o) / k)
        rhos.append(spearman(r, o))
    return Retrieval(
        overlap_at_10=float(np.mean(overlaps)),
        worst_overlap_at_10=float(np.min(overlaps)),
        spearman=float(np.mean(rhos)),
        min_overlap_at_10=min_overlap,
        min_spearman=min_spearman,
    )


def graph_vectors(
    onnx_path: Path, precision: Precision, groups: list[list[list[int]]], pad_id: int, padding_side: str
) -> list[np.ndarray]:
    """The graph's embedding of each sequence of each group, run alone (no padding effect in the comparison);
    one session for all."""
    session, _ = ort_session(onnx_path, precision)
    return [np.stack(run_alone_and_batched(session, EMBEDDING, seqs, pad_id, padding_side)[0]) for seqs in groups]
