"""One command, one run: `.venv/bin/python -m benchmarks.run [--smoke] [--models dev,0.6B]`.

Builds and exports the models it needs (cached under .cache/bench), starts Triton and the facade, measures
every system on the same texts, writes benchmarks/results/<run>.json and, unless --no-doc, regenerates
docs/benchmarks.md and docs/img/*.png. Sizes live in `Sizes` so a smoke run takes seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from benchmarks import systems
from devtools.bench.runner import LoadSpec
from devtools.bench.stats import Summary, padding_ratio, ratio
from devtools.bench.workload import WORKLOADS, LengthSpec, batches, make_texts, text_of

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
INFINITY_PYTHON = ROOT / ".cache" / "peers" / "infinity" / "bin" / "python"


@dataclass(frozen=True)
class WorkloadSize:
    texts: int
    batch: int
    concurrency: int


@dataclass(frozen=True)
class Sizes:
    """Everything that decides how long a run takes."""

    max_tokens: int = 8192
    workloads: dict[str, WorkloadSize] = field(default_factory=dict)
    sweep_concurrency: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    sweep_workload: str = "short"
    sweep_requests: int = 300
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    length_requests: int = 5
    st: bool = True
    peers: bool = True
    tuning: bool = False
    tuning_variants: tuple[str, ...] = ()  # labels from tuning_variants(); empty: all
    tuning_workloads: tuple[str, ...] = ("mixed", "short")
    best_batch_tokens: int = 16384  # cap on batch x length for the "best batch" length points


DEV_FULL = Sizes(
    workloads={
        "short": WorkloadSize(400, 1, 8),
        "mixed": WorkloadSize(128, 8, 4),
        "long": WorkloadSize(8, 1, 2),
    },
    length_requests=2,
    tuning=True,
)
# 0.6B fp32 on 2 CPU cores runs ~130 padded tokens/s: small counts; no separate long workload (the length
# sweep's 1024-token point stands for it); lengths to 1024 only.
REAL_FULL = Sizes(
    workloads={"short": WorkloadSize(12, 1, 2), "mixed": WorkloadSize(16, 4, 2)},
    sweep_concurrency=(1, 4),
    sweep_workload="mixed",
    sweep_requests=4,
    lengths=(16, 64, 256, 1024),
    length_requests=1,
    best_batch_tokens=1024,
    tuning=True,
    tuning_variants=("default", "buckets powers of two"),
    tuning_workloads=("mixed",),
)
SMOKE = Sizes(
    max_tokens=512,
    workloads={"short": WorkloadSize(16, 1, 2), "mixed": WorkloadSize(16, 4, 2)},
    sweep_concurrency=(1, 2),
    sweep_requests=8,
    lengths=(16, 128),
    length_requests=2,
    st=False,
    peers=False,
)


# -- models --------------------------------------------------------------------------------------------


def run_cmd(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, check=False).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); see {log}")


def prepare_model(name: str, max_tokens: int) -> tuple[Path, Path]:
    """(checkpoint dir, repository) for `dev` or `0.6B`, built and exported once, reused after."""
    ckpt, repo = CACHE / f"{name}-ckpt", CACHE / f"{name}-repo-{max_tokens}"
    cli = [sys.executable, "-m", "service.cli"]
    if not (ckpt / "config.json").exists():
        extra = ["--real-config", name] if name != "dev" else []
        run_cmd([*cli, "dev-model", "--output", str(ckpt), *extra], CACHE / f"{name}-build.log")
    if not (repo / "qwen3_embedding" / "config.pbtxt").exists():
        run_cmd(
            [
                *cli,
                "export",
                "--model",
                str(ckpt),
                "--output",
                str(repo),
                "--backend",
                "python",
                "--precision",
                "fp32",
                "--max-tokens",
                str(max_tokens),
                "--no-warmup",
                "--verify-long-tokens",
                "256",
            ],
            CACHE / f"{name}-export.log",
        )
    return ckpt, repo


def variant_repo(
    repo: Path,
    tag: str,
    queue_delay_us: int | None = None,
    instances: int | None = None,
    ort_threads: int | None = None,
) -> Path:
    """A copy of the repository (hard links: no second 2.4 GB model) with config.pbtxt changed, the same
    fields `qwen3-embed export --max-queue-delay-us/--instances/--ort-threads` write."""
    from export.triton_config import parse_pbtxt, to_pbtxt

    out = repo.parent / f"{repo.name}-{tag}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repo, out, copy_function=os.link)
    config_path = out / "qwen3_embedding" / "config.pbtxt"
    cfg = parse_pbtxt(config_path.read_text())
    if queue_delay_us is not None:
        cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    if instances is not None:
        cfg.instance_group[0].count = instances
    if ort_threads is not None:
        cfg.parameters["ort_intra_op_threads"].string_value = str(ort_threads)
    config_path.unlink()  # a hard link: never write through it into the original
    config_path.write_text(to_pbtxt(cfg))
    return out


# -- measurement -------------------------------------------------------------------------------------


def row(system: str, workload: str, summary: Summary, **extra: Any) -> dict[str, Any]:
    return {"system": system, "workload": workload, **summary.as_dict(), **extra}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Context:
    model: str
    ckpt: Path
    repo: Path
    sizes: Sizes
    hidden: int
    buckets: list[int]
    budget: int
    max_rows: int
    tokenize: systems.Tokenize
    logs: Path


def texts_for(workload: str, size: WorkloadSize, seed: int = 0) -> list[str]:
    return make_texts(LengthSpec(*WORKLOADS[workload]), size.texts, seed)


def model_facts(repo: Path) -> tuple[int, int]:
    from export.triton_config import parse_pbtxt

    cfg = parse_pbtxt((repo / "qwen3_embedding" / "config.pbtxt").read_text())
    return int(cfg.parameters["hidden_size"].string_value), int(cfg.max_batch_size)


async def measure_facade(
    ctx: Context,
    fac: systems.FacadeHandle,
    workload: str,
    reqs: list[list[str]],
    spec: LoadSpec,
    http: bool = True,
) -> list[dict[str, Any]]:
    rows = []
    real0, pad0 = systems.scrape_padding(fac.base_url)
    g = await systems.run_grpc(fac.target, ctx.hidden, reqs, spec)
    real1, pad1 = systems.scrape_padding(fac.base_url)
    rows.append(
        row(
            "facade gRPC",
            workload,
            g,
            concurrency=spec.concurrency,
            padding_ratio=padding_ratio(pad1 - pad0, real1 - real0),
        )
    )
    if http:
        from devtools.bench.clients import http_info

        model = (await http_info(fac.base_url))["model"]
        h, err = await systems.run_http(fac.base_url, model, ctx.hidden, reqs, spec)
        rows.append(row("facade HTTP", workload, h, concurrency=spec.concurrency, first_error=err))
    return rows


async def measure_model(ctx: Context, triton_url: str, results: dict[str, Any]) -> None:
    """Every system on every workload, for one model, Triton already running."""
    s = ctx.sizes
    table: list[dict[str, Any]] = results.setdefault("throughput", [])
    session = systems.ort_session(ctx.repo / "qwen3_embedding" / "1" / "model.onnx")
    workload_reqs: dict[str, list[list[str]]] = {}
    with systems.facade(ctx.repo, triton_url, ctx.logs) as fac:
        for workload, size in s.workloads.items():
            reqs = batches(texts_for(workload, size), size.batch)
            workload_reqs[workload] = reqs
            plans = systems.plan_requests(reqs, ctx.tokenize, ctx.buckets, ctx.budget, ctx.max_rows)
            spec = LoadSpec(concurrency=size.concurrency, requests=len(reqs))
            log(
                f"{ctx.model} {workload}: {len(reqs)} requests x {size.batch} inputs, "
                f"concurrency {size.concurrency}"
            )
            systems.run_ceiling(session, plans[:2])  # warm ORT's shape-specific caches
            ceiling = systems.run_ceiling(session, plans)
            planned = padding_ratio(sum(p.padded_tokens for p in plans), sum(p.real_tokens for p in plans))
            table.append(
                row("ceiling (ORT in-process)", workload, ceiling, concurrency=1, padding_ratio=planned)
            )
            direct = await systems.run_direct_triton(triton_url, "qwen3_embedding", ctx.hidden, plans, spec)
            table.append(row("direct Triton", workload, direct, concurrency=spec.concurrency))
            table.extend(await measure_facade(ctx, fac, workload, reqs, spec))
            log(
                f"  ceiling {ceiling.inputs_per_s:.1f} in/s, direct {direct.inputs_per_s:.1f}, "
                f"facade {table[-2]['inputs_per_s']:.1f} (gRPC) {table[-1]['inputs_per_s']:.1f} (HTTP)"
            )

        # Throughput vs concurrency (facade gRPC/HTTP and direct Triton), one workload.
        sweep: list[dict[str, Any]] = results.setdefault("sweep", [])
        wl = s.sweep_workload
        size = s.workloads[wl]
        reqs = workload_reqs[wl]
        plans = systems.plan_requests(reqs, ctx.tokenize, ctx.buckets, ctx.budget, ctx.max_rows)
        for c in s.sweep_concurrency:
            spec = LoadSpec(concurrency=c, requests=max(s.sweep_requests, c * 2))
            direct = await systems.run_direct_triton(triton_url, "qwen3_embedding", ctx.hidden, plans, spec)
            sweep.append(row("direct Triton", wl, direct, concurrency=c, batch=size.batch))
            for r in await measure_facade(ctx, fac, wl, reqs, spec):
                sweep.append({**r, "batch": size.batch})
            log(
                f"  sweep {wl} c={c}: direct {direct.inputs_per_s:.1f} in/s p50 {direct.p50_ms:.2f} ms, "
                f"facade gRPC {sweep[-2]['inputs_per_s']:.1f} p50 {sweep[-2]['p50_ms']:.2f} ms"
            )

        # Cost vs input length: batch 1, and the biggest batch the token budget allows for that length.
        lengths: list[dict[str, Any]] = results.setdefault("lengths", [])
        for n in s.lengths:
            if n > ctx.buckets[-1]:
                continue
            width = systems.bucket_width(n, ctx.buckets)
            best = max(1, min(ctx.max_rows, ctx.budget // width, s.best_batch_tokens // width, 16))
            for batch in sorted({1, best}):
                import random

                rng = random.Random(n)
                reqs = [[text_of(n, rng) for _ in range(batch)] for _ in range(s.length_requests)]
                plans = systems.plan_requests(reqs, ctx.tokenize, ctx.buckets, ctx.budget, ctx.max_rows)
                systems.run_ceiling(session, plans[:1])
                ceil = systems.run_ceiling(session, plans)
                spec = LoadSpec(concurrency=1, requests=len(reqs))
                g = await systems.run_grpc(fac.target, ctx.hidden, reqs, spec, warmup=1)
                for name, summ in (("ceiling (ORT in-process)", ceil), ("facade gRPC", g)):
                    lengths.append(row(name, f"fixed:{n}", summ, tokens=n, batch=batch))
                log(f"  length {n} batch {batch}: ceiling p50 {ceil.p50_ms:.1f} ms, facade {g.p50_ms:.1f} ms")
    del session
    gc.collect()


def measure_st(ctx: Context, results: dict[str, Any]) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(ctx.ckpt), device="cpu")
    model.max_seq_length = ctx.buckets[-1]
    table = results["throughput"]
    for workload, size in ctx.sizes.workloads.items():
        reqs = batches(texts_for(workload, size), size.batch)
        counts = [sum(len(i) for i in ctx.tokenize.ids(r)) for r in reqs]
        systems.run_sentence_transformers(model, reqs[:1], counts[:1])
        summ = systems.run_sentence_transformers(model, reqs, counts)
        table.append(row("sentence-transformers (torch)", workload, summ, concurrency=1))
        log(f"  sentence-transformers {workload}: {summ.inputs_per_s:.1f} in/s")
    del model
    gc.collect()


def measure_infinity(ctx: Context, results: dict[str, Any]) -> None:
    from devtools.bench.clients import http_info

    table = results["throughput"]
    peers = results.setdefault("peers", {})
    if not INFINITY_PYTHON.exists():
        peers["infinity"] = f"not installed: {INFINITY_PYTHON} missing (see benchmarks/peers.sh)"
        return
    try:
        with systems.infinity(INFINITY_PYTHON, ctx.ckpt, ctx.logs) as url:
            for workload, size in ctx.sizes.workloads.items():
                reqs = batches(texts_for(workload, size), size.batch)
                spec = LoadSpec(concurrency=size.concurrency, requests=len(reqs))
                model = asyncio.run(http_info(url))["model"]
                summ, err = asyncio.run(
                    systems.run_http(url, model, ctx.hidden, reqs, spec, path="/embeddings")
                )
                table.append(
                    row("Infinity (torch)", workload, summ, concurrency=size.concurrency, first_error=err)
                )
                log(f"  Infinity {workload}: {summ.inputs_per_s:.1f} in/s {summ.errors or ''} {err}")
        peers["infinity"] = "ran"
    except RuntimeError as exc:
        peers["infinity"] = f"failed to start: {str(exc)[-1500:]}"
        log(f"  Infinity failed: {str(exc)[-400:]}")


def geometric_buckets(per_octave: int, max_tokens: int) -> str:
    """QWEN3_EMBED_BUCKETS for a ladder of `per_octave` edges to each doubling on multiples of 8 (the default
    is 3; finer edges: less padding, but fewer equal shapes for Triton to batch together)."""
    from service.contract import default_buckets

    return ",".join(str(e) for e in default_buckets(max_tokens, per_octave=per_octave))


def tuning_variants(max_tokens: int) -> list[tuple[str, dict[str, str], dict[str, int]]]:
    """(label, facade environment, Triton config changes); the default first."""
    return [
        ("default", {}, {}),
        # The default before the 3-per-octave ladder (benchmarks/ladders.py measured the choice).
        ("buckets powers of two", {"QWEN3_EMBED_BUCKETS": geometric_buckets(1, max_tokens)}, {}),
        ("buckets 2/octave", {"QWEN3_EMBED_BUCKETS": geometric_buckets(2, max_tokens)}, {}),
        ("buckets 4/octave", {"QWEN3_EMBED_BUCKETS": geometric_buckets(4, max_tokens)}, {}),
        ("token budget 4096", {"QWEN3_EMBED_TOKEN_BUDGET": "4096"}, {}),
        ("token budget 65536", {"QWEN3_EMBED_TOKEN_BUDGET": "65536"}, {}),
        ("tokenizer threads 1", {"QWEN3_EMBED_TOKENIZER_THREADS": "1"}, {}),
        ("queue delay 0 us", {}, {"queue_delay_us": 0}),
        ("queue delay 2000 us", {}, {"queue_delay_us": 2000}),
        # The export default is one CPU instance per core with one ORT thread each; these are the
        # single-instance set-ups it replaced (before: 1 instance, ORT on all cores).
        ("1 instance x ORT default threads", {}, {"instances": 1, "ort_threads": 0}),
        ("1 instance x 1 ORT thread", {}, {"instances": 1, "ort_threads": 1}),
    ]


async def measure_tuning(ctx: Context, base_triton: str, results: dict[str, Any]) -> None:
    """Knobs, each against the default in the same run (facade gRPC)."""
    from service.triton.runtime import start_triton

    tuning: list[dict[str, Any]] = results.setdefault("tuning", [])
    wanted = ctx.sizes.tuning_variants

    async def facade_run(label: str, url: str, repo: Path, env: dict[str, str]) -> None:
        with systems.facade(repo, url, ctx.logs, env) as fac:
            for workload in ctx.sizes.tuning_workloads:
                size = ctx.sizes.workloads[workload]
                reqs = batches(texts_for(workload, size), size.batch)
                spec = LoadSpec(concurrency=size.concurrency, requests=len(reqs))
                r = (await measure_facade(ctx, fac, workload, reqs, spec, http=False))[0]
                tuning.append({**r, "variant": label})
                log(f"  tuning {label} {workload}: {r['inputs_per_s']:.1f} in/s, padding {r['padding_ratio']:.3f}")

    for label, env, triton_changes in tuning_variants(ctx.buckets[-1]):
        if wanted and label not in wanted:
            continue
        if not triton_changes:
            await facade_run(label, base_triton, ctx.repo, env)
            continue
        repo = variant_repo(ctx.repo, label.replace(" ", "_"), **triton_changes)
        triton = await asyncio.to_thread(start_triton, repo, ctx.logs / f"triton-{repo.name}.log")
        try:
            await facade_run(label, triton.grpc_url, repo, env)
        finally:
            await asyncio.to_thread(triton.stop)
            shutil.rmtree(repo, ignore_errors=True)


def make_context(name: str, ckpt: Path, repo: Path, sizes: Sizes, logs: Path) -> Context:
    from export.triton_config import parse_pbtxt
    from service.contract import ModelInfo
    from service.pipeline.inference import resolve_buckets
    from service.settings import Settings

    hidden, max_batch = model_facts(repo)
    info = ModelInfo.from_triton_config(parse_pbtxt((repo / "qwen3_embedding" / "config.pbtxt").read_text()))
    settings = Settings.model_validate({})  # the facade's defaults (and any QWEN3_EMBED_* set for this run)
    return Context(
        name,
        ckpt,
        repo,
        sizes,
        hidden,
        resolve_buckets(settings.buckets, info.max_input_tokens, info.length_buckets),
        settings.token_budget,
        max_batch,
        systems.Tokenize(repo / "qwen3_embedding"),
        logs,
    )


def run_with_triton(ctx: Context, triton_url: str, results: dict[str, Any]) -> dict[str, Any]:
    """The measurements that need Triton (the CI smoke test calls this with its session Triton)."""
    res = results.setdefault(ctx.model, {})
    res["buckets"], res["token_budget"], res["hidden"] = ctx.buckets, ctx.budget, ctx.hidden
    asyncio.run(measure_model(ctx, triton_url, res))
    if ctx.sizes.tuning:
        asyncio.run(measure_tuning(ctx, triton_url, res))
    add_ratios(res)
    return res


def run_model(name: str, sizes: Sizes, results: dict[str, Any], logs: Path) -> None:
    from service.triton.runtime import start_triton

    log(f"== {name}: build/export (cached)")
    ckpt, repo = prepare_model(name, sizes.max_tokens)
    ctx = make_context(name, ckpt, repo, sizes, logs)
    res = results.setdefault(name, {})
    triton = start_triton(repo, logs / f"triton-{name}.log")
    try:
        run_with_triton(ctx, triton.grpc_url, results)
    finally:
        triton.stop()
    if sizes.st:
        measure_st(ctx, res)
    if sizes.peers:
        measure_infinity(ctx, res)
    add_ratios(res)


def add_ratios(res: dict[str, Any]) -> None:
    """Every row's inputs/s as a ratio to the ceiling on the same workload (same texts, same run)."""
    ceil = {
        r["workload"]: r["inputs_per_s"]
        for r in res.get("throughput", [])
        if r["system"].startswith("ceiling")
    }
    for r in res.get("throughput", []):
        r["vs_ceiling"] = ratio(r["inputs_per_s"] or 0.0, ceil.get(r["workload"], 0.0))


