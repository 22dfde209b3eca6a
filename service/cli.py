"""`qwen3-embed`: serving and the client tools, plus export and bench where installed. Heavy imports stay
inside commands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from service.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

# Command groups outside the serving wheel (export/cli.py: `export`, `dev-model`; devtools/bench/cli.py:
# `bench`) add themselves through this entry-point group, so this module imports none of their code.
EXTENSION_GROUP = "qwen3_embed.cli"
# (model, repository, model name, backend, precision): makes `serve --model` export MODEL if missing.
ModelPreparer = Callable[[str, Path, str, str, str], None]


@dataclass
class Extensions:
    """What an entry point's `register(ext)` may add: commands on `app`, the export step of `serve --model`."""

    app: typer.Typer
    prepare_model: ModelPreparer | None = None


def _settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"invalid settings: {exc}", err=True)
        raise typer.Exit(code=2) from exc


@app.command()
def serve(
    model: Annotated[
        str | None,
        typer.Option(help="Export this model first if the repository lacks it (hub id, dir or 'dev')"),
    ] = None,
    model_repository: Annotated[Path | None, typer.Option(help="Triton model repository")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the repository")] = None,
    backend: Annotated[str, typer.Option(help="Backend for an export done here")] = "python",
    precision: Annotated[str, typer.Option(help="Precision for an export done here")] = "fp32",
    triton_url: Annotated[
        str | None, typer.Option(help="Use this Triton (host:port gRPC) instead of starting one")
    ] = None,
    host: str | None = None,
    grpc_port: int | None = None,
    http_port: Annotated[int | None, typer.Option(help="OpenAI HTTP API and /metrics; 0 disables")] = None,
    served_model_name: str | None = None,
    max_in_flight: int | None = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Facade processes on the same ports, sharing Triton; 0 = one per usable CPU, half when Triton "
            "shares them (at most 8)"
        ),
    ] = None,
    api_keys_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
    log_level: str | None = None,
) -> None:
    """Runs the service: (export if needed) + Triton + the gRPC and HTTP facade. Flags override
    QWEN3_EMBED_* environment variables."""
    import asyncio

    from service.logs import configure_logging

    settings = _settings(
        model_repository=model_repository,
        model_name=name,
        triton_url=triton_url,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        served_model_name=served_model_name,
        max_in_flight=max_in_flight,
        workers=workers,
        api_keys_file=api_keys_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        log_level=log_level,
    )
    configure_logging(settings.log_level, settings.log_format)
    if model and not settings.triton_url:
        if EXTENSIONS.prepare_model is None:
            typer.echo(
                "--model exports a model first, which needs the export tools (export/ and the `export` extra);"
                " this install serves an exported --model-repository only",
                err=True,
            )
            raise typer.Exit(code=2)
        EXTENSIONS.prepare_model(model, settings.model_repository, settings.model_name, backend, precision)
    from service.serve import serve

    asyncio.run(serve(settings))


@app.command()
def triton(
    model_repository: Annotated[Path, typer.Option(help="Triton model repository")] = Path("model_repository"),
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    log_file: Path = Path(".cache/triton.log"),
) -> None:
    """Runs Triton Inference Server (from the nvidia-pytriton wheel) in the foreground until Ctrl-C."""
    import signal
    import threading

    from service.triton.runtime import TritonStartError, start_triton

    # Handle SIGTERM before Triton starts: the child runs in its own session and must not outlive us.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        proc = start_triton(model_repository, log_file, grpc_port, http_port, metrics_port, wait=False)
        while not stop.is_set() and not proc.is_ready():
            if proc.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with {proc.process.returncode}:\n{proc.log_tail()}")
            stop.wait(0.25)
    except TritonStartError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from exc
    if not stop.is_set():
        typer.echo(f"Triton ready: gRPC :{grpc_port}, HTTP :{http_port}, metrics :{metrics_port}; log {log_file}")
    try:
        while not stop.is_set() and proc.process.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        proc.stop()
    typer.echo("Triton stopped")


@app.command()
def embed(
    texts: Annotated[list[str], typer.Argument(help="Texts to embed")],
    instruction: str = "",
    prompt_name: str = "",
    dimensions: int = 0,
    target: str = "localhost:50051",
    api_key: Annotated[str | None, typer.Option(envvar="QWEN3_EMBED_API_KEY")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full response as JSON")] = False,
) -> None:
    """Embeds texts through the gRPC API and prints what a person wants to see."""
    from service.client import embed_cli

    embed_cli(texts, instruction, prompt_name, dimensions, target, api_key, as_json)


@app.command()
def rerank(
    documents: Annotated[list[str], typer.Argument(help="Documents to score against the query")],
    query: Annotated[str, typer.Option(help="The search query")],
    instruction: Annotated[str, typer.Option(help="Task instruction (default: the official one)")] = "",
    top_n: Annotated[int, typer.Option(help="Show only the best N (0 = all)")] = 0,
    truncate: Annotated[bool, typer.Option(help="Cut documents over the model's limit instead of failing")] = False,
    raw_scores: Annotated[bool, typer.Option(help="yes - no logit difference instead of the probability")] = False,
    model: Annotated[str, typer.Option(help="A served reranker (default: the default one)")] = "",
    target: str = "localhost:50051",
    api_key: Annotated[str | None, typer.Option(envvar="QWEN3_EMBED_API_KEY")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full response as JSON")] = False,
) -> None:
    """Ranks documents by relevance to a query through the gRPC API (a reranker model must be served)."""
    from service.client import rerank_cli

    rerank_cli(query, documents, instruction, top_n, truncate, raw_scores, model, target, api_key, as_json)


def load_extensions(ext: Extensions) -> None:
    """Runs each `qwen3_embed.cli` entry point. The serving wheel names them but ships neither package, so
    one whose own module is missing is skipped; any other import error is a bug and surfaces."""
    from importlib.metadata import distributions

    seen: set[str] = set()
    # Every copy of the metadata, not just the first: `python -m` from the checkout finds the build's
    # *.egg-info there before the installed one, and it may be stale.
    points = [p for dist in distributions() for p in dist.entry_points.select(group=EXTENSION_GROUP)]
    for point in points:
        if point.value in seen:
            continue
        seen.add(point.value)
        try:
            register = point.load()
        except ModuleNotFoundError as exc:
            if exc.name and (point.module == exc.name or point.module.startswith(exc.name + ".")):
                continue
            raise
        register(ext)


EXTENSIONS = Extensions(app)
load_extensions(EXTENSIONS)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
