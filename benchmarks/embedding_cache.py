"""Issue 28's cache acceptance in one run, dev model, one Triton: a repeated-query workload (single-query gRPC
requests, query ranks drawn from a Zipf law over a fixed query set) against a facade with the embedding cache
off and one with it on, side by side (runs in A B B A order, both facades up the whole time), then a flood of
unique texts against both while their resident memory is sampled.

    .venv/bin/python -m benchmarks.embedding_cache [--duration 15] [--concurrency 8] [--cache-mib 16]

Asserted in the run (it exits non-zero otherwise), never timed: every vector the cached facade returns equals
the uncached facade's for the same query within float32 noise of different batch shapes (max |diff| <= 1e-5,
cosine >= 0.99999), repeated answers from the cache are bit for bit the same, and under the flood the cache's
charged bytes stay under the configured bound, with evictions, and so does the cached facade's resident-memory
growth beyond the uncached one's under the same flood (both growths are reported). Prints a markdown table; writes
benchmarks/results/embedding-cache-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
import numpy as np
import psutil

from benchmarks import systems
from devtools.bench.runner import LoadSpec
from devtools.bench.workload import LengthSpec, batches, make_texts

ROOT = Path(__file__).resolve().parent.parent
OFF, ON = "cache off", "cache on"


def zipf_requests(queries: list[str], count: int, s: float, seed: int) -> list[list[str]]:
    """`count` single-query requests, the query of rank k drawn with probability proportional to 1 / k**s."""
    weights = 1.0 / np.arange(1, len(queries) + 1) ** s
    ranks = np.random.default_rng(seed).choice(len(queries), size=count, p=weights / weights.sum())
    return [[queries[int(r)]] for r in ranks]


def scrape(base_url: str) -> dict[str, float]:
    """The facade's qwen3_embed_cache_* series (absent: cache off)."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^qwen3_embed_(cache_\w+?)(?:_total)? (\S+)$", text, re.M)}


def fetch(target: str, texts: list[str], batch: int = 64) -> np.ndarray:
    from service.gen.embedding.v1 import embedding_pb2 as pb
    from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc

    rows: list[list[float]] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        for part in (texts[i : i + batch] for i in range(0, len(texts), batch)):
            rows.extend(list(e.values) for e in stub.Embed(pb.EmbedRequest(inputs=part), timeout=120).embeddings)
    return np.array(rows, dtype=np.float32)


