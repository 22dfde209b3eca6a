"""`qwen3-embed eval`: retrieval metrics on a BEIR folder for several endpoints side by side.

Each system embeds the corpus (document prompt) and the queries (query prompt or instruction) once, at full
size; every Matryoshka size is then the first `d` values re-normalised, which is exactly what the server's
`dimensions` does to a normalised vector (slice, then L2-normalise), and each precision is the server's
encoding applied to those floats (float16; binary/ubinary ranked by sign agreement, i.e. Hamming distance).
Metrics come from ir-measures (backed by trec_eval), not from this code.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import numpy as np

from indexing.corpus import BeirData
from service.client import Client, EmbedOptions

PRECISIONS = ("float32", "float16", "binary")


@dataclass
class SystemSpec:
    """One endpoint: `NAME=grpc://host:port?...` or `NAME=http://host:port/v1?...` (see `parse_system`)."""

    name: str
    api: str
    target: str
    model: str | None = None
    api_key: str | None = None
    dims: list[int] = field(default_factory=lambda: [0])
    precisions: list[str] = field(default_factory=lambda: ["float32"])
    query_prompt: str = ""
    query_instruction: str = ""
    doc_prompt: str = ""


def parse_system(spec: str) -> SystemSpec:
    """`NAME=URL`; URL query parameters: dims=32,64,0 (0 = full), precisions=float32,float16,binary,
    query_prompt=query, instruction=..., doc_prompt=document, model=..., api_key_env=VAR. gRPC systems (this
    service) default to the query and document prompts; HTTP ones send nothing beyond OpenAI's API unless told."""
    name, sep, url = spec.partition("=")
    if not sep or not name or "://" not in url:
        raise ValueError(f"system {spec!r}: expected NAME=grpc://host:port?... or NAME=http(s)://host/v1?...")
    parts = urlsplit(url)
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    known = {"dims", "precisions", "query_prompt", "instruction", "doc_prompt", "model", "api_key_env"}
    if unknown := set(params) - known:
        raise ValueError(f"system {name}: unknown parameter(s) {', '.join(sorted(unknown))}")
    is_grpc = parts.scheme == "grpc"
    if is_grpc:
        target = parts.netloc
    elif parts.scheme in ("http", "https"):
        target = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    else:
        raise ValueError(f"system {name}: scheme must be grpc, http or https")
    precisions = [p for p in params.get("precisions", "float32").split(",") if p]
    if bad := [p for p in precisions if p not in PRECISIONS]:
        raise ValueError(f"system {name}: unknown precision(s) {bad}; choose from {PRECISIONS}")
    instruction = params.get("instruction", "")
    return SystemSpec(
        name=name,
        api="grpc" if is_grpc else "http",
        target=target,
        model=params.get("model") or None,
        api_key=os.environ.get(params["api_key_env"]) if "api_key_env" in params else None,
        dims=sorted({int(d) for d in params.get("dims", "0").split(",") if d}),
        precisions=precisions,
        query_prompt=params.get("query_prompt", "" if instruction or not is_grpc else "query"),
        query_instruction=instruction,
        doc_prompt=params.get("doc_prompt", "document" if is_grpc else ""),
    )


def reduce(vectors: np.ndarray, dims: int, precision: str) -> np.ndarray:
    """A Matryoshka size and a precision, as float32 vectors whose dot product ranks as the real encoding."""
    v = vectors[:, :dims] if dims else vectors
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    if precision == "float16":
        return v.astype(np.float16).astype(np.float32)
    if precision == "binary":
        # Packed bits compare by Hamming distance, and for ±1 vectors dot = dims - 2 * Hamming.
        return np.where(v > 0, 1.0, -1.0).astype(np.float32)
    return v.astype(np.float32)


def search(queries: np.ndarray, docs: np.ndarray, doc_ids: list[str], query_ids: list[str], k: int) -> dict:
    """Exact top-k by dot product: {query id: {doc id: score}} (ir-measures' run format)."""
    run: dict[str, dict[str, float]] = {}
    scores = queries @ docs.T
    k = min(k, len(doc_ids))
    for qi, row in enumerate(scores):
        top = np.argpartition(-row, k - 1)[:k]
        run[query_ids[qi]] = {doc_ids[j]: float(row[j]) for j in top}
    return run


def metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], ks: list[int]) -> dict[str, float]:
    """nDCG@10, R@k for each k, and MRR (ir-measures' RR), averaged over the judged queries."""
    import ir_measures

    measures = [ir_measures.parse_measure("nDCG@10")]
    measures += [ir_measures.parse_measure(f"R@{k}") for k in ks]
    measures.append(ir_measures.parse_measure("RR"))
    values = ir_measures.calc_aggregate(measures, qrels, run)
    out = {str(m): float(values.get(m, 0.0)) for m in measures}
    out["MRR"] = out.pop("RR")
    return out


def embed_system(
    system: SystemSpec, data: BeirData, timeout_s: float = 120.0, priority: str | None = "bulk"
) -> tuple[np.ndarray, np.ndarray, int]:
    """(query vectors, document vectors, full size) at full size, normalised. `priority`: the class every
    request is sent with (an evaluation is bulk work: it must not slow search traffic)."""
    with Client(
        system.target,
        api=system.api,
        api_key=system.api_key,
        model=system.model,
        timeout_s=timeout_s,
        priority=priority,
    ) as client:
        docs = client.embed(list(data.corpus.values()), EmbedOptions(prompt_name=system.doc_prompt)).vectors
        query_opts = EmbedOptions(prompt_name=system.query_prompt, instruction=system.query_instruction)
        queries = client.embed(list(data.queries.values()), query_opts).vectors
    return queries, docs, docs.shape[1]


def evaluate(
    systems: list[SystemSpec], data: BeirData, ks: list[int], priority: str | None = "bulk"
) -> list[dict[str, Any]]:
    """One row per (system, precision, dimensions)."""
    rows: list[dict[str, Any]] = []
    doc_ids, query_ids = list(data.corpus), list(data.queries)
    depth = max([*ks, 10, 100])
    for system in systems:
        queries, docs, full = embed_system(system, data, priority=priority)
        for precision in system.precisions:
            for size in sorted({d or full for d in system.dims}):
                if size > full:
                    raise ValueError(f"system {system.name}: dims {size} > its size {full}")
                run = search(reduce(queries, size, precision), reduce(docs, size, precision), doc_ids, query_ids, depth)
                rows.append(
                    {"system": system.name, "precision": precision, "dims": size, **metrics(data.qrels, run, ks)}
                )
    return rows


def write_outputs(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """results.csv, results.md (the table) and matryoshka.png (nDCG@10 against dimensions)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "results.md").write_text(markdown_table(rows))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (system, precision), points in _series(rows).items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=f"{system} ({precision})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dimensions")
    ax.set_ylabel("nDCG@10")
    ax.set_title("Matryoshka curve")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "matryoshka.png", dpi=120)
    plt.close(fig)
    return [out_dir / "results.csv", out_dir / "results.md", out_dir / "matryoshka.png"]


def _series(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in rows:
        series.setdefault((row["system"], row["precision"]), []).append((row["dims"], row["nDCG@10"]))
    return series


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
