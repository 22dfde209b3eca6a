"""Length-bucket ladders side by side: `.venv/bin/python -m benchmarks.ladders [--model dev] [--ladders 1,2,3,4]`.

One Triton, one facade per ladder (QWEN3_EMBED_BUCKETS), the same texts for every ladder; the padding ratio
(the facade's padded / real token counters) and inputs/s over gRPC per workload. Repetitions alternate the
ladder order (A B C, C B A, ...) so a drift of the shared machine does not favour one ladder. Writes
benchmarks/results/ladders-<model>-<run>.json; docs/benchmarks.md's "Length buckets" table comes from it.

A ladder is `K` (K rungs per octave, multiples of 8) or `K:A` (multiples of A); `1` is powers of two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import systems
from benchmarks.run import CACHE, ROOT, clean, log, machine, prepare_model
from devtools.bench.runner import LoadSpec
from devtools.bench.stats import padding_ratio
from devtools.bench.workload import WORKLOADS, LengthSpec, batches, make_texts, text_of
from service.contract import default_buckets


@dataclass(frozen=True)
class Load:
    texts: int
    batch: int
    concurrency: int


# Sized for a 2-core CPU: a few seconds per (ladder, workload) on the dev model; 0.6B runs ~130 padded tokens/s
# per core, so it gets mixed only, small.
LOADS: dict[str, dict[str, Load]] = {
    "dev": {
        "short": Load(1200, 1, 8),
        "mixed": Load(1024, 8, 4),
        "long": Load(32, 1, 2),
    },
    "0.6B": {"mixed": Load(24, 4, 2)},
}


def parse_ladder(spec: str) -> tuple[int, int]:
    per_octave, _, align = spec.partition(":")
    return int(per_octave), int(align or 8)


def ladder_label(per_octave: int, align: int) -> str:
    name = "powers of two" if per_octave == 1 else f"{per_octave}/octave"
    return name if align == 8 else f"{name}, x{align}"


async def warm(
    fac: systems.FacadeHandle, hidden: int, buckets: list[int], longest: int, concurrency: int, every_rung: bool
) -> None:
    """One request per rung up to the workload's longest input (or only the first rung), `concurrency` at a
    time, so every Triton instance has run once (and each shape, with every_rung) before the measured run."""
    rng = random.Random(0)
    reqs = [[text_of(b, rng)] for b in buckets if b <= max(longest, buckets[0])][: None if every_rung else 1]
    spec = LoadSpec(concurrency=concurrency, requests=len(reqs) * concurrency)
    await systems.run_grpc(fac.target, hidden, [r for r in reqs for _ in range(concurrency)], spec, warmup=0)


async def measure(
    fac: systems.FacadeHandle, hidden: int, reqs: list[list[str]], load: Load, reps: int
) -> list[dict[str, Any]]:
    out = []
    for _ in range(reps):
        real0, pad0 = systems.scrape_padding(fac.base_url)
        summary = await systems.run_grpc(
            fac.target, hidden, reqs, LoadSpec(concurrency=load.concurrency, requests=len(reqs)), warmup=0
        )
        real1, pad1 = systems.scrape_padding(fac.base_url)
        out.append({**summary.as_dict(), "padding_ratio": padding_ratio(pad1 - pad0, real1 - real0)})
    return out


def patient_repo(repo: Path) -> Path:
    """A hard-linked copy whose Triton queue timeout is 10 minutes: a slow model on a busy 2-core machine
    (0.6B: ~30 s a request) must not turn queueing into errors; it changes no throughput."""
    from export.triton_config import parse_pbtxt, to_pbtxt

    out = repo.parent / f"{repo.name}-patient"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repo, out, copy_function=os.link)
    config = out / "qwen3_embedding" / "config.pbtxt"
    cfg = parse_pbtxt(config.read_text())
    cfg.dynamic_batching.default_queue_policy.default_timeout_microseconds = 600_000_000
    config.unlink()  # a hard link: never write through it into the original
    config.write_text(to_pbtxt(cfg))
    return out


def run(
    model: str, ladders: list[tuple[int, int]], workloads: list[str], rounds: int, logs: Path, every_rung: bool
) -> dict[str, Any]:
    from benchmarks.run import model_facts
    from service.triton.runtime import start_triton

    _, base = prepare_model(model, 8192)
    repo = patient_repo(base)
    hidden, _ = model_facts(repo)
    loads = {w: LOADS[model][w] for w in workloads if w in LOADS[model]}
    requests = {w: batches(make_texts(LengthSpec(*WORKLOADS[w]), ld.texts, 0), ld.batch) for w, ld in loads.items()}
    rows: list[dict[str, Any]] = []
    triton = start_triton(repo, logs / f"triton-ladders-{model}.log")
    try:
        for rnd in range(rounds):
            order = ladders if rnd % 2 == 0 else ladders[::-1]
            for per_octave, align in order:
                buckets = default_buckets(8192, per_octave=per_octave, align=align)
                label = ladder_label(per_octave, align)
                env = {"QWEN3_EMBED_BUCKETS": ",".join(str(b) for b in buckets), "QWEN3_EMBED_DEFAULT_TIMEOUT_S": "600"}
                with systems.facade(repo, triton.grpc_url, logs, env) as fac:
                    for workload, load in loads.items():
                        if rnd == 0:
                            longest = WORKLOADS[workload][1]
                            asyncio.run(warm(fac, hidden, buckets, longest, min(load.concurrency, 2), every_rung))
                        for r in asyncio.run(measure(fac, hidden, requests[workload], load, 1)):
                            if r["ok"] != r["requests"]:
                                raise RuntimeError(f"{label} {workload}: errors {r['errors']}")
                            rows.append(
                                {
                                    "ladder": label,
                                    "per_octave": per_octave,
                                    "align": align,
                                    "rungs": len(buckets),
                                    "workload": workload,
                                    "round": rnd,
                                    **r,
                                }
                            )
                            log(
                                f"{model} round {rnd} {label:>18} {workload:>5}: {r['inputs_per_s']:8.1f} in/s, "
                                f"padding {r['padding_ratio']:.3f}, p50 {r['p50_ms']:.1f} ms"
                            )
    finally:
        triton.stop()
        shutil.rmtree(repo, ignore_errors=True)
    return {"model": model, "loads": {w: vars(ld) for w, ld in loads.items()}, "rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (ladder, workload): mean inputs/s over rounds, its ratio to powers of two, the padding ratio."""
    out: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((r["ladder"], r["workload"]) for r in rows))
    for ladder, workload in keys:
        mine = [r for r in rows if r["ladder"] == ladder and r["workload"] == workload]
        base = [r for r in rows if r["per_octave"] == 1 and r["align"] == 8 and r["workload"] == workload]
        mean = sum(r["inputs_per_s"] for r in mine) / len(mine)
        base_mean = sum(r["inputs_per_s"] for r in base) / len(base) if base else float("nan")
        out.append(
            {
                "ladder": ladder,
                "rungs": mine[0]["rungs"],
                "workload": workload,
                "padding_ratio": sum(r["padding_ratio"] for r in mine) / len(mine),
                "inputs_per_s": mean,
                "inputs_per_s_each": [float(f"{r['inputs_per_s']:.3g}") for r in mine],
                "vs_powers_of_two": mean / base_mean if base else float("nan"),
                "p50_ms": sum(r["p50_ms"] for r in mine) / len(mine),
            }
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    """docs/benchmarks.md's table for one results file."""
    lines = [
        "| ladder | rungs to 8192 | workload | padding ratio | inputs/s (mean of rounds) | x powers of two | p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in sorted(summarize(result["rows"]), key=lambda s: (s["workload"], s["rungs"], s["ladder"])):
        lines.append(
            f"| {s['ladder']} | {s['rungs']} | {s['workload']} | {s['padding_ratio']:.3f} | "
            f"{s['inputs_per_s']:.3g} ({', '.join(str(x) for x in s['inputs_per_s_each'])}) | "
            f"{s['vs_powers_of_two']:.2f} | {s['p50_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dev", choices=sorted(LOADS))
    parser.add_argument("--ladders", default="1,2,3,4,3:16", help="comma-separated K or K:A")
    parser.add_argument("--workloads", default="short,mixed,long")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all ladders (order alternates)")
    parser.add_argument(
        "--warm-first-rung-only",
        action="store_true",
        help="warm each facade with one short request, not one per rung (slow models; a rung first seen "
        "later runs no slower: benchmarks/warmup_cost.py)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0
    run_id = time.strftime("%Y%m%d-%H%M%S")
    logs = CACHE / "logs" / f"ladders-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    ladders = [parse_ladder(s) for s in args.ladders.split(",") if s.strip()]
    started = time.perf_counter()
    workloads = [w.strip() for w in args.workloads.split(",")]
    result = run(args.model, ladders, workloads, args.rounds, logs, not args.warm_first_rung_only)
    result.update(run=run_id, machine=machine(), wall_s=round(time.perf_counter() - started, 1))
    result["command"] = " ".join([".venv/bin/python -m benchmarks.ladders", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ladders-{args.model}-{run_id}.json"
    path.write_text(json.dumps(clean(result), indent=1))
    for s in result["summary"]:
        log(
            f"{s['ladder']:>18} {s['workload']:>5} rungs {s['rungs']:2d}: padding {s['padding_ratio']:.3f}, "
            f"{s['inputs_per_s']:.1f} in/s ({s['vs_powers_of_two']:.2f}x) {s['inputs_per_s_each']}"
        )
    log(f"results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