def clean(value: Any) -> Any:
    """NaN (an undefined ratio) -> null, so the file is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")),
        "0",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(int(mem) / 1024**2, 1),
        "python": platform.python_version(),
        "load_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="seconds-long run of the harness (dev model)")
    parser.add_argument("--models", default="dev,0.6B", help="comma-separated: dev, 0.6B")
    parser.add_argument("--no-st", action="store_true", help="skip sentence-transformers")
    parser.add_argument("--no-peers", action="store_true", help="skip peer servers")
    parser.add_argument("--no-tuning", action="store_true")
    parser.add_argument(
        "--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md and docs/img"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    models = ["dev"] if args.smoke else [m.strip() for m in args.models.split(",") if m.strip()]
    started = time.perf_counter()
    run_id = time.strftime("%Y%m%d-%H%M%S")
    logs = CACHE / "logs" / run_id
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "run": run_id,
        "machine": machine(),
        "smoke": args.smoke,
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *(argv or sys.argv[1:])]),
    }
    for name in models:
        sizes = SMOKE if args.smoke else (DEV_FULL if name == "dev" else REAL_FULL)
        sizes = replace(
            sizes,
            st=sizes.st and not args.no_st,
            peers=sizes.peers and not args.no_peers,
            tuning=sizes.tuning and not args.no_tuning,
        )
        results.setdefault("sizes", {})[name] = asdict(sizes)
        run_model(name, sizes, results, logs)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / ("smoke.json" if args.smoke else f"{run_id}.json")
    out.write_text(json.dumps(clean(results), indent=1, default=str))
    log(f"results in {out} ({results['wall_s']} s)")
    if not args.no_doc and not args.smoke:
        from benchmarks.report import write_report

        write_report(results, ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "img")
        log("docs/benchmarks.md and docs/img regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
