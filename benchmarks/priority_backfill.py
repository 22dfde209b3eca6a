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
With --direct, the floor under the facade: the same rate of pre-tokenized one-row calls straight to Triton (no
facade), alone after step 1 and beside the backfill next to the facade's queries (which keep the classes engaged),
-> Triton's own p99 alone and beside the backfill.
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
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from export.triton_config import DEFAULT_NAMES
from service.contract import ModelKind

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench" / "priority-backfill"
WORDS = ("river", "engine", "garden", "market", "winter", "signal", "harbor", "lantern", "orbit", "canyon")
INDEX_START_S = 3.0  # the index command's start-up (imports, reading the corpus) before it sends anything
MODEL = DEFAULT_NAMES[ModelKind.EMBEDDING]  # the name the export gives the dev model (the service's default)
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
    # --direct: one-row calls straight to Triton, same rate (None: not measured)
    direct_alone_p99_ms: float | None = None
    direct_beside_p99_ms: float | None = None

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


async def paced(
    send: Callable[[], Awaitable[object]], rate: float, until: Any, errors: tuple[type[BaseException], ...]
) -> tuple[list[float], int]:
    """`send()` at `rate` per second, open loop (on schedule whether or not earlier ones have answered), until
    `until()` is true: latencies (s) of the answered ones and the count of those that raised one of `errors`."""
    latencies: list[float] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        started = time.perf_counter()
        try:
            await send()
            latencies.append(time.perf_counter() - started)
        except errors:
            failed += 1

    tasks = []
    start, sent = time.perf_counter(), 0
    while not until():
        tasks.append(asyncio.create_task(one()))
        sent += 1
        await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    return latencies, failed


async def interactive_load(target: str, rate: float, until: Any) -> tuple[list[float], int]:
    """Short queries through the facade at `rate` per second, open loop, until `until()` is true: latencies (s)
    and errors."""
    import grpc

    from service.gen.embedding.v1 import embedding_pb2 as pb
    from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc

    rng = random.Random(1)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        await stub.Embed(pb.EmbedRequest(inputs=["warm up"], prompt_name="query"), timeout=30)

        def query() -> Awaitable[object]:
            text = f"how does a {rng.choice(WORDS)} {rng.choice(WORDS)} work"
            return stub.Embed(pb.EmbedRequest(inputs=[text], prompt_name="query"), timeout=30)

        return await paced(query, rate, until, (grpc.aio.AioRpcError,))


# A query as the facade sends it: 32 ids (the query instruction and a short question fill one 32-token bucket).
DIRECT_IDS = [9707 + i for i in range(31)] + [151643]


async def direct_load(triton_url: str, model: str, rate: float, until: Any) -> tuple[list[float], int]:
    """Pre-tokenized one-row calls straight to Triton at `rate` per second (interactive level, Triton's
    default), open loop, until `until()` is true: latencies (s) and errors. What the facade adds nothing to:
    the floor of its own latency."""
    import numpy as np
    import tritonclient.grpc as triton_grpc
    import tritonclient.grpc.aio as triton_aio
    from tritonclient.utils import InferenceServerException

    ids = np.array([DIRECT_IDS], dtype=np.int64)
    inputs = [triton_grpc.InferInput(name, list(ids.shape), "INT64") for name in ("input_ids", "attention_mask")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(np.ones_like(ids))
    client = triton_aio.InferenceServerClient(triton_url)
    try:
        # client_timeout is in seconds; `timeout` would be Triton's own queue timeout, in microseconds
        return await paced(
            lambda: client.infer(model, inputs, client_timeout=30), rate, until, (InferenceServerException,)
        )
    finally:
        await client.close()


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
    name: str,
    target: str,
    work: Path,
    rows: int,
    rate: float,
    seconds: float,
    index_start_s: float = INDEX_START_S,
    direct: tuple[str, str] | None = None,
) -> Mode:
    """One facade's figures; `direct` = (Triton's gRPC address, model name) adds Triton's own p99."""
    corpus_path, out = work / "corpus.jsonl", work / "out.parquet"
    ends = time.perf_counter() + seconds
    alone, errors = asyncio.run(interactive_load(target, rate, lambda: time.perf_counter() >= ends))
    direct_alone: list[float] = []
    if direct:
        ends = time.perf_counter() + seconds
        direct_alone, direct_errors = asyncio.run(direct_load(*direct, rate, lambda: time.perf_counter() >= ends))
        errors += direct_errors
    solo_s = run_index(target, corpus_path, out)
    started = time.perf_counter()
    process = start_index(target, corpus_path, out)
    time.sleep(index_start_s)

    def exited() -> bool:
        return process.poll() is not None

    async def beside_index() -> list[tuple[list[float], int]]:
        loads = [interactive_load(target, rate, exited)]
        if direct:
            loads.append(direct_load(*direct, rate, exited))
        return await asyncio.gather(*loads)

    (beside, more_errors), *direct_beside = asyncio.run(beside_index())
    if process.wait() != 0:
        raise RuntimeError(f"qwen3-embed index failed ({process.returncode})")
    beside_s = time.perf_counter() - started
    direct_figures = {}
    if direct_beside:
        latencies, direct_errors = direct_beside[0]
        more_errors += direct_errors
        direct_figures = {
            "direct_alone_p99_ms": percentile(direct_alone, 99) * 1000,
            "direct_beside_p99_ms": percentile(latencies, 99) * 1000,
        }
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
        **direct_figures,
    )


