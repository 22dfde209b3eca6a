"""The `qwen3-embed bench` command: registered through the `qwen3_embed.cli` entry point where devtools is
importable (a checkout set up by `make venv`), or run as `python -m devtools.bench`."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from service.cli import Extensions


async def run_bench(
    *,
    protocol: str,
    target: str,
    base_url: str,
    path: str,
    texts: list[str],
    batch: int,
    concurrency: int,
    rate: float,
    requests: int,
    duration: float,
    warmup: int,
    api_key: str | None,
    dimensions: int | None,
    model: str | None,
    encoding: str,
    seed: int,
    connections: int = 1,
) -> dict[str, Any]:
    """Runs one load test and returns the JSON-able report (the suite calls this in-process)."""
    from devtools.bench.clients import GrpcSender, HttpSender, Sender, grpc_info, http_info
    from devtools.bench.runner import LoadSpec, run_load
    from devtools.bench.stats import latency_distribution, latency_histogram
    from devtools.bench.workload import batches

    sender: Sender
    info: dict[str, Any]
    if protocol == "grpc":
        info = (
            await grpc_info(target, api_key)
            if dimensions is None
            else {"model": "", "dimensions": dimensions}
        )
        sender = GrpcSender(target, info["dimensions"], api_key, encoding=encoding, connections=connections)
    elif protocol == "http":
        info = {"model": model, "dimensions": dimensions}
        if model is None or dimensions is None:
            found = await http_info(base_url, api_key)
            info = {"model": model or found["model"], "dimensions": dimensions or found["dimensions"]}
        sender = HttpSender(
            base_url,
            str(info["model"]),
            info["dimensions"],
            api_key,
            path=path,
            encoding_format=encoding if encoding == "base64" else "float",
            connections=max(concurrency, 16),
        )
    else:
        raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
    reqs = batches(texts, batch)
    try:
        if warmup > 0:  # connection set-up and first-call costs stay out of the numbers
            await run_load(sender.send, reqs, LoadSpec(concurrency=min(concurrency, warmup), requests=warmup))
        spec = LoadSpec(concurrency=concurrency, rate=rate, requests=requests, duration_s=duration, seed=seed)
        result = await run_load(sender.send, reqs, spec)
    finally:
        await sender.close()
    latencies = [s.latency_s * 1000 for s in result.samples if s.status == "OK"]
    return {
        "protocol": protocol,
        "target": target if protocol == "grpc" else base_url + path,
        "model": info["model"],
        "dimensions": info["dimensions"],
        "batch": batch,
        "concurrency": None if rate > 0 else concurrency,
        "connections": connections if protocol == "grpc" else None,
        "rate": rate or None,
        **result.summary.as_dict(),
        "first_error": result.first_error,
        # Successful requests only, like the percentiles: the counts add up to `ok`.
        "histogram": [{"upper_ms": b.upper_ms, "count": b.count} for b in latency_histogram(latencies)],
        "distribution": [{"percent": q, "ms": ms} for q, ms in latency_distribution(latencies)],
    }


def bench(
    protocol: Annotated[
        str, typer.Option(help="grpc | http (OpenAI /v1/embeddings); with --sweep also grpc,http")
    ] = "grpc",
    target: Annotated[str, typer.Option(help="gRPC host:port")] = "localhost:50051",
    base_url: Annotated[str, typer.Option(help="HTTP base URL")] = "http://localhost:8080",
    path: Annotated[str, typer.Option(help="HTTP route (a peer may serve /embeddings)")] = "/v1/embeddings",
    workload: Annotated[
        str, typer.Option(help="short | mixed | long | fixed:N | A-B (log-uniform tokens)")
    ] = "short",
    file: Annotated[Path | None, typer.Option(help="Texts, one per line, instead of --workload")] = None,
    texts: Annotated[int, typer.Option(help="Distinct texts to generate")] = 512,
    batch: Annotated[int, typer.Option(help="Inputs per request")] = 1,
    concurrency: Annotated[int, typer.Option(help="Closed loop: requests in flight")] = 8,
    rate: Annotated[
        float, typer.Option(help="Open loop: requests per second (overrides --concurrency)")
    ] = 0.0,
    requests: Annotated[int, typer.Option(help="Stop after this many requests (0: no limit)")] = 200,
    duration: Annotated[float, typer.Option(help="Stop after this many seconds (0: no limit)")] = 0.0,
    warmup: Annotated[int, typer.Option(help="Unmeasured requests first")] = 8,
    api_key: Annotated[str | None, typer.Option(envvar="QWEN3_EMBED_API_KEY")] = None,
    dimensions: Annotated[
        int | None, typer.Option(help="Expected vector size (default: ask the server)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="HTTP `model` field (default: ask the server)")] = None,
    encoding: Annotated[str, typer.Option(help="float | float16 (gRPC) | base64 (HTTP)")] = "float",
    seed: int = 0,
    connections: Annotated[
        int, typer.Option(min=1, help="gRPC connections, requests round-robin (several reach several workers)")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
    sweep: Annotated[
        str,
        typer.Option(
            help="Closed loop at each of these concurrencies (e.g. 1,2,4,8,16,32), --requests each: a table, "
            "SWEEP_OUT.json and a throughput/latency-vs-concurrency plot SWEEP_OUT.png"
        ),
    ] = "",
    sweep_out: Annotated[Path, typer.Option(help="Path stem of the sweep's .json and .png")] = Path("bench-sweep"),
) -> None:
    """Load generator for the gRPC and OpenAI HTTP APIs: closed or open loop, checked responses, a latency
    histogram; --sweep finds the knee of throughput against concurrency."""
    from devtools.bench.stats import Bin, Summary, format_distribution, format_histogram, format_summary
    from devtools.bench.sweep import format_sweep, parse_concurrencies, parse_protocols, run_sweep, write_sweep
    from devtools.bench.workload import make_texts, read_texts, spec_for

    try:
        corpus = read_texts(file) if file else make_texts(spec_for(workload), texts, seed)
        protocols = parse_protocols(protocol)
        concurrencies = parse_concurrencies(sweep) if sweep else []
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if len(protocols) > 1 and not sweep:
        raise typer.BadParameter("several protocols need --sweep; run one protocol at a time otherwise")
    if sweep and rate > 0:
        raise typer.BadParameter("--sweep varies the closed loop's concurrency; it does not take --rate")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    workload_name = str(file) if file else workload

    async def one(proto: str, conc: int) -> dict[str, Any]:
        report = await run_bench(
            protocol=proto,
            target=target,
            base_url=base_url,
            path=path,
            texts=corpus,
            batch=batch,
            concurrency=conc,
            rate=0.0 if sweep else rate,
            requests=requests,
            duration=duration,
            warmup=warmup,
            api_key=api_key,
            dimensions=dimensions,
            model=model,
            encoding=encoding,
            seed=seed,
            connections=connections,
        )
        return {**report, "workload": workload_name}

    if sweep:
        result = asyncio.run(run_sweep(protocols, concurrencies, one))
        result.update(workload=workload_name, batch=batch, requests_per_point=requests)
        json_path, png_path = write_sweep(result, sweep_out)
        if as_json:
            typer.echo(json.dumps(result))
        else:
            typer.echo(f"{workload_name} batch {batch}, {requests or 'unbounded'} requests per point")
            typer.echo(format_sweep(result))
            typer.echo(f"wrote {json_path} and {png_path}")
        if any(r["ok"] < r["requests"] for r in result["points"]):
            raise typer.Exit(code=1)
        return

    report = asyncio.run(one(protocols[0], concurrency))
    if as_json:
        typer.echo(json.dumps(report))
    else:
        fields = {k: report[k] for k in Summary.__dataclass_fields__ if report.get(k) is not None}
        summary = Summary(**fields)
        mode = f"rate {rate}/s" if rate > 0 else f"concurrency {concurrency}"
        typer.echo(format_summary(summary, f"{protocols[0]} {workload_name} batch {batch} {mode}"))
        typer.echo("")
        typer.echo(format_histogram([Bin(b["upper_ms"], b["count"]) for b in report["histogram"]]))
        typer.echo("")
        typer.echo(format_distribution([(d["percent"], d["ms"]) for d in report["distribution"]]))
        if report["first_error"]:
            typer.echo(f"first error: {report['first_error']}")
    if report["ok"] < report["requests"]:
        raise typer.Exit(code=1)


def register(ext: Extensions) -> None:
    """The `qwen3_embed.cli` entry point: adds `bench` to `qwen3-embed`."""
    ext.app.command("bench")(bench)
