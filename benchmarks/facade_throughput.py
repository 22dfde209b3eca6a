"""Issue 15's ratios in one run, dev model, default settings: the facade against direct Triton calls on the same
texts and the same Triton (short workload, a concurrency sweep, best point of each), its added p50 at concurrency
1, HTTP against gRPC, the default (auto) worker count against 2 workers, and the mixed workload's padding with
the default ladder against powers of two. With --long, also the long workload (1k-4k tokens) through the
service against sentence-transformers in process (torch SDPA), the same texts (issue 10's acceptance).

    .venv/bin/python -m benchmarks.facade_throughput [--duration 8] [--concurrency 1,4,8,16,32] [--connections 4]

Direct Triton gets pre-tokenized, pre-padded requests (what the facade adds is the whole difference). The
facade's gRPC client opens `--connections` connections (several workers share the port: the kernel spreads
connections, not requests). Prints markdown tables; writes benchmarks/results/facade-throughput-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from benchmarks import systems
from devtools.bench.runner import LoadSpec
from devtools.bench.stats import Summary, padding_ratio
from devtools.bench.workload import LengthSpec, batches, make_texts

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench" / "facade-throughput"
MODEL = "qwen3_embedding"


def prepare() -> Path:
    """The dev model exported with today's defaults (cached per source revision of the export code)."""
    ckpt, repo = WORK / "dev-ckpt", WORK / "model_repository"
    cli = [sys.executable, "-m", "service.cli"]
    import subprocess

    if not (ckpt / "config.json").exists():
        subprocess.run([*cli, "dev-model", "--output", str(ckpt)], check=True, capture_output=True)
    if not (repo / MODEL / "config.pbtxt").exists():
        subprocess.run(
            [*cli, "export", "--model", str(ckpt), "--output", str(repo), "--verify-long-tokens", "256"],
            check=True,
            capture_output=True,
        )
    return repo


def buckets_of(repo: Path) -> tuple[list[int], int, int]:
    from export.triton_config import parse_pbtxt
    from service.contract import ModelInfo
    from service.pipeline.inference import resolve_buckets

    info = ModelInfo.from_triton_config(parse_pbtxt((repo / MODEL / "config.pbtxt").read_text()))
    return resolve_buckets([], info.max_input_tokens, info.length_buckets), info.hidden_size, info.max_batch_size


def best(points: list[dict[str, Any]], system: str) -> dict[str, Any]:
    return max((p for p in points if p["system"] == system), key=lambda p: p["inputs_per_s"])


def point(system: str, concurrency: int, summary: Summary, **extra: Any) -> dict[str, Any]:
    d = summary.as_dict()
    return {
        "system": system,
        "concurrency": concurrency,
        **{k: d[k] for k in ("inputs_per_s", "p50_ms", "p99_ms", "ok")},
        **extra,
    }