def run(
    repo: Path,
    triton_url: str,
    work: Path,
    rows: int,
    rate: float,
    seconds: float,
    index_start_s: float = INDEX_START_S,
    direct_model: str | None = None,
) -> list[Mode]:
    """Both modes against a running Triton serving `repo` (the smoke test passes the session's); `direct_model`
    (the embedding model's name) adds Triton's own p99 (--direct)."""
    from devtools.launch import launch_facade

    work.mkdir(parents=True, exist_ok=True)
    corpus(work / "corpus.jsonl", rows)
    results = []
    for name, env in MODES.items():
        with launch_facade(repo, triton_url, work, env=env) as facade:
            direct = (triton_url, direct_model) if direct_model else None
            results.append(measure(name, facade.target, work, rows, rate, seconds, index_start_s, direct))
    return results


def table(modes: list[Mode], rows: int, rate: float) -> str:
    lines = [
        f"dev model, interactive: 1 short query at {rate:g}/s; backfill: `qwen3-embed index` defaults over {rows} "
        f"texts of 20-200 words; {platform.machine()}, {os.cpu_count()} cores",
        "| facade | interactive p50 / p99 alone | p50 / p99 beside index | p99 ratio | index alone | index beside "
        "| share |",
        "|---|---|---|---|---|---|---|",
    ]
    if any(m.direct_beside_p99_ms is not None for m in modes):
        lines[1] += " Triton direct p99 alone / beside |"
        lines[2] += "---|"
    for m in modes:
        direct = ""
        if m.direct_alone_p99_ms is not None and m.direct_beside_p99_ms is not None:
            direct = f" {m.direct_alone_p99_ms:.1f} / {m.direct_beside_p99_ms:.1f} ms |"
        lines.append(
            f"| {m.name} | {m.alone_p50_ms:.1f} / {m.alone_p99_ms:.1f} ms | {m.beside_p50_ms:.1f} / "
            f"{m.beside_p99_ms:.1f} ms | {m.p99_ratio:.2f}x | {m.solo_rows_per_s:.0f} rows/s | "
            f"{m.beside_rows_per_s:.0f} rows/s | {m.backfill_share:.0%} |{direct}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--rate", type=float, default=5.0, help="Interactive queries per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="Interactive load alone, seconds")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--direct", action="store_true", help="Also the same rate of one-row calls straight to Triton: its own p99"
    )
    args = parser.parse_args()
    from service.triton.runtime import start_triton

    args.work.mkdir(parents=True, exist_ok=True)
    from benchmarks.index_throughput import prepare  # the dev model exported with the defaults, once per work dir

    repo = prepare(args.work)
    triton = start_triton(repo, args.work / "triton.log")
    try:
        direct_model = MODEL if args.direct else None
        modes = run(repo, triton.grpc_url, args.work, args.rows, args.rate, args.seconds, direct_model=direct_model)
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
