"""The pure parts of measure's quantized section (issue 27 on the lent GPU): cell names, where ONNX Runtime placed
each node, the export gate's verdict and refusals, and the section's markdown table. The section itself (exports,
sessions, timing) is `measure.quantized_shape`, beside the other sections.

Why the placement matters: the exporter's default int4 graph keeps float32 activations (export/quantize.py: only
the linear layers become MatMulNBits). The CUDA provider has MatMulNBits for float32, but its GroupQueryAttention
only for float16 and bfloat16, so ONNX Runtime puts every attention node of that graph on the CPU provider and
copies each layer's activations across. Such a session still names CUDAExecutionProvider first; only the nodes'
placement (read from ONNX Runtime's own profile of one run) shows that part of it ran on the CPU. The section
therefore measures the graph the GPU presets serve, --quant-activations fp16 (Sizes.quant_activations): float16
attention and MatMulNBits, where nothing heavy should run off the GPU; the placement check says whether that held.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

# The export gate for random weights, which the project's gate refuses at real shapes in int4 (docs/export.md,
# "Quantized models": the 0.6B shape, worst cosine 0.913 < 0.98): the same lowered values as
# benchmarks.quantized_service's documented runs. Every result records that it was lowered and the agreement.
LOWERED_GATE = {"min_cosine": 0.5, "min_overlap": 0.01, "min_spearman": 0.01}
GATES = ("project", "lowered")
# Nodes whose placement decides the speed: a run with one of these off the run's provider is not that
# provider's figure. Shape arithmetic (Shape, Gather of a shape, ReduceSum of the mask) may sit on the CPU.
HEAVY_OPS = frozenset({"MatMul", "MatMulNBits", "Gemm", "FusedMatMul", "GroupQueryAttention", "MultiHeadAttention"})
# The exporter's refusals (export/exporter.py): the sample cosines, or the retrieval check.
REFUSALS = ("verification failed", "retrieval check failed")


def parse_cell(text: str) -> tuple[int, int]:
    """Parses a cell, "32x1024" -> (32, 1024): batch x tokens."""
    batch, sep, tokens = text.lower().partition("x")
    if not sep or not batch.isdigit() or not tokens.isdigit() or int(batch) < 1 or int(tokens) < 2:
        raise ValueError(f"a cell is BATCHxTOKENS (tokens >= 2), e.g. 32x1024, not {text!r}")
    return int(batch), int(tokens)


def gate_options(gate: str) -> dict[str, float]:
    """ExportOptions overrides for the kit's gate: none for the project's own, LOWERED_GATE for lowered."""
    if gate not in GATES:
        raise ValueError(f"quant_gate must be one of {', '.join(GATES)}, not {gate!r}")
    return dict(LOWERED_GATE) if gate == "lowered" else {}


def project_gate(precision: str, agreement: dict[str, float]) -> dict[str, Any]:
    """What the project's own gate (export.verify's thresholds for the precision) says of the agreement an export
    measured under a lowered gate: {"passes": bool, "failed": [the checks it would have failed]}."""
    from export.verify import MIN_OVERLAP_AT_10, MIN_SPEARMAN, THRESHOLDS
    from service.contract import Precision

    p = Precision(precision)
    bounds = {"worst_cosine": THRESHOLDS[p], "overlap_at_10": MIN_OVERLAP_AT_10[p], "spearman": MIN_SPEARMAN[p]}
    failed = [f"{k} {agreement[k]} < {bound}" for k, bound in bounds.items() if k in agreement and agreement[k] < bound]
    missing = [k for k in bounds if k not in agreement]
    if missing:
        failed.append(f"not measured: {', '.join(missing)}")
    return {"passes": not failed, "failed": failed, "thresholds": bounds}


def refusal(message: str) -> dict[str, Any] | None:
    """An exporter error that is the gate refusing -> {"refused": the line, "agreement": the figures it names};
    None for any other failure (which is an error of the run, not a result)."""
    line = " ".join(message.split())
    if not line.startswith(REFUSALS):
        return None
    agreement: dict[str, float] = {}
    for key, pattern in (("worst_cosine", r"worst cosine ([0-9.]+)"), ("overlap_at_10", r"overlap@10 ([0-9.]+)"),
                         ("spearman", r"Spearman ([0-9.]+)")):  # fmt: skip
        found = re.search(pattern, line)
        if found:
            agreement[key] = float(found.group(1).rstrip("."))
    return {"refused": line, "agreement": agreement}


def placement(profile: Path) -> dict[str, dict[str, int]]:
    """Per provider, how many of the graph's nodes of each op type ran there, from ONNX Runtime's profile (JSON
    trace events; one event per node and run, named `<node>_kernel_time`, with `op_name` and `provider`)."""
    seen: dict[str, tuple[str, str]] = {}
    for event in json.loads(profile.read_text()):
        args = event.get("args") or {}
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and "provider" in args:
            seen[event["name"]] = (args["provider"], args.get("op_name", "?"))
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for provider, op in seen.values():
        counts[provider][op] = counts[provider].get(op, 0) + 1
    if not counts:
        raise RuntimeError(f"{profile}: no node events in ONNX Runtime's profile")
    return {p: dict(sorted(ops.items())) for p, ops in sorted(counts.items())}


def heavy_elsewhere(where: dict[str, dict[str, int]], provider: str) -> dict[str, int]:
    """The HEAVY_OPS nodes that ran on another provider than `provider` ({} when all ran there)."""
    out: dict[str, int] = {}
    for other, ops in where.items():
        if other != provider:
            for op, n in ops.items():
                if op in HEAVY_OPS:
                    out[f"{op} on {other}"] = n
    return out


def _x(value: float | None, base: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" + (f" ({value / base:.2f}x)" if base else "")


def table(q: dict[str, Any]) -> list[str]:
    """The section's figures as markdown (text_report), nothing computed anew but the shown ratios' layout."""
    cells: list[str] = q["cells"]
    base = q["baseline"]
    lines = [
        f"## quantized {q['shape']}: {q['precision']} ({q['method']}, {q.get('activations', 'fp32')} activations) vs "
        f"{base['precision']}, ONNX Runtime on {q['provider']}, same inputs",
        f"gate: {q['gate']}" + (f" {q['gate_values']}" if q.get("gate_values") else ""),
        "| graph | MiB on disk | export s | " + " | ".join(f"{c} tokens/s" for c in cells)
        + f" | peak GiB at {cells[-1]} | cosine vs {base['precision']} graph | cosine vs torch | export agreement |",
        "|---|---|---|" + "---|" * len(cells) + "---|---|---|---|",
    ]  # fmt: skip
    rows = [base, *q["variants"]]
    for r in rows:
        label = r["label"]
        if "refused" in r or "error" in r:
            why = f"refused: {r['refused'][:120]}" if "refused" in r else f"error: {r['error'][:120]}"
            lines.append(f"| {label} | - | {_n(r.get('export_s'))} | " + " | ".join("-" for _ in cells)
                         + f" | - | - | - | {why} {r.get('agreement', '')} |")  # fmt: skip
            continue
        speeds = [r["cells"].get(c, {}).get("tokens_per_s") for c in cells]
        base_speeds = [None if r is base else base["cells"].get(c, {}).get("tokens_per_s") for c in cells]
        mib = r["onnx_bytes"] / 2**20
        size = f"{mib:,.1f}" + ("" if r is base else f" ({r['bytes_vs_baseline']:.2f}x)")
        agree = "" if r is base else ", ".join(f"{k} {v}" for k, v in r.get("agreement", {}).items())
        if r is not base and not r["project_gate"]["passes"]:
            agree += f" (project gate would refuse: {'; '.join(r['project_gate']['failed'])})"
        lines.append(
            f"| {label} | {size} | {_n(r.get('export_s'))} | "
            + " | ".join(_x(v, b) for v, b in zip(speeds, base_speeds, strict=True))
            + f" | {_n(r.get('peak_gib_at_long'), '.3f')} | {_n(r.get('cosine_vs_baseline_min'), '.6f')} | "
            f"{_n(r.get('cosine_vs_torch_min'), '.6f')} | {agree} |"
        )
    for r in rows:
        if r.get("heavy_elsewhere"):
            lines.append(f"{r['label']}: not all on {q['provider']}: {r['heavy_elsewhere']}")
    return lines


def _n(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)