async def sweep(
    repo: Path, triton_url: str, concurrencies: list[int], duration: float, connections: int, logs: Path
) -> list[dict[str, Any]]:
    from devtools.bench.clients import http_info

    ladder, hidden, max_rows = buckets_of(repo)
    texts = make_texts(LengthSpec(8, 32), 512, seed=0)
    reqs = batches(texts, 1)
    plans = systems.plan_requests(reqs, systems.Tokenize(repo / MODEL), ladder, 16384, max_rows)
    points: list[dict[str, Any]] = []
    # label: (environment, which APIs to load). The h11 facade is the HTTP parser before httptools (A/B).
    facades: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
        "facade (workers auto)": ({}, ("gRPC", "HTTP")),
        # auto is 1 here (2 cores, Triton beside them): 2 workers, to show why.
        "facade (2 workers)": ({"QWEN3_EMBED_WORKERS": "2"}, ("gRPC", "HTTP")),
        "facade (workers auto, h11 parser)": ({"QWEN3_EMBED_HTTP_PARSER": "h11"}, ("HTTP",)),
    }
    for label, (env, apis) in facades.items():
        with systems.facade(repo, triton_url, logs, {"QWEN3_EMBED_WORKERS": "0", **env}) as fac:
            model = (await http_info(fac.base_url))["model"]
            for c in concurrencies:
                spec = LoadSpec(concurrency=c, duration_s=duration)
                if label.endswith("auto)"):  # direct Triton once, interleaved with the default facade
                    direct = await systems.run_direct_triton(triton_url, MODEL, hidden, plans, spec)
                    points.append(point("direct Triton", c, direct))
                if "gRPC" in apis:
                    g = await systems.run_grpc(fac.target, hidden, reqs, spec, warmup=8, connections=connections)
                    points.append(point(f"{label} gRPC", c, g, connections=connections))
                if "HTTP" in apis:
                    h, _ = await systems.run_http(fac.base_url, model, hidden, reqs, spec)
                    points.append(point(f"{label} HTTP", c, h))
                print(
                    f"  c={c:>3} {label}: "
                    + ", ".join(
                        f"{p['system']} {p['inputs_per_s']:.0f}/s p50 {p['p50_ms']:.2f} ms"
                        for p in points
                        if p["concurrency"] == c and (label in p["system"] or p["system"] == "direct Triton")
                    ),
                    flush=True,
                )
    return points


async def padding(repo: Path, triton_url: str, logs: Path, duration: float) -> list[dict[str, Any]]:
    """Mixed workload (8-512 tokens, batch 8, concurrency 4): the default ladder vs powers of two, in A B B A
    order (the machine drifts between runs more than the ladders differ), each ladder's mean of its two runs."""
    _, hidden, _ = buckets_of(repo)
    reqs = batches(make_texts(LengthSpec(8, 512), 256, seed=1), 8)
    powers = ",".join(str(16 << i) for i in range(12) if 16 << i < 32768) + ",32768"
    ladders = {"default ladder": {}, "powers of two": {"QWEN3_EMBED_BUCKETS": powers}}
    runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in ladders}
    for label in ("default ladder", "powers of two", "powers of two", "default ladder"):
        with systems.facade(repo, triton_url, logs, {"QWEN3_EMBED_WORKERS": "1", **ladders[label]}) as fac:
            await systems.run_grpc(fac.target, hidden, reqs[:8], LoadSpec(concurrency=4, requests=8), warmup=0)
            real0, pad0 = systems.scrape_padding(fac.base_url)
            s = await systems.run_grpc(fac.target, hidden, reqs, LoadSpec(concurrency=4, duration_s=duration), warmup=0)
            real1, pad1 = systems.scrape_padding(fac.base_url)
        runs[label].append((real1 - real0, pad1 - pad0, s.inputs_per_s))
        print(f"  mixed, {label}: padding {padding_ratio(pad1 - pad0, real1 - real0):.3f}, "
              f"{s.inputs_per_s:.1f} inputs/s", flush=True)  # fmt: skip
    return [
        {
            "ladder": label,
            "padding_ratio": padding_ratio(sum(r[1] for r in rs), sum(r[0] for r in rs)),
            "inputs_per_s": sum(r[2] for r in rs) / len(rs),
            "runs_inputs_per_s": [r[2] for r in rs],
        }
        for label, rs in runs.items()
    ]


LONG = LengthSpec(1024, 4096)


async def long_service(repo: Path, triton_url: str, logs: Path, texts: list[str]) -> Summary:
    """The long workload through the facade: batch 1, concurrency 2 (as benchmarks/run.py's long workload)."""
    _, hidden, _ = buckets_of(repo)
    with systems.facade(repo, triton_url, logs, {"QWEN3_EMBED_WORKERS": "0"}) as fac:
        return await systems.run_grpc(
            fac.target, hidden, batches(texts, 1), LoadSpec(concurrency=2, requests=len(texts))
        )


