"""Why (or whether) the quantized graphs are faster on this CPU: the fused graph of a real layer shape with FEWER
layers (random weights, no PyTorch reference, no export gate: speed and memory only), quantized by the export's own
quantizer, each variant run in a fresh process on ONNX Runtime's CPU provider, with a per-op profile.

    .venv/bin/python -m benchmarks.quant_speed --config 4B --layers 4            # ~10 min on 2 shared cores
    .venv/bin/python -m benchmarks.quant_speed --config 0.6B --layers 2 --quick  # a minute

Per variant (fp32, int8 rtn, int4 rtn with fp32 compute and with int8 compute; -fp32emb: the float32 embedding table
instead of the export's float16 one; -bN: blocks of N): the graph's size on disk and its linear-layer bytes, the
loaded session's RSS (after the runs also split into anonymous and file-backed: the mapped table), tokens/s for one
20-token query (batch 1: the latency case, where the weights' bytes bound the speed), for a batch of 32 such queries
and for one 1,024-token document, and from ONNX Runtime's profiler the share of each op type in the batch-32 run.
Per-layer cost is what quantization changes: with N of the model's L layers, the table also gives the full model's
memory computed as embedding table + L/N x the measured layers (labelled as computed). Writes
benchmarks/results/quant-speed-<config>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "quant-speed"
EOS = 151643
# name -> (precision, method, compute[, embedding table dtype[, block size]]); fp32 is the baseline. The export's
# defaults: a float16 table, blocks of 32.
VARIANTS: dict[str, tuple | None] = {
    "fp32": None,
    "int8-rtn": ("int8", "rtn", "fp32"),
    "int4-rtn": ("int4", "rtn", "fp32"),
    "int4-rtn-int8": ("int4", "rtn", "int8"),
    "int8-rtn-int8": ("int8", "rtn", "int8"),
    "int4-rtn-int8-fp32emb": ("int4", "rtn", "int8", "fp32"),
    "int4-rtn-int8-b64": ("int4", "rtn", "int8", "fp16", 64),
    "int4-rtn-int8-b128": ("int4", "rtn", "int8", "fp16", 128),
    "int4-rtn-int8-b256": ("int4", "rtn", "int8", "fp16", 256),
}
# rows x tokens per run
WORKLOADS = {"query_b1": (1, 20), "query_b32": (32, 20), "doc1k_b1": (1, 1024)}
QUICK_WORKLOADS = {"query_b1": (1, 20), "query_b32": (32, 20)}


def build_fp32(config: str, layers: int, out: Path) -> Path:
    """The fused fp32 graph of `config`'s shape with `layers` layers, random weights (as dev-model draws them)."""
    import torch
    from transformers import Qwen3Model

    from export.dev_model import REAL_SHAPES, qwen3_config
    from export.fused_graph import build_fused_graph, save_fused_graph
    from service.contract import Precision

    shape = REAL_SHAPES[config]
    cfg = qwen3_config(shape, "float32")
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.no_grad():
        backbone = Qwen3Model(cfg).eval()
        backbone.embed_tokens.weight.normal_(0.0, shape.embed_std)
    graph = build_fused_graph(backbone, Precision.FP32, max_positions=8192)
    del backbone
    return save_fused_graph(graph, out / "fp32" / "model.onnx")


def quantize_copy(fp32: Path, out: Path, name: str, spec: tuple) -> Path:
    from export.quantize import QuantSettings, quantize_graph
    from service.contract import Precision

    target = out / name / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    for f in fp32.parent.glob("model.onnx*"):
        shutil.copy(f, target.parent / f.name)
    precision, method, compute, *rest = spec
    embedding = rest[0] if rest else "fp16"
    block = rest[1] if len(rest) > 1 else 32
    quantize_graph(
        target, QuantSettings(Precision(precision), method, block_size=block, compute=compute, embedding=embedding)
    )
    return target


