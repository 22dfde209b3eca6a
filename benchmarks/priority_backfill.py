"""Search traffic beside a backfill: what priority classes buy (docs/benchmarks.md, "Interactive queries beside
a backfill").

    .venv/bin/python -m benchmarks.priority_backfill [--rows 12000] [--rate 5] [--seconds 20]

Exports the dev model (default settings), starts Triton, then for a facade with priority classes on (the
default) and one with them off (QWEN3_EMBED_PRIORITY_CLASSES=false: every request is interactive, as before
classes existed), on the same Triton:
1. interactive load alone: short queries (query prompt, one input each) at a fixed rate, open loop (sent on
   schedule whether or not earlier ones have answered), for --seconds -> p50 / p99;
2. `qwen3-embed index` alone, with its defaults (bulk, batch 128, concurrency 4) over --rows distinct texts of
   20-200 words -> rows/s, wall time of the whole command;
3. both at once: the same index command, with the interactive load running from 3 s after it starts (its
   start-up) until it exits -> interactive p99 and index rows/s beside each other.
Acceptance (issue 28): with classes on, interactive p99 beside the backfill <= 1.5x its p99 alone, and the
backfill keeps >= 70% of its solo rows/s. Prints a markdown table; --json prints the figures as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench" / "priority-backfill"
WORDS = ("river", "engine", "garden", "market", "winter", "signal", "harbor", "lantern", "orbit", "canyon")
INDEX_START_S = 3.0  # the index command's start-up (imports, reading the corpus) before it sends anything
MODES = {"classes on": {}, "classes off": {"QWEN3_EMBED_PRIORITY_CLASSES": "false"}}


@dataclass
class Mode:
    name: str
    alone_p50_ms: float
    alone_p99_ms: float
    beside_p50_ms: float
    beside_p99_ms: float
    beside_samples: int
    interactive_errors: int
    solo_rows_per_s: float
    beside_rows_per_s: float

    @property
    def p99_ratio(self) -> float:
        return self.beside_p99_ms / self.alone_p99_ms

    @property
    def backfill_share(self) -> float:
        return self.beside_rows_per_s / self.solo_rows_per_s

    @property
    def accepted(self) -> bool:
        return self.p99_ratio <= 1.5 and self.backfill_share >= 0.7

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "p99_ratio": self.p99_ratio, "backfill_share": self.backfill_share}


def corpus(path: Path, rows: int, seed: int = 0) -> None:
    """Distinct document-like texts of 20-200 words (no duplicates: `index` would embed those once)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(rows):
            text = f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200)))
            f.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")


def percentile(values: list[float], q: float) -> float:
    from devtools.bench.stats import percentile as pct

    return pct(values, q)


async def interactive_load(target: str, rate: float, until: Any) -> tuple[list[float], int]:
    """Short queries at `rate` per second, open loop, until `until()` is true: latencies (s) and errors."""
    import grpc

    from service.gen.embedding.v1 import embedding_pb2 as pb
    from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc

    latencies: list[float] = []
    errors = 0
    rng = random.Random(1)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        await stub.Embed(pb.EmbedRequest(inputs=["warm up"], prompt_name="query"), timeout=30)

        async def one(text: str) -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                await stub.Embed(pb.EmbedRequest(inputs=[text], prompt_name="query"), timeout=30)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                errors += 1

        tasks = []
        start, sent = time.perf_counter(), 0
        while not until():
            tasks.append(asyncio.create_task(one(f"how does a {rng.choice(WORDS)} {rng.choice(WORDS)} work")))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    return latencies, errors


def start_index(target: str, corpus_path: Path, out: Path) -> subprocess.Popen[bytes]:
    for stale in (out, out.with_name(out.name + ".parts")):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    command = [sys.executable, "-m", "service.cli", "index", str(corpus_path), str(out), "--target", target]
    return subprocess.Popen([*command, "--no-progress"], cwd=ROOT, stdout=subprocess.DEVNULL)