def long_reference(texts: list[str], tokens: list[int]) -> Summary:
    """sentence-transformers with the checkpoint's configuration, in process, after Triton has stopped."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(WORK / "dev-ckpt"), device="cpu")
    model.max_seq_length = 32768
    systems.run_sentence_transformers(model, [texts[:1]], tokens[:1])
    return systems.run_sentence_transformers(model, batches(texts, 1), tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per system and concurrency")
    parser.add_argument("--concurrency", default="1,4,8,16,32")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--long", type=int, default=0, help="also N long texts (1k-4k tokens) vs sentence-transformers")
    parser.add_argument("--only-long", action="store_true", help="the long comparison alone")
    args = parser.parse_args(argv)
    from service.triton.runtime import start_triton

    repo = prepare()
    logs = WORK / "logs"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    long_texts = make_texts(LONG, args.long or 8, seed=2) if (args.long or args.only_long) else []
    triton = start_triton(repo, logs / "triton.log")
    try:
        long_facade = asyncio.run(long_service(repo, triton.grpc_url, logs, long_texts)) if long_texts else None
        if not args.only_long:
            points = asyncio.run(sweep(repo, triton.grpc_url, concurrencies, args.duration, args.connections, logs))
            pads = asyncio.run(padding(repo, triton.grpc_url, logs, args.duration))
    finally:
        triton.stop()
    long_rows: dict[str, Any] = {}
    if long_facade is not None:
        tokens = [len(ids) for ids in systems.Tokenize(repo / MODEL).ids(long_texts)]
        reference = long_reference(long_texts, tokens)
        long_rows = {
            "texts": len(long_texts),
            "tokens": sum(tokens),
            "facade gRPC inputs/s": long_facade.inputs_per_s,
            "sentence-transformers inputs/s": reference.inputs_per_s,
            "ratio": long_facade.inputs_per_s / reference.inputs_per_s,
        }
        print(f"\nlong workload ({len(long_texts)} texts, {sum(tokens)} tokens): " + json.dumps(long_rows))
    if args.only_long:
        out = ROOT / "benchmarks" / "results" / f"long-workload-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps({"args": vars(args), "long": long_rows}, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
        return 0

    direct, grpc_best = best(points, "direct Triton"), best(points, "facade (workers auto) gRPC")
    http_best, two_best = best(points, "facade (workers auto) HTTP"), best(points, "facade (2 workers) gRPC")
    at1 = {p["system"]: p["p50_ms"] for p in points if p["concurrency"] == 1}
    ratios = {
        "facade gRPC / direct Triton (best concurrency each)": grpc_best["inputs_per_s"] / direct["inputs_per_s"],
        "added p50 at concurrency 1, gRPC (ms)": at1["facade (workers auto) gRPC"] - at1["direct Triton"],
        "facade HTTP / facade gRPC (best each)": http_best["inputs_per_s"] / grpc_best["inputs_per_s"],
        "workers auto / 2 workers, gRPC (best each)": grpc_best["inputs_per_s"] / two_best["inputs_per_s"],
        "HTTP, httptools / h11 parser (best each)": http_best["inputs_per_s"]
        / best(points, "facade (workers auto, h11 parser) HTTP")["inputs_per_s"],
        "mixed padding ratio, default ladder": pads[0]["padding_ratio"],
        "mixed inputs/s, default ladder / powers of two": pads[0]["inputs_per_s"] / pads[1]["inputs_per_s"],
    }
    print("\n| system | concurrency | inputs/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for p in points:
        print(
            f"| {p['system']} | {p['concurrency']} | {p['inputs_per_s']:.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} |"
        )
    print("\n| ratio | value |\n|---|---|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "args": vars(args),
        "points": points,
        "padding": pads,
        "ratios": ratios,
        "long": long_rows,
    }
    out = ROOT / "benchmarks" / "results" / f"facade-throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