def run_variant(graph: Path, threads: int, repeat: int, workloads: dict[str, tuple[int, int]], level: str) -> dict:
    """In this (fresh) process: load, RSS, tokens/s per workload (best of `repeat` after a warm run), and the
    profiler's time per op type over one query_b32 run."""
    import numpy as np
    import onnxruntime as ort
    import psutil

    def session(profile: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.enable_mem_pattern = False  # as the Python backend runs it
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(graph.parent / "profile")
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    rss0 = psutil.Process().memory_info().rss
    anon0, file0 = rss_split()
    sess = session(False)
    rng = np.random.default_rng(0)

    def feed(rows: int, width: int) -> dict[str, np.ndarray]:
        ids = rng.integers(1000, 100000, size=(rows, width)).astype(np.int64)
        ids[:, -1] = EOS
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    out: dict[str, object] = {"loaded_rss": psutil.Process().memory_info().rss - rss0}
    anon, file = rss_split()
    out["loaded_rss_anon"], out["loaded_rss_file"] = anon - anon0, file - file0
    for name, (rows, width) in workloads.items():
        f = feed(rows, width)
        sess.run(None, f)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            sess.run(None, f)
            times.append(time.perf_counter() - start)
        out[f"{name}_tokens_per_s"] = rows * width / min(times)
    out["run_rss"] = psutil.Process().memory_info().rss - rss0
    anon, file = rss_split()
    out["run_rss_anon"], out["run_rss_file"] = anon - anon0, file - file0
    out["peak_rss"] = _peak_rss()
    del sess
    prof = session(True)
    f = feed(32, 20)
    prof.run(None, f)
    prof.run(None, f)
    trace = json.loads(Path(prof.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 2e6  # two runs, seconds per run
    out["profile_s_per_run_by_op"] = dict(sorted(per_op.items(), key=lambda kv: -kv[1]))
    return out


def interleaved(graphs: dict[str, Path], threads: int, rounds: int, workloads: dict[str, tuple[int, int]]) -> dict:
    """All graphs loaded in this one process, one run of each in turn, `rounds` times per workload; the best time
    of each. On a machine shared with other jobs, sequential runs of one variant after another compare different
    loads (the same GroupQueryAttention took 3-4x longer in later variants' runs); turns compare like with like."""
    import numpy as np
    import onnxruntime as ort

    sessions = {}
    for name, graph in graphs.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.enable_mem_pattern = False
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        sessions[name] = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {name: {} for name in graphs}
    for load, (rows, width) in workloads.items():
        ids = rng.integers(1000, 100000, size=(rows, width)).astype(np.int64)
        ids[:, -1] = EOS
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        best = dict.fromkeys(graphs, float("inf"))
        for s in sessions.values():
            s.run(None, feed)  # warm
        for _ in range(rounds):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feed)
                best[name] = min(best[name], time.perf_counter() - start)
        for name in graphs:
            out[name][f"{load}_tokens_per_s"] = rows * width / best[name]
    return out


def rss_split() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process (Linux /proc/self/status): a mapped external-data
    file's pages are file-backed, clean and shared by every process mapping the file, and the kernel can drop
    them under pressure; anonymous memory (the heap, packed weights, the arena) it cannot."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("RssFile", 0)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def linear_bytes(graph: Path) -> dict[str, int]:
    """Bytes of the linear layers' weights (float MatMul weights or MatMulNBits' codes + scales + zero points)
    and of the token embedding table, read from the graph's initializers without loading their data."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    size = {t.name: _tensor_bytes(t) for t in model.graph.initializer}
    linear = embed = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" or (node.op_type == "MatMul" and node.input[1] in size):
            linear += sum(size.get(i, 0) for i in node.input[1:])
        elif node.op_type == "Gather" and node.input[0] == "embed_tokens.weight":
            embed = size[node.input[0]]
    return {"linear_bytes": linear, "embedding_bytes": embed}


def _tensor_bytes(t: object) -> int:
    import numpy as np
    import onnx

    count = int(np.prod(t.dims)) if t.dims else 1  # type: ignore[attr-defined]
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize  # type: ignore[attr-defined]
    return count * itemsize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("0.6B", "4B", "8B"), default="4B")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--variants", default="fp32,int8-rtn,int4-rtn,int4-rtn-int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--level", default="ORT_ENABLE_BASIC", help="graph optimization level (as the backend)")
    parser.add_argument("--quick", action="store_true", help="short queries only, repeat 2")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--interleave", action="store_true",
                        help="speed only: all variants in one process, runs in turn (fair on a shared machine)")
    parser.add_argument("--run", nargs=1, help=argparse.SUPPRESS)  # internal: GRAPH (with --threads etc.)
    args = parser.parse_args()
    workloads = QUICK_WORKLOADS if args.quick else WORKLOADS
    repeat = 2 if args.quick else args.repeat
    if args.run:
        print(json.dumps(run_variant(Path(args.run[0]), args.threads, repeat, workloads, args.level)))
        return
    from export.dev_model import REAL_SHAPES

    work = args.work / f"{args.config}-{args.layers}l"
    fp32 = work / "fp32" / "model.onnx"
    if not fp32.exists():
        build_fp32(args.config, args.layers, work)
    if args.interleave:
        graphs = {}
        for name in args.variants.split(","):
            graphs[name] = fp32 if name == "fp32" else work / name / "model.onnx"
            if not graphs[name].exists():
                quantize_copy(fp32, work, name, VARIANTS[name])  # type: ignore[arg-type]
        speeds = interleaved(graphs, args.threads, args.repeat, workloads)
        base_speed = speeds[next(iter(graphs))]
        print(f"\n{args.config} shape, {args.layers} layers, interleaved runs, best of {args.repeat}, "
              f"{args.threads} threads\n")
        print("| variant | " + " | ".join(f"{w} tok/s" for w in workloads) + " |")
        print("|---|" + "---|" * len(workloads))
        for name, got in speeds.items():
            print(f"| {name} | " + " | ".join(
                f"{got[f'{w}_tokens_per_s']:.0f} ({got[f'{w}_tokens_per_s'] / base_speed[f'{w}_tokens_per_s']:.2f}x)"
                for w in workloads) + " |")
        results = ROOT / "benchmarks" / "results"
        path = results / f"quant-speed-interleaved-{args.config}-{args.layers}l-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({"config": args.config, "layers": args.layers, "threads": args.threads,
                                    "rounds": args.repeat, "speeds": speeds}, indent=1))
        print(f"\n{path.relative_to(ROOT)}")
        return
    rows = []
    for name in args.variants.split(","):
        graph = fp32 if name == "fp32" else work / name / "model.onnx"
        if not graph.exists():
            quantize_copy(fp32, work, name, VARIANTS[name])  # type: ignore[arg-type]
        cmd = [sys.executable, "-m", "benchmarks.quant_speed", "--run", str(graph), "--threads", str(args.threads),
               "--repeat", str(repeat), "--level", args.level, *(["--quick"] if args.quick else [])]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        disk = sum(f.stat().st_size for f in graph.parent.glob("model.onnx*"))
        rows.append({"variant": name, "disk_bytes": disk, **linear_bytes(graph),
                     **json.loads(done.stdout.strip().splitlines()[-1])})
        print(f"{name}: done", file=sys.stderr, flush=True)
    total_layers = REAL_SHAPES[args.config].layers
    base = rows[0]
    gib = 2**30
    print(f"\n{args.config} shape, {args.layers} of {total_layers} layers, random weights; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads, {args.level}\n")
    heads = [k for k in workloads]
    print("| variant | disk GiB | linear GiB | loaded RSS GiB | run RSS GiB (anon + file) | "
          + " | ".join(f"{h} tok/s" for h in heads) + f" | computed {total_layers}-layer weights GiB |")
    print("|---|---|---|---|---|" + "---|" * len(heads) + "---|")
    for r in rows:
        cells = " | ".join(
            f"{r[f'{h}_tokens_per_s']:.0f} ({r[f'{h}_tokens_per_s'] / base[f'{h}_tokens_per_s']:.2f}x)" for h in heads
        )
        full = r["embedding_bytes"] + r["linear_bytes"] * total_layers / args.layers
        print(f"| {r['variant']} | {r['disk_bytes'] / gib:.2f} | {r['linear_bytes'] / gib:.2f} | "
              f"{r['loaded_rss'] / gib:.2f} | {r['run_rss'] / gib:.2f} ({r['run_rss_anon'] / gib:.2f} + "
              f"{r['run_rss_file'] / gib:.2f}) | {cells} | {full / gib:.2f} |")
    print("\nprofile, query_b32, seconds per run by op type (top 5):")
    for r in rows:
        top = list(r["profile_s_per_run_by_op"].items())[:5]
        print(f"  {r['variant']}: " + ", ".join(f"{op} {s:.3f}" for op, s in top))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"quant-speed-{args.config}-{args.layers}l-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"config": args.config, "layers": args.layers, "threads": args.threads,
                                "level": args.level, "rows": rows}, indent=1))
    print(f"\n{path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
