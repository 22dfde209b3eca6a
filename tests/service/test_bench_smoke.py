"""The load generator and the benchmark suite: pure stats, and a seconds-long smoke run against the session's
real Triton and facade. Correctness of the harness only: no timing is asserted."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest

from devtools.bench.clients import check_vectors
from devtools.bench.stats import (
    Bin,
    Sample,
    format_histogram,
    latency_histogram,
    percentile,
    ratio,
    summarize,
)
from devtools.bench.sweep import knee, parse_concurrencies, parse_protocols
from devtools.bench.workload import LengthSpec, batches, make_texts, sample_lengths, spec_for


def test_percentile_matches_linear_interpolation() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summarize_counts_errors_apart_from_throughput() -> None:
    samples = [
        Sample(0.0, 0.010, "OK", 2, 20),
        Sample(0.1, 0.030, "OK", 2, 40),
        Sample(0.2, 0.5, "503", 2, 9),
    ]
    s = summarize(samples, wall_s=2.0)
    assert (s.requests, s.ok, s.errors) == (3, 2, {"503": 1})
    assert s.inputs_per_s == 2.0 and s.tokens_per_s == 30.0 and s.requests_per_s == 1.0
    assert s.p50_ms == pytest.approx(20.0) and s.max_ms == pytest.approx(30.0)
    empty = summarize([Sample(0.0, 1.0, "UNAVAILABLE", 1, 1)], wall_s=1.0)
    assert empty.ok == 0 and empty.as_dict()["p50_ms"] is None
    assert math.isnan(ratio(1.0, 0.0)) and ratio(3.0, 2.0) == 1.5


def test_latency_histogram_counts_every_latency() -> None:
    values = [1.0, 1.5, 2.0, 9.0, 10.0, 10.0, 3.3]
    hist = latency_histogram(values, bins=9)
    assert len(hist) == 9 and sum(b.count for b in hist) == len(values)
    # Equal-width bins labelled by their upper edge, a latency on an edge counted in the bin it labels.
    assert hist[0] == Bin(2.0, 3) and hist[-2] == Bin(9.0, 1) and hist[-1] == Bin(10.0, 2)
    assert [b.upper_ms for b in hist] == sorted(b.upper_ms for b in hist)
    assert latency_histogram([4.0, 4.0]) == [Bin(4.0, 2)] and latency_histogram([]) == []
    text = format_histogram(hist)
    assert text.startswith("Response time histogram") and "[3]" in text and "∎" in text
    assert "no successful requests" in format_histogram([])


def test_sweep_knee_and_arguments() -> None:
    # Throughput grows to concurrency 8, then flattens: 8 is the first within 90% of the best.
    assert knee([(1, 100.0), (2, 190.0), (4, 300.0), (8, 380.0), (16, 400.0), (32, 395.0)]) == 8
    assert knee([(1, 50.0), (2, 40.0)]) == 1 and knee([(1, 0.0)]) is None and knee([]) is None
    assert parse_concurrencies("8, 1,2,2") == [1, 2, 8]
    assert parse_protocols("grpc,http") == ["grpc", "http"] and parse_protocols("http") == ["http"]
    for bad in ("", "0,1", "a"):
        with pytest.raises(ValueError):
            parse_concurrencies(bad)
    with pytest.raises(ValueError):
        parse_protocols("grpc,ftp")


def test_check_vectors() -> None:
    assert check_vectors([64, 64], 2, 64) == ""
    assert "1 vectors for 2 inputs" in check_vectors([64], 2, 64)
    assert "expected 64" in check_vectors([64, 32], 2, 64)
    assert "different sizes" in check_vectors([64, 32], 2, None)


def test_workload_lengths_and_batches() -> None:
    rng = random.Random(1)
    lengths = sample_lengths(LengthSpec(8, 512), 2000, rng)
    assert min(lengths) >= 8 and max(lengths) <= 512
    # Log-uniform: the median sits near the geometric mean (64), far below the arithmetic one (260).
    assert 40 < sorted(lengths)[1000] < 100
    assert spec_for("fixed:100") == LengthSpec(100, 100) and spec_for("10-20") == LengthSpec(10, 20)
    with pytest.raises(ValueError):
        spec_for("huge")
    assert batches(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"]]
    assert batches(["a"], 4) == [["a"]]


def test_generated_texts_have_the_requested_token_count(model_repository: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_repository / "qwen3_embedding" / "tokenizer" / "tokenizer.json"))
    for workload in ("short", "mixed", "fixed:300"):
        spec = spec_for(workload)
        for text in make_texts(spec, 20, seed=3):
            n = len(tok.encode(text, add_special_tokens=False).ids) + 1  # + the EOS the facade appends
            assert spec.min_tokens <= n <= spec.max_tokens
            assert n == len(text.split()) + 1


async def test_bench_closed_and_open_loop_against_the_facade(facade: Any) -> None:
    from devtools.bench.cli import run_bench

    texts = make_texts(spec_for("short"), 16)
    common: dict[str, Any] = dict(
        target=facade.target,
        base_url=facade.base_url,
        path="/v1/embeddings",
        texts=texts,
        batch=2,
        duration=0.0,
        warmup=1,
        api_key=None,
        dimensions=None,
        model=None,
        encoding="float",
        seed=0,
    )
    closed = await run_bench(protocol="grpc", concurrency=3, rate=0.0, requests=10, connections=2, **common)
    assert closed["ok"] == closed["requests"] == 10 and closed["errors"] == {} and closed["connections"] == 2
    assert closed["inputs_per_s"] > 0 and closed["p50_ms"] is not None and closed["tokens_per_s"] > 0
    opened = await run_bench(protocol="http", concurrency=1, rate=50.0, requests=6, **common)
    assert opened["ok"] == 6 and opened["errors"] == {} and opened["rate"] == 50.0
    # A response with vectors of the wrong size is an error, never throughput.
    wrong = await run_bench(protocol="grpc", concurrency=1, rate=0.0, requests=2, **{**common, "dimensions": 3})
    assert wrong["ok"] == 0 and wrong["errors"] == {"BAD_RESPONSE": 2}


async def test_bench_sweep_against_the_facade(facade: Any, tmp_path: Path) -> None:
    """A tiny sweep, both protocols: one point per concurrency each, histograms that count every request,
    the JSON and the plot written."""
    from devtools.bench.cli import run_bench
    from devtools.bench.sweep import run_sweep, write_sweep

    texts = make_texts(spec_for("short"), 8)

    async def point(protocol: str, concurrency: int) -> dict[str, Any]:
        return await run_bench(
            protocol=protocol,
            target=facade.target,
            base_url=facade.base_url,
            path="/v1/embeddings",
            texts=texts,
            batch=1,
            concurrency=concurrency,
            rate=0.0,
            requests=6,
            duration=0.0,
            warmup=1,
            api_key=None,
            dimensions=None,
            model=None,
            encoding="float",
            seed=0,
        )

    sweep = await run_sweep(["grpc", "http"], [1, 2], point)
    json_path, png_path = write_sweep(sweep, tmp_path / "out" / "sweep")
    assert png_path.stat().st_size > 0 and png_path.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(json_path.read_text())
    assert [(p["protocol"], p["concurrency"]) for p in saved["points"]] == [
        ("grpc", 1),
        ("grpc", 2),
        ("http", 1),
        ("http", 2),
    ]
    for p in saved["points"]:
        assert p["ok"] == p["requests"] == 6 and p["inputs_per_s"] > 0
        assert sum(b["count"] for b in p["histogram"]) == p["requests"]
        assert [d["percent"] for d in p["distribution"]] == [10, 25, 50, 75, 90, 95, 99]
    assert set(saved["knee"]) == {"grpc", "http"} and all(k in (1, 2) for k in saved["knee"].values())


def test_bench_command_sweep_and_histogram(facade: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    common = ["bench", "--target", facade.target, "--base-url", facade.base_url, "--workload", "fixed:12"]
    common += ["--texts", "4", "--requests", "4", "--warmup", "1"]
    stem = tmp_path / "sweep"
    result = CliRunner().invoke(app, [*common, "--protocol", "grpc,http", "--sweep", "1,2", "--sweep-out", str(stem)])
    assert result.exit_code == 0, result.output
    assert "knee (grpc): concurrency" in result.output and "knee (http): concurrency" in result.output
    assert stem.with_suffix(".png").stat().st_size > 0
    assert len(json.loads(stem.with_suffix(".json").read_text())["points"]) == 4
    single = CliRunner().invoke(app, [*common, "--concurrency", "2"])
    assert single.exit_code == 0, single.output
    assert "Response time histogram (ms):" in single.output and "99% in" in single.output
    refused = CliRunner().invoke(app, [*common, "--protocol", "grpc,http"])
    assert refused.exit_code != 0 and "--sweep" in refused.output


def test_bench_command_json(facade: Any) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--target",
            facade.target,
            "--workload",
            "fixed:20",
            "--texts",
            "8",
            "--requests",
            "4",
            "--concurrency",
            "2",
            "--warmup",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["ok"] == 4 and report["dimensions"] > 0 and report["tokens_per_s"] > 0


def test_bench_runs_as_a_module_too() -> None:
    """`python -m devtools.bench`: the load generator without an installed `qwen3-embed`."""
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.bench", "--help"], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--concurrency" in proc.stdout and "--workload" in proc.stdout


def test_suite_smoke(model_repository: Path, dev_model_dir: Path, triton: Any, tmp_path: Path) -> None:
    from benchmarks.run import SMOKE, Sizes, WorkloadSize, clean, make_context, run_with_triton

    sizes = Sizes(
        max_tokens=SMOKE.max_tokens,
        workloads={"short": WorkloadSize(6, 1, 2), "mixed": WorkloadSize(8, 4, 2)},
        sweep_concurrency=(1, 2),
        sweep_requests=4,
        lengths=(16,),
        length_requests=1,
        st=False,
        peers=False,
    )
    ctx = make_context("dev", dev_model_dir, model_repository, sizes, tmp_path)
    results: dict[str, Any] = {}
    res = run_with_triton(ctx, triton.grpc_url, results)
    systems = {(r["system"], r["workload"]) for r in res["throughput"]}
    for system in ("ceiling (ORT in-process)", "direct Triton", "facade gRPC", "facade HTTP"):
        assert {(system, "short"), (system, "mixed")} <= systems
    for r in res["throughput"] + res["sweep"] + res["lengths"]:
        assert r["ok"] == r["requests"] > 0, r
    facade_mixed = next(r for r in res["throughput"] if r["system"] == "facade gRPC" and r["workload"] == "mixed")
    assert facade_mixed["padding_ratio"] >= 1.0
    json.dumps(clean(results), allow_nan=False)  # the results file is strict JSON


def test_report_renders(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks.report import write_report

    row = {
        "ok": 1,
        "requests": 1,
        "errors": {},
        "inputs_per_s": 10.0,
        "tokens_per_s": 100.0,
        "p50_ms": 5.0,
        "p90_ms": 6.0,
        "p99_ms": 7.0,
        "concurrency": 1,
        "batch": 1,
    }
    res = {
        "buckets": [16, 512],
        "token_budget": 16384,
        "hidden": 64,
        "throughput": [
            {**row, "system": s, "workload": "short", "vs_ceiling": 1.0}
            for s in ("ceiling (ORT in-process)", "facade gRPC", "direct Triton")
        ],
        "sweep": [
            {**row, "system": "facade gRPC", "workload": "short"},
            {**row, "system": "direct Triton", "workload": "short", "p50_ms": 4.0},
        ],
        "lengths": [{**row, "system": "facade gRPC", "workload": "fixed:16", "tokens": 16}],
    }
    results = {
        "run": "t",
        "wall_s": 1.0,
        "command": "python -m benchmarks.run",
        "machine": {
            "nproc": 2,
            "cpu": "cpu",
            "ram_gib": 1.0,
            "python": "3.11",
            "load_at_start": [0.0, 0.0, 0.0],
        },
        "sizes": {"dev": {"workloads": {"short": {"texts": 1, "batch": 1, "concurrency": 1}}}},
        "dev": res,
    }
    doc = tmp_path / "benchmarks.md"
    write_report(results, doc, tmp_path / "img")
    text = doc.read_text()
    assert "added p50 at concurrency 1" in text and "1.00 ms" in text
    assert (tmp_path / "img" / "throughput_vs_concurrency_dev.png").stat().st_size > 0
