"""Long inputs in process on the dev model: ONNX Runtime on the eager graph vs the fused graph vs torch SDPA.

    .venv/bin/python -m benchmarks.long_context [--lengths 1024,4096,8192,32768] [--threads 2]
    .venv/bin/python -m benchmarks.long_context --real-config 0.6B --lengths 1024,4096 --systems ort-fused,torch-sdpa

One batch-1 forward per (system, length), each in a fresh process, peak RSS from /proc/self/status VmHWM (per
address space, unlike ru_maxrss, which a child inherits from the parent that forked it);
a 16-token run first, so one-time set-up is not counted in the time; the best of --repeat runs (the machine
may be shared). Prints a markdown table (seconds, peak RSS,
RSS growth over the loaded model). The eager graph runs up to 8192 tokens only (its [L, L] scores would need
~50 GB at 32k); SDPA and the eager graph are the baselines the fused graph replaces. --systems picks some
(ort-NAME runs the graph in <work>/NAME/model.onnx, e.g. an older fused graph kept beside the new one).
ONNX Runtime and torch get the same intra-op thread count (--threads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench" / "long-context"
SYSTEMS = ("ort-eager", "ort-fused", "torch-sdpa")
EAGER_MAX = 8192
EOS = 151643


def prepare(work: Path, real_config: str | None = None, eager: bool = True) -> None:
    """The dev model (or a real Qwen3-Embedding shape with random weights) and its graphs (cached; the fused
    graph is rebuilt when export/fused_graph.py changed since it was written)."""
    import hashlib

    import torch

    from export.dev_model import REAL_SHAPES, DevModelShape, build_dev_model
    from export.fused_graph import build_fused_graph, save_fused_graph
    from export.graph import LastTokenEmbedder, load_backbone
    from export.onnx_graph import export_onnx
    from service.contract import Precision

    model = work / "dev-model"
    if not (model / "config.json").exists():
        build_dev_model(model, REAL_SHAPES[real_config] if real_config else DevModelShape())
    if eager and not (work / "eager" / "model.onnx").exists():
        export_onnx(LastTokenEmbedder(load_backbone(str(model), torch.float32)), work / "eager" / "model.onnx", EOS)
    source = hashlib.sha256((ROOT / "export" / "fused_graph.py").read_bytes()).hexdigest()
    stamp = work / "fused" / "fused_graph.sha256"
    if not (work / "fused" / "model.onnx").exists() or not stamp.exists() or stamp.read_text() != source:
        backbone = load_backbone(str(model), torch.float32, attention="sdpa")
        save_fused_graph(build_fused_graph(backbone, Precision.FP32, 32768), work / "fused" / "model.onnx")
        stamp.write_text(source)


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(system: str, length: int, work: Path, threads: int, repeat: int) -> dict[str, float]:
    """In this (fresh) process: load, a 16-token run, then the timed `length`-token run."""
    import numpy as np
    import psutil

    def feed(n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.random.default_rng(0).integers(1000, 100000, size=(1, n)).astype(np.int64)
        ids[0, -1] = EOS
        return ids, np.ones_like(ids)

    if system == "torch-sdpa":
        import torch

        from export.graph import load_backbone

        torch.set_num_threads(threads)
        model = load_backbone(str(work / "dev-model"), torch.float32, attention="sdpa")

        def run(n: int) -> None:
            ids, mask = feed(n)
            with torch.inference_mode():
                # use_cache=False: as the export's reference runs it (no KV cache to fill).
                model(
                    input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), use_cache=False
                ).last_hidden_state[:, -1]

    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.enable_mem_pattern = False  # as the Python backend runs it
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # likewise
        graph = work / system.removeprefix("ort-") / "model.onnx"
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

        def run(n: int) -> None:
            ids, mask = feed(n)
            session.run(None, {"input_ids": ids, "attention_mask": mask})

    run(16)
    loaded = psutil.Process().memory_info().rss
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(length)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    peak = peak_rss()
    return {"seconds": seconds, "peak_mib": peak / 2**20, "growth_mib": (peak - loaded) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,4096,8192,32768")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated; ort-NAME: <work>/NAME graph")
    parser.add_argument("--real-config", choices=("0.6B", "4B", "8B"), help="a real shape, random weights")
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.work, args.threads, args.repeat)))
        return
    if args.real_config:
        args.work = args.work / args.real_config
    systems = args.systems.split(",")
    prepare(args.work, args.real_config, eager="ort-eager" in systems)
    lengths = [int(x) for x in args.lengths.split(",")]
    shape = f"{args.real_config} config, random weights" if args.real_config else "dev model (2 layers, hidden 64)"
    print(
        f"{shape}, batch 1, {args.threads} threads, "
        f"best of {args.repeat}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print("| tokens | system | seconds | peak RSS (MiB) | growth over loaded (MiB) |")
    print("|---|---|---|---|---|")
    for length in lengths:
        for system in systems:
            if length > EAGER_MAX and not system.startswith("ort-fused"):
                continue  # eager: quadratic scores; 32k is the fused graph's alone (the brief's comparison)
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.long_context",
                    "--one",
                    system,
                    str(length),
                    "--work",
                    str(args.work),
                    "--threads",
                    str(args.threads),
                    "--repeat",
                    str(args.repeat),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=False,
            )
            if out.returncode != 0:
                print(f"| {length} | {system} | failed: {out.stderr.strip().splitlines()[-1:]} | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {length} | {system} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['growth_mib']:.0f} |")


if __name__ == "__main__":
    main()