@contextmanager
def rss_sampler(pid: int, interval_s: float = 0.1) -> Iterator[list[int]]:
    """Samples the process's resident set size until the block ends; yields the list being filled."""
    samples: list[int] = []
    done = threading.Event()
    proc = psutil.Process(pid)

    def loop() -> None:
        while not done.is_set():
            samples.append(proc.memory_info().rss)
            done.wait(interval_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        samples.append(proc.memory_info().rss)


async def flood(target: str, hidden: int, texts: list[str], concurrency: int) -> float:
    spec = LoadSpec(concurrency=concurrency, requests=len(texts) // 32)
    return (await systems.run_grpc(target, hidden, batches(texts, 32), spec, warmup=0)).inputs_per_s


def measure(
    repo: Path,
    triton_url: str,
    logs: Path,
    duration: float,
    concurrency: int,
    cache_bytes: int,
    queries: int,
    zipf_s: float,
    flood_texts: int,
) -> dict[str, Any]:
    from benchmarks.facade_throughput import buckets_of

    _, hidden, _ = buckets_of(repo)  # the model named benchmarks.facade_throughput.MODEL
    query_set = make_texts(LengthSpec(8, 32), queries, seed=11)
    requests = zipf_requests(query_set, 50_000, zipf_s, seed=12)
    envs = {OFF: {}, ON: {"QWEN3_EMBED_EMBEDDING_CACHE_BYTES": str(cache_bytes)}}
    runs: dict[str, list[dict[str, float]]] = {OFF: [], ON: []}
    with (
        systems.facade(repo, triton_url, logs, {"QWEN3_EMBED_WORKERS": "1", **envs[OFF]}) as off,
        systems.facade(repo, triton_url, logs, {"QWEN3_EMBED_WORKERS": "1", **envs[ON]}) as on,
    ):
        handles = {OFF: off, ON: on}
        for label in (OFF, ON, ON, OFF):
            spec = LoadSpec(concurrency=concurrency, duration_s=duration)
            before = scrape(handles[label].base_url)
            s = asyncio.run(systems.run_grpc(handles[label].target, hidden, requests, spec, warmup=0))
            after = scrape(handles[label].base_url)
            if s.ok != s.requests:
                raise SystemExit(f"{label}: {s.requests - s.ok} of {s.requests} requests failed: {s.errors}")
            hits = after.get("cache_hits", 0.0) - before.get("cache_hits", 0.0)
            misses = after.get("cache_misses", 0.0) - before.get("cache_misses", 0.0)
            ratio = hits / (hits + misses) if hits + misses else 0.0
            row = {"inputs_per_s": s.inputs_per_s, "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "hit_ratio": ratio}
            runs[label].append({**row, "requests": s.requests})
            print(
                f"  {label}: {s.inputs_per_s:.0f} queries/s, p50 {s.p50_ms:.2f} ms, "
                f"hit ratio {runs[label][-1]['hit_ratio']:.3f}",
                flush=True,
            )

        # Equality: every query of the set, from both facades (the cached one answers most from its entries).
        cached_first, cached_again = fetch(on.target, query_set), fetch(on.target, query_set)
        plain = fetch(off.target, query_set)
        if not np.array_equal(cached_first, cached_again):
            raise SystemExit("the cache answered one query with two different vectors")
        diff = float(np.abs(cached_first - plain).max())
        cos = np.sum(cached_first * plain, axis=1) / (
            np.linalg.norm(cached_first, axis=1) * np.linalg.norm(plain, axis=1)
        )
        if diff > 1e-5 or float(cos.min()) < 0.99999:
            raise SystemExit(f"cached vectors differ from uncached ones: max |diff| {diff}, min cosine {cos.min()}")
        identical = int(np.all(cached_first == plain, axis=1).sum())

        # Memory: unique texts, several times what the bound holds, through both facades.
        unique = make_texts(LengthSpec(8, 32), flood_texts, seed=13)
        memory: dict[str, dict[str, float]] = {}
        for label, handle in handles.items():
            pid = handle.process.pid  # type: ignore[attr-defined]
            base = psutil.Process(pid).memory_info().rss
            with rss_sampler(pid) as samples:
                rate = asyncio.run(flood(handle.target, hidden, unique, concurrency))
            after = scrape(handle.base_url)
            memory[label] = {
                "rss_before_mib": base / 2**20,
                "rss_peak_mib": max(samples) / 2**20,
                "growth_mib": (max(samples) - base) / 2**20,
                "flood_inputs_per_s": rate,
                "cache_bytes_mib": after.get("cache_bytes", 0.0) / 2**20,
                "evictions": after.get("cache_evictions", 0.0),
            }
            print(f"  flood, {label}: {memory[label]}", flush=True)
    # The cache's share of the growth: the cached facade's less what the same flood costs the uncached one
    # (received messages, allocator high-water marks), which is no part of the cache.
    growth = (memory[ON]["growth_mib"] - max(memory[OFF]["growth_mib"], 0.0)) * 2**20
    if growth > cache_bytes:
        raise SystemExit(f"the cache grew the facade by {growth / 2**20:.1f} MiB, bound {cache_bytes / 2**20:.1f} MiB")
    if memory[ON]["cache_bytes_mib"] * 2**20 > cache_bytes or memory[ON]["evictions"] <= 0:
        raise SystemExit(f"the cache did not hold its bound under the flood: {memory[ON]}")
    mean = {label: sum(r["inputs_per_s"] for r in rs) / len(rs) for label, rs in runs.items()}
    return {
        "runs": runs,
        "throughput_ratio_on_over_off": mean[ON] / mean[OFF],
        "equality": {
            "queries": len(query_set),
            "max_abs_diff": diff,
            "min_cosine": float(cos.min()),
            "bit_identical": identical,
        },
        "memory": memory,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run (4 runs)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cache-mib", type=int, default=16, help="the cached facade's embedding_cache_bytes")
    parser.add_argument("--queries", type=int, default=1000, help="distinct queries the Zipf law draws from")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s")
    parser.add_argument("--flood", type=int, default=60_000, help="unique texts sent to each facade")
    args = parser.parse_args(argv)
    from benchmarks.facade_throughput import prepare
    from service.triton.runtime import start_triton

    repo = prepare()
    logs = ROOT / ".cache" / "bench" / "embedding-cache" / "logs"
    triton = start_triton(repo, logs / "triton.log")
    try:
        result = measure(
            repo,
            triton.grpc_url,
            logs,
            args.duration,
            args.concurrency,
            args.cache_mib << 20,
            args.queries,
            args.zipf,
            args.flood,
        )
    finally:
        triton.stop()
    print("\n| facade | run | queries/s | p50 ms | p99 ms | hit ratio |\n|---|---|---|---|---|---|")
    for label, rs in result["runs"].items():
        for i, r in enumerate(rs):
            print(
                f"| {label} | {i + 1} | {r['inputs_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {r['hit_ratio']:.3f} |"
            )
    print(f"\nthroughput, cache on / off (mean of 2 runs each): {result['throughput_ratio_on_over_off']:.2f}x")
    print(f"equality: {result['equality']}")
    print("\n| facade | RSS before MiB | peak MiB | growth MiB | cache MiB | evictions |\n|---|---|---|---|---|---|")
    for label, m in result["memory"].items():
        print(
            f"| {label} | {m['rss_before_mib']:.1f} | {m['rss_peak_mib']:.1f} | {m['growth_mib']:.1f} "
            f"| {m['cache_bytes_mib']:.1f} | {m['evictions']:.0f} |"
        )
    out = ROOT / "benchmarks" / "results" / f"embedding-cache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    out.write_text(json.dumps({"machine": machine, "args": vars(args), **result}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