def run_index(target: str, corpus_path: Path, out: Path) -> float:
    """Wall seconds of one whole index command."""
    started = time.perf_counter()
    process = start_index(target, corpus_path, out)
    if process.wait() != 0:
        raise RuntimeError(f"qwen3-embed index failed ({process.returncode})")
    return time.perf_counter() - started


def measure(
    name: str, target: str, work: Path, rows: int, rate: float, seconds: float, index_start_s: float = INDEX_START_S
) -> Mode:
    corpus_path, out = work / "corpus.jsonl", work / "out.parquet"
    ends = time.perf_counter() + seconds
    alone, errors = asyncio.run(interactive_load(target, rate, lambda: time.perf_counter() >= ends))
    solo_s = run_index(target, corpus_path, out)
    started = time.perf_counter()
    process = start_index(target, corpus_path, out)
    time.sleep(index_start_s)
    beside, more_errors = asyncio.run(interactive_load(target, rate, lambda: process.poll() is not None))
    if process.wait() != 0:
        raise RuntimeError(f"qwen3-embed index failed ({process.returncode})")
    beside_s = time.perf_counter() - started
    return Mode(
        name=name,
        alone_p50_ms=percentile(alone, 50) * 1000,
        alone_p99_ms=percentile(alone, 99) * 1000,
        beside_p50_ms=percentile(beside, 50) * 1000,
        beside_p99_ms=percentile(beside, 99) * 1000,
        beside_samples=len(beside),
        interactive_errors=errors + more_errors,
        solo_rows_per_s=rows / solo_s,
        beside_rows_per_s=rows / beside_s,
    )


def run(
    repo: Path,
    triton_url: str,
    work: Path,
    rows: int,
    rate: float,
    seconds: float,
    index_start_s: float = INDEX_START_S,
) -> list[Mode]:
    """Both modes against a running Triton serving `repo` (the smoke test passes the session's)."""
    from devtools.launch import launch_facade

    work.mkdir(parents=True, exist_ok=True)
    corpus(work / "corpus.jsonl", rows)
    results = []
    for name, env in MODES.items():
        with launch_facade(repo, triton_url, work, env=env) as facade:
            results.append(measure(name, facade.target, work, rows, rate, seconds, index_start_s))
    return results


def table(modes: list[Mode], rows: int, rate: float) -> str:
    lines = [
        f"dev model, interactive: 1 short query at {rate:g}/s; backfill: `qwen3-embed index` defaults over {rows} "
        f"texts of 20-200 words; {platform.machine()}, {os.cpu_count()} cores",
        "| facade | interactive p50 / p99 alone | p50 / p99 beside index | p99 ratio | index alone | index beside "
        "| share |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in modes:
        lines.append(
            f"| {m.name} | {m.alone_p50_ms:.1f} / {m.alone_p99_ms:.1f} ms | {m.beside_p50_ms:.1f} / "
            f"{m.beside_p99_ms:.1f} ms | {m.p99_ratio:.2f}x | {m.solo_rows_per_s:.0f} rows/s | "
            f"{m.beside_rows_per_s:.0f} rows/s | {m.backfill_share:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--rate", type=float, default=5.0, help="Interactive queries per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="Interactive load alone, seconds")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from service.triton.runtime import start_triton

    args.work.mkdir(parents=True, exist_ok=True)
    from benchmarks.index_throughput import prepare  # the dev model exported with the defaults, once per work dir

    repo = prepare(args.work)
    triton = start_triton(repo, args.work / "triton.log")
    try:
        modes = run(repo, triton.grpc_url, args.work, args.rows, args.rate, args.seconds)
    finally:
        triton.stop()
    if args.json:
        print(json.dumps([m.as_dict() for m in modes]))
        return
    print(table(modes, args.rows, args.rate))
    on = modes[0]
    print(
        f"acceptance (classes on): p99 ratio {on.p99_ratio:.2f} <= 1.5, backfill share {on.backfill_share:.0%} "
        f">= 70%: {'met' if on.accepted else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
