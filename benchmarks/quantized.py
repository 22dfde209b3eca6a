"""Quantized exports side by side, in one run: `qwen3-embed export` at fp32, int8 and int4 (by method) of one
checkpoint, then each graph in process on ONNX Runtime's CPU provider.

    .venv/bin/python -m benchmarks.quantized [--variants fp32,int8-rtn,int4-rtn,int4-rtn-fp32] [--threads 2]
    .venv/bin/python -m benchmarks.quantized --real-config 0.6B --variants fp32,int8-rtn,int4-rtn

A variant is PRECISION[-METHOD[-COMPUTE]] (int4-rtn-fp32: --quant-compute fp32; int8 compute is the default).
Per variant: export wall time and the export process's peak RSS (its own ru_maxrss: each export runs in a fresh
process), the graph's size on
disk, the agreement the export gate measured, and tokens/s for a batch of 32 short queries (~20 tokens) and
for a batch of 4 documents of 1,024 tokens (the best of --repeat runs after one warm run; the machine may be
shared), with the loaded session's RSS. Prints a markdown table and writes
benchmarks/results/quantized-<time>.json. Random weights: the agreement figures are not those of a trained
checkpoint (docs/export.md, "Quantized models").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench-quantized"
VARIANTS = ("fp32", "int8-rtn", "int4-rtn", "int4-gptq", "int4-rtn-fp32")
EOS = 151643


def export_variant(model: Path, out: Path, variant: str, max_tokens: int) -> dict[str, object]:
    """One `qwen3-embed export` in a fresh process; returns its wall time, peak RSS and report."""
    precision, _, rest = variant.partition("-")
    method, _, compute = rest.partition("-")
    args = ["export", "--model", str(model), "--output", str(out), "--name", variant.replace("-", "_"),
            "--precision", precision, "--max-tokens", str(max_tokens), "--verify-long-tokens", "1024",
            "--skip-resource-check", "--no-warmup"]
    if method:
        args += ["--quant-method", method]
    if compute:  # e.g. int4-rtn-fp32: float compute
        args += ["--quant-compute", compute]
    code = (
        "import resource, sys\n"
        "from service.cli import app\n"
        "try:\n    app(sys.argv[1:])\n"
        "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print('PEAK_RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"export {variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    peak = int(next(ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("PEAK_RSS")))
    model_dir = out / variant.replace("-", "_")
    report = json.loads((model_dir / "export_report.json").read_text())
    disk = sum(f.stat().st_size for f in (model_dir / "1").glob("model.onnx*"))
    return {"export_seconds": seconds, "export_peak_rss": peak, "disk_bytes": disk, "report": report}


def speed(graph: Path, threads: int, repeat: int) -> dict[str, float]:
    """In this (fresh) process: tokens/s of short queries and of 1k-token documents, and the loaded RSS."""
    import numpy as np
    import onnxruntime as ort
    import psutil

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_mem_pattern = False  # as the Python backend runs it
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    def batch(rows: int, width: int) -> dict[str, np.ndarray]:
        ids = rng.integers(1000, 100000, size=(rows, width)).astype(np.int64)
        ids[:, -1] = EOS
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    out: dict[str, float] = {}
    for name, (rows, width) in {"short": (32, 20), "doc1k": (4, 1024)}.items():
        feed = batch(rows, width)
        session.run(None, feed)
        best = min(_timed(session, feed) for _ in range(repeat))
        out[f"{name}_tokens_per_s"] = rows * width / best
    out["loaded_rss"] = psutil.Process().memory_info().rss
    return out


def _timed(session: object, feed: Mapping[str, object]) -> float:
    start = time.perf_counter()
    session.run(None, feed)  # type: ignore[attr-defined]
    return time.perf_counter() - start


def agreement(report: dict[str, object]) -> str:
    quant = report.get("quantization")
    if not isinstance(quant, dict):
        return f"cos {report['worst_cosine']:.6f}"
    a = quant["quantization_agreement"]
    return f"cos {a['worst_cosine']:.4f}, overlap@10 {a['overlap_at_10']:.3f}, rho {a['spearman']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--real-config", choices=("0.6B", "4B", "8B"), help="a real shape, random weights")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--speed", nargs=3, help=argparse.SUPPRESS)  # internal: GRAPH THREADS REPEAT
    args = parser.parse_args()
    if args.speed:
        measured = json.dumps(speed(Path(args.speed[0]), int(args.speed[1]), int(args.speed[2])))
        # Also beside the graph's model directory: a run stopped later still leaves what it measured.
        Path(args.speed[0]).parent.parent.joinpath("speed.json").write_text(measured + "\n")
        print(measured)
        return
    from export.dev_model import REAL_SHAPES, DevModelShape, build_dev_model

    work = args.work / (args.real_config or "dev")
    model = work / "checkpoint"
    if not (model / "config.json").exists():
        build_dev_model(model, REAL_SHAPES[args.real_config] if args.real_config else DevModelShape())
    rows = []
    for variant in args.variants.split(","):
        row: dict[str, object] = {"variant": variant, **export_variant(model, work / "repo", variant, args.max_tokens)}
        graph = work / "repo" / variant.replace("-", "_") / "1" / "model.onnx"
        cmd = [sys.executable, "-m", "benchmarks.quantized", "--speed", str(graph), str(args.threads), str(args.repeat)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
        row |= json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{variant}: done", file=sys.stderr, flush=True)
    base = rows[0]
    mib = 2**20
    print(f"\n{args.real_config or 'dev model'}, {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads\n")
    print("| variant | disk MiB | export s | export peak RSS MiB | loaded RSS MiB | short tok/s | 1k-doc tok/s | "
          "agreement (export gate) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f" ({r['short_tokens_per_s'] / base['short_tokens_per_s']:.2f}x)"  # type: ignore[operator]
        ratio_doc = f" ({r['doc1k_tokens_per_s'] / base['doc1k_tokens_per_s']:.2f}x)"  # type: ignore[operator]
        print(
            f"| {r['variant']} | {r['disk_bytes'] / mib:.1f} | {r['export_seconds']:.1f} | "  # type: ignore[operator]
            f"{r['export_peak_rss'] / mib:.0f} | {r['loaded_rss'] / mib:.0f} | "  # type: ignore[operator]
            f"{r['short_tokens_per_s']:.0f}{ratio} | {r['doc1k_tokens_per_s']:.0f}{ratio_doc} | "
            f"{agreement(r['report'])} |"  # type: ignore[arg-type]
        )
    out = ROOT / "benchmarks" / "results" / f"quantized-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for r in rows:
        r["agreement"] = agreement(r.pop("report"))  # type: ignore[arg-type]
    out.write_text(json.dumps({"config": args.real_config or "dev", "threads": args.threads, "rows": rows}, indent=1))
    print(f"\n{out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
