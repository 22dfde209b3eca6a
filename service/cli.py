"""`qwen3-embed`: one CLI for export, serving and the client tools. Heavy imports stay inside commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from service.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.command("dev-model")
def dev_model(
    output: Annotated[Path, typer.Option(help="Directory to write the checkpoint to")],
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 128,
    vocab_size: Annotated[
        int, typer.Option(help="Embedding rows (151669 like 0.6B, 151665 like 4B/8B)")
    ] = 151669,
    seed: int = 0,
    real_config: Annotated[
        str | None, typer.Option(help="Use a real Qwen3-Embedding shape: 0.6B, 4B or 8B (random weights)")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16")] = "float32",
) -> None:
    """A small, randomly initialised Qwen3 embedding checkpoint with the real tokenizer, built offline."""
    from export.dev_model import REAL_SHAPES, DevModelShape, build_dev_model

    if real_config is not None:
        if real_config not in REAL_SHAPES:
            raise typer.BadParameter(f"choose one of {', '.join(REAL_SHAPES)}", param_hint="--real-config")
        shape = REAL_SHAPES[real_config]
    else:
        shape = DevModelShape(hidden_size, layers, heads, kv_heads, head_dim, intermediate_size, vocab_size)
    from dataclasses import replace

    shape = replace(shape, seed=seed)
    if shape.hidden_size < 1 or shape.layers < 1 or shape.heads % max(shape.kv_heads, 1):
        raise typer.BadParameter("need hidden_size, layers >= 1 and heads divisible by kv_heads")
    build_dev_model(output, shape, dtype=dtype)
    typer.echo(f"dev model written to {output}")


@app.command()
def export(
    model: Annotated[str, typer.Option(help="Hub id (e.g. Qwen/Qwen3-Embedding-4B) or local checkpoint dir")],
    output: Annotated[Path, typer.Option(help="Triton model repository")] = Path("model_repository"),
    name: str = "qwen3_embedding",
    backend: Annotated[str, typer.Option(help="python | onnxruntime | tensorrt")] = "python",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | bf16")] = "fp32",
    max_batch_size: int = 32,
    max_tokens: Annotated[int, typer.Option(help="Max input tokens per text (capped by the model)")] = 8192,
    instances: Annotated[int, typer.Option(help="Model instances; 0 = one per core on CPU, 1 on GPU")] = 0,
    instance_kind: Annotated[str, typer.Option(help="auto | CPU | GPU")] = "auto",
    max_queue_delay_us: int = 500,
    max_queue_size: int = 256,
    accelerator: Annotated[str, typer.Option(help="onnxruntime backend: none | tensorrt")] = "none",
    trt_engine_cache: str = "/tmp/trt-cache",
    ort_threads: Annotated[
        int, typer.Option(help="ONNX Runtime intra-op threads; 0 = 1 per instance with several CPU instances")
    ] = 0,
    warmup: Annotated[bool, typer.Option(help="Warm every length bucket before READY")] = True,
    min_dimensions: int = 32,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (tracing and verification)")] = "auto",
    verify_long_tokens: int = 1024,
    skip_resource_check: bool = False,
) -> None:
    """Checkpoint -> verified ONNX (and TensorRT) -> Triton model repository with dynamic batching."""
    from rich.console import Console

    from export.errors import ExportError
    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings
    from service.pipeline.batching import default_buckets

    console = Console(stderr=True)
    buckets = default_buckets(max_tokens) if warmup else []
    repo = RepoSettings(
        name=name,
        backend=backend,
        precision=precision,
        max_batch_size=max_batch_size,
        max_input_tokens=max_tokens,
        instances=instances,
        instance_kind=instance_kind,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size,
        ort_intra_op_threads=ort_threads,
        accelerator=accelerator,
        trt_engine_cache=trt_engine_cache,
        warmup_lengths=tuple(buckets),
    )
    opts = ExportOptions(
        model=model,
        output=output,
        repo=repo,
        device=device,
        verify_long_tokens=verify_long_tokens,
        min_dimensions=min_dimensions,
        skip_resource_check=skip_resource_check,
    )
    try:
        run_export(opts, console)
    except ExportError as exc:
        console.print(f"[bold red]export failed:[/] {exc}")
        raise typer.Exit(code=2) from exc


def _export_if_missing(model: str, repository: Path, name: str, backend: str, precision: str) -> None:
    """`make serve`: export MODEL when the repository lacks it. MODEL=dev builds the offline dev model."""
    if (repository / name / "config.pbtxt").exists():
        typer.echo(f"using the existing export in {repository / name}")
        return
    from rich.console import Console

    from export.errors import ExportError
    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings
    from service.pipeline.batching import default_buckets

    if model == "dev":
        from export.dev_model import build_dev_model

        dev_dir = Path(".cache/dev-model")
        if not (dev_dir / "config.json").exists():
            build_dev_model(dev_dir)
        model = str(dev_dir)
    repo = RepoSettings(
        name=name, backend=backend, precision=precision, warmup_lengths=tuple(default_buckets(8192))
    )
    try:
        run_export(ExportOptions(model=model, output=repository, repo=repo), Console(stderr=True))
    except ExportError as exc:
        typer.echo(f"export failed: {exc}", err=True)
        raise typer.Exit(code=2) from exc


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
    api_keys_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
    log_level: str | None = None,
) -> None:
    """Runs the service: (export if needed) + Triton + the gRPC and HTTP facade. Flags override
    QWEN3_EMBED_* environment variables."""
    import asyncio
    import logging

    settings = _settings(
        model_repository=model_repository,
        model_name=name,
        triton_url=triton_url,
        host=host,
        grpc_port=grpc_port,
        http_port=http_port,
        served_model_name=served_model_name,
        max_in_flight=max_in_flight,
        api_keys_file=api_keys_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        log_level=log_level,
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if model and not settings.triton_url:
        _export_if_missing(model, settings.model_repository, settings.model_name, backend, precision)
    from service.server import serve_forever

    asyncio.run(serve_forever(settings))


@app.command()
def triton(
    model_repository: Annotated[Path, typer.Option(help="Triton model repository")] = Path(
        "model_repository"
    ),
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


from service.bench.cli import bench  # noqa: E402  (typer only; its heavy imports live inside)

app.command("bench")(bench)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
