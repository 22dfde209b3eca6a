"""Quantized exports through the service, side by side in one run: each variant exported by `qwen3-embed export`
(fresh process: wall time, peak RSS, size on disk, the export gate's agreement), then served alone by a real Triton
(the export's default backend and instances) behind the facade, and driven over gRPC Embed: short queries, 1k-token
and 4k-token documents. Tokens/s per workload, and the peak RSS of Triton's process tree (tritonserver + the Python
backend's stubs, where the weights live) while it serves.

    .venv/bin/python -m benchmarks.quantized_service --quick                    # dev model, ~3 min
    .venv/bin/python -m benchmarks.quantized_service --config 0.6B              # the real 0.6B shape, ~40 min here
    .venv/bin/python -m benchmarks.quantized_service --config 4B --layers 4     # 4 of the 4B shape's 36 layers

Variants as in benchmarks.quantized: PRECISION[-METHOD[-COMPUTE]][-bN] (int4-rtn-fp32: --quant-compute fp32;
int4-rtn-int8-b256: blocks of 256). A variant
the export gate refuses is reported as refused, with the gate's line, and not served. Prints a markdown table and
writes benchmarks/results/quantized-service-<config>-<time>.json. Random weights (docs/export.md, "Quantized
models").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench-quantized-service"
NAME = "qwen3_embedding"
MAX_TOKENS = 4096  # the exports' --max-tokens: no workload text may be longer (with its EOS)


@dataclass(frozen=True)
class Load:
    texts: int
    tokens: int  # per text (log-uniform within +-10 %)
    batch: int  # texts per request
    concurrency: int


FULL = {"short": Load(256, 20, 8, 4), "doc1k": Load(8, 1024, 1, 2), "doc4k": Load(4, 4096, 1, 2)}
QUICK = {"short": Load(64, 20, 8, 4), "doc1k": Load(4, 1024, 1, 2), "doc4k": Load(2, 4096, 1, 2)}


def quantized(variant: str) -> bool:
    """int8 / int4 variants: the ones the export gate's overrides apply to."""
    return variant.startswith(("int8", "int4"))


