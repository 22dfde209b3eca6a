"""`qwen3-embed`: one CLI for export, serving and the client tools. Heavy imports stay inside commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    vocab_size: Annotated[int, typer.Option(help="Embedding rows (151669 like 0.6B, 151665 like 4B/8B)")] = 151669,
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
    instances: int = 1,
    instance_kind: Annotated[str, typer.Option(help="auto | CPU | GPU")] = "auto",
    max_queue_delay_us: int = 500,
    max_queue_size: int = 256,
    accelerator: Annotated[str, typer.Option(help="onnxruntime backend: none | tensorrt")] = "none",
    trt_engine_cache: str = "/tmp/trt-cache",
    ort_threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads (0 = all cores)")] = 0,
    warmup: Annotated[bool, typer.Option(help="Warm every length bucket before READY")] = True,
    min_dimensions: int = 32,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (tracing and verification)")] = "auto",
    verify_long_tokens: int = 1024,
    skip_resource_check: bool = False,
) -> None:
    """Checkpoint -> verified ONNX (and TensorRT) -> Triton model repository with dynamic batching."""
    from rich.console import Console

    from export.errors import ExportError
    from export.exporter import ExportOptions, default_buckets, run_export
    from export.triton_config import RepoSettings

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