def export(model: Path, repo: Path, variant: str, gate: tuple[str, ...] = ()) -> dict[str, Any]:
    """`qwen3-embed export` of one variant into its own repository (fresh process); refused -> {"refused": line}."""
    base, _, block = variant.partition("-b")  # int4-rtn-int8-b256: blocks of 256
    precision, _, rest = base.partition("-")
    method, _, compute = rest.partition("-")
    args = [
        "export",
        "--model",
        str(model),
        "--output",
        str(repo),
        "--name",
        NAME,
        "--precision",
        precision,
        "--max-tokens",
        str(MAX_TOKENS),
        "--verify-long-tokens",
        "1024",
        "--skip-resource-check",
        "--no-warmup",
    ]
    args += ["--quant-method", method] if method else []
    args += ["--quant-compute", compute] if compute else []
    args += ["--quant-block-size", block] if block else []
    args += list(gate) if quantized(variant) else []
    code = (
        "import resource, sys\nfrom service.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print('PEAK_RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)\nsys.exit(code)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    output = " ".join((done.stdout + done.stderr).split())
    if done.returncode == 2 and "verification failed" in output:
        return {"refused": output[output.index("verification failed") :][:200], "export_seconds": seconds}
    if done.returncode != 0:
        raise SystemExit(f"export {variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    report = json.loads((repo / NAME / "export_report.json").read_text())
    quant = report.get("quantization")
    agreement = quant["quantization_agreement"] if isinstance(quant, dict) else {"worst_cosine": report["worst_cosine"]}
    return {
        "export_seconds": seconds,
        "export_peak_rss": int(next(ln.split()[1] for ln in done.stdout.splitlines() if ln.startswith("PEAK_RSS"))),
        "disk_bytes": sum(f.stat().st_size for f in (repo / NAME / "1").glob("model.onnx*")),
        "agreement": agreement,
    }


class TreeRss:
    """Peak RSS of a process and its descendants, sampled every 0.2 s in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        import psutil

        total = 0
        for p in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a stub that exited between the listing and the read
                total += p.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def drive(target: str, texts: list[str], load: Load) -> float:
    """Prompt tokens per second of `texts` sent as Embed requests of load.batch, load.concurrency at a time."""
    import grpc

    from service.gen.embedding.v1 import embedding_pb2 as pb
    from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc

    requests = [texts[i : i + load.batch] for i in range(0, len(texts), load.batch)]
    tokens = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        await stub.Embed(pb.EmbedRequest(inputs=requests[0]), timeout=900)  # warm this length's shapes
        queue = list(requests)

        async def worker() -> None:
            nonlocal tokens
            while queue:
                reply = await stub.Embed(pb.EmbedRequest(inputs=queue.pop()), timeout=900)
                tokens += reply.usage.prompt_tokens

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        return tokens / (time.perf_counter() - start)


def serve_and_measure(repo: Path, loads: dict[str, Load], logs: Path) -> dict[str, Any]:
    from devtools.bench.workload import LengthSpec, make_texts
    from devtools.launch import launch_facade
    from service.triton.runtime import start_triton

    triton = start_triton(repo, logs / "triton.log")
    out: dict[str, Any] = {}
    try:
        with TreeRss(triton.process.pid) as rss:
            out["loaded_rss"] = rss.now()
            env = {"QWEN3_EMBED_WORKERS": "1"}
            with launch_facade(repo, triton.grpc_url, logs, env=env, timeout=600) as facade:
                for name, load in loads.items():
                    # +-10 % around the load's length, never past what the export serves (the 4k documents)
                    spec = LengthSpec(int(load.tokens * 0.9), min(int(load.tokens * 1.1) + 1, MAX_TOKENS * 95 // 100))
                    texts = make_texts(spec, load.texts, seed=7)
                    out[f"{name}_tokens_per_s"] = asyncio.run(drive(facade.target, texts, load))
        out["serving_peak_rss"] = rss.peak
    finally:
        triton.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("dev", "0.6B", "4B"), default="dev")
    parser.add_argument("--variants", default="fp32,int8-rtn,int4-rtn,int4-gptq")
    parser.add_argument("--quick", action="store_true", help="fewer texts per workload")
    parser.add_argument("--reuse", action="store_true", help="serve the repositories an earlier run exported")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument(
        "--gate",
        default="",
        help="quantized variants: export gate overrides, e.g. '--min-cosine 0.5 --min-overlap 0.01 --min-spearman "
        "0.01', to measure the speed and memory of a shape whose random weights the gate refuses (the row still "
        "shows the agreement measured)",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=0,
        help="keep this many of the shape's layers (0: all; a cut of a shape "
        "whose whole fp32 export does not fit this machine)",
    )
    args = parser.parse_args()
    from dataclasses import replace

    from export.dev_model import REAL_SHAPES, DevModelShape, build_dev_model

    shape = REAL_SHAPES[args.config] if args.config != "dev" else DevModelShape()
    if args.layers:
        shape = replace(shape, layers=args.layers)
    config = args.config + (f"-{args.layers}l" if args.layers else "")
    work = args.work / config
    model = work / "checkpoint"
    if not (model / "config.json").exists():
        build_dev_model(model, shape)
    loads = QUICK if args.quick else FULL
    rows = []
    for variant in args.variants.split(","):
        repo = work / f"repo-{variant}"
        done = repo / NAME / "export_report.json"
        if args.reuse and done.exists():  # serve again what an earlier run exported (its export figures kept)
            earlier = json.loads(done.with_name("bench_export.json").read_text())
            row: dict[str, Any] = {"variant": variant, **earlier}
        else:
            row = {"variant": variant, **export(model, repo, variant, tuple(args.gate.split()))}
            if args.gate and "refused" not in row and quantized(variant):
                row["gate"] = args.gate
            if "refused" not in row:
                done.with_name("bench_export.json").write_text(json.dumps(row))
        if "refused" not in row:
            row |= serve_and_measure(repo, loads, work / "logs" / variant)
        rows.append(row)
        print(f"{variant}: done", file=sys.stderr, flush=True)
    where = f"{platform.machine()}, {os.cpu_count()} CPUs"
    print(f"\n{config}, {where}; facade + Triton (export defaults), gRPC Embed\n")
    names = list(loads)
    print(
        "| variant | disk MiB | export s | export peak RSS MiB | Triton RSS loaded / serving MiB | "
        + " | ".join(f"{n} tok/s" for n in names)
        + " | agreement (export gate) |"
    )
    print("|---|---|---|---|---|" + "---|" * len(names) + "---|")
    base = next((r for r in rows if "refused" not in r), None)
    mib = 2**20
    for r in rows:
        if "refused" in r:
            print(
                f"| {r['variant']} | - | {r['export_seconds']:.0f} | - | - | "
                + " | ".join("-" for _ in names)
                + f" | refused: {r['refused'][:90]} |"
            )
            continue
        assert base is not None
        speeds = " | ".join(
            f"{r[f'{n}_tokens_per_s']:.0f} ({r[f'{n}_tokens_per_s'] / base[f'{n}_tokens_per_s']:.2f}x)" for n in names
        )
        agree = ", ".join(f"{k} {v:.4f}" for k, v in r["agreement"].items())
        agree += f" (gate lowered: {r['gate']})" if "gate" in r else ""
        print(
            f"| {r['variant']} | {r['disk_bytes'] / mib:.1f} | {r['export_seconds']:.0f} | "
            f"{r['export_peak_rss'] / mib:.0f} | {r['loaded_rss'] / mib:.0f} / {r['serving_peak_rss'] / mib:.0f} | "
            f"{speeds} | {agree} |"
        )
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"quantized-service-{config}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    summary = {
        "config": config,
        "quick": args.quick,
        "loads": {k: vars(v) for k, v in loads.items()},
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
