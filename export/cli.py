"""The export side of `qwen3-embed`: `export`, `dev-model`, and the export step behind `serve --model`.

They live here, beside the exporter, so that service/cli.py (and the serving wheel, and the facade image) need
no export code. `register` is the `qwen3_embed.cli` entry point; it runs wherever this package is importable
(a checkout set up by `make venv`, the export image). Heavy imports (torch) stay inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from service.contract import Precision

if TYPE_CHECKING:
    from service.cli import Extensions

# The directory `serve --model dev` builds the offline development model in (relative: `make serve` runs from
# the checkout).
DEV_MODEL_DIR = Path(".cache/dev-embedding")


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
    reranker: Annotated[
        bool, typer.Option(help="A Qwen3-Reranker-like checkpoint (Qwen3ForCausalLM, yes/no judge) instead")
    ] = False,
) -> None:
    """A small, randomly initialised Qwen3 embedding (or --reranker: reranker) checkpoint with the real tokenizer,
    built offline."""
    from export.dev_model import REAL_SHAPES, DevModelShape, build_dev_model, build_dev_reranker

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
    (build_dev_reranker if reranker else build_dev_model)(output, shape, dtype=dtype)
    typer.echo(f"dev {'reranker' if reranker else 'model'} written to {output}")


def export(
    model: Annotated[
        str,
        typer.Option(
            help="Hub id (e.g. Qwen/Qwen3-Embedding-4B, Qwen/Qwen3-Reranker-0.6B) or local checkpoint dir"
        ),
    ],
    output: Annotated[Path, typer.Option(help="Triton model repository")] = Path("model_repository"),
    name: Annotated[
        str, typer.Option(help="Triton model name; default qwen3_embedding, or qwen3_reranker for a reranker")
    ] = "",
    backend: Annotated[str, typer.Option(help="python | onnxruntime | tensorrt")] = "python",
    precision: Annotated[
        Precision,
        typer.Option(
            help="Weights and activations; int8 / int4: weight-only quantized linear layers (MatMulNBits), "
            "float32 elsewhere, verified against the fp32 reference"
        ),
    ] = Precision.FP32,
    max_batch_size: int = 32,
    max_tokens: Annotated[
        int,
        typer.Option(
            help="Max input tokens per text (capped by the model); 0 = the model's max_position_embeddings "
            "(32768 for Qwen3-Embedding), or 8192 with the eager graph"
        ),
    ] = 0,
    max_batch_tokens: Annotated[
        int, typer.Option(help="Padded tokens per ONNX Runtime run (python backend); bounds memory per instance")
    ] = 16384,
    instances: Annotated[int, typer.Option(help="Model instances; 0 = one per core on CPU, 1 on GPU")] = 0,
    instance_kind: Annotated[str, typer.Option(help="auto | CPU | GPU")] = "auto",
    max_queue_delay_us: int = 500,
    max_queue_size: int = 256,
    accelerator: Annotated[str, typer.Option(help="onnxruntime backend: none | tensorrt")] = "none",
    trt_engine_cache: str = "/tmp/trt-cache",
    ort_threads: Annotated[
        int, typer.Option(help="ONNX Runtime intra-op threads; 0 = 1 per instance with several CPU instances")
    ] = 0,
    warmup: Annotated[bool, typer.Option(help="Warm the length buckets up to 8192 tokens before READY")] = True,
    min_dimensions: int = 32,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (tracing and verification)")] = "auto",
    verify_long_tokens: Annotated[
        int, typer.Option(help="Tokens of the long verification sample; 0 = 16384 (fused) or 1024 (eager)")
    ] = 0,
    skip_resource_check: bool = False,
    attention: Annotated[
        str,
        typer.Option(
            help="auto | fused | eager. fused: ONNX Runtime GroupQueryAttention, memory linear in tokens, full "
            "context; eager: standard ops, [L, L] scores. auto = eager for --backend tensorrt, fused otherwise"
        ),
    ] = "auto",
    quant_method: Annotated[
        str,
        typer.Option(
            help="int8 / int4: rtn (round to nearest) | gptq (data-aware, calibration texts) | hqq (int4: "
            "half-quadratic, no data)"
        ),
    ] = "rtn",
    quant_compute: Annotated[
        str,
        typer.Option(
            help="int8 / int4: int8 (activations quantized per block, integer dot products; ONNX Runtime's "
            "accuracy_level 4) | fp32 (weights dequantized to float; on CPU int8 weights have no such kernel and "
            "are dequantized whole on every call: 30x slower). Both verified by the same gate. Default: int8 with "
            "--quant-activations fp32, fp32 with fp16 (int8 is refused there: inaccurate on the CPU provider)"
        ),
    ] = "",
    calibration_file: Annotated[
        Path | None,
        typer.Option(help="gptq: your calibration texts, one per line (\\n for a newline); default: built-in"),
    ] = None,
    quant_block_size: Annotated[int, typer.Option(help="int8 / int4: input rows per scale and zero point")] = 32,
    quant_activations: Annotated[
        str,
        typer.Option(
            help="int8 / int4: fp32 (the float32 graph quantized: for ONNX Runtime's CPU provider) | fp16 (the "
            "float16 graph quantized: float16 attention and MatMulNBits, what ONNX Runtime's CUDA provider runs; "
            "with fp32 activations its attention falls back to the CPU). Both verified against fp32 by the same gate"
        ),
    ] = "fp32",
    min_cosine: Annotated[
        float, typer.Option(help="Verification gate: worst cosine vs the reference; 0 = the precision's default")
    ] = 0.0,
    min_overlap: Annotated[
        float, typer.Option(help="int8 / int4 embeddings: mean overlap@10 vs fp32; 0 = the precision's default")
    ] = 0.0,
    min_spearman: Annotated[
        float, typer.Option(help="int8 / int4 embeddings: Spearman of scores vs fp32; 0 = the precision's default")
    ] = 0.0,
    max_score_diff: Annotated[
        float, typer.Option(help="Rerankers: largest |score diff| vs the reference; 0 = the precision's default")
    ] = 0.0,
    skip_if_published: Annotated[
        bool,
        typer.Option(
            help="With --name: exit 0 when OUTPUT/NAME already holds an export of this --model at this --precision "
            "(int8 / int4: and --quant-method, --quant-block-size, --quant-compute, --quant-activations); fail "
            "(exit 2) when it holds another one, instead of replacing it (write a new version directory)"
        ),
    ] = False,
) -> None:
    """Checkpoint -> verified ONNX (and TensorRT) -> Triton model repository with dynamic batching. Embedding
    checkpoints give an `embedding` model, Qwen3-Reranker checkpoints a `logits` (no, yes) one."""
    from export.exporter import resolved_compute

    quant_compute = resolved_compute(quant_compute, quant_activations)
    if (
        skip_if_published
        and name
        and published_elsewhere(
            output / name, model, precision, quant_method, quant_block_size, quant_compute, quant_activations
        )
    ):
        return
    from rich.console import Console

    from export.errors import ExportError
    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings

    console = Console(stderr=True)
    repo = RepoSettings(
        name=name,
        backend=backend,
        precision=precision,
        max_batch_size=max_batch_size,
        max_input_tokens=max_tokens,
        max_batch_tokens=max_batch_tokens,
        instances=instances,
        instance_kind=instance_kind,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue_size,
        ort_intra_op_threads=ort_threads,
        accelerator=accelerator,
        trt_engine_cache=trt_engine_cache,
    )
    opts = ExportOptions(
        model=model,
        output=output,
        repo=repo,
        device=device,
        verify_long_tokens=verify_long_tokens,
        min_dimensions=min_dimensions,
        skip_resource_check=skip_resource_check,
        attention=attention,
        auto_warmup=warmup,
        quant_method=quant_method,
        quant_block_size=quant_block_size,
        quant_compute=quant_compute,
        quant_activations=quant_activations,
        calibration_file=calibration_file,
        min_cosine=min_cosine,
        min_overlap=min_overlap,
        min_spearman=min_spearman,
        max_score_diff=max_score_diff,
    )
    try:
        run_export(opts, console)
    except ExportError as exc:
        console.print(f"[bold red]export failed:[/] {exc}")
        raise typer.Exit(code=2) from exc


def published_elsewhere(
    final: Path,
    model: str,
    precision: str,
    quant_method: str = "",
    quant_block_size: int = 0,
    quant_compute: str = "",
    quant_activations: str = "",
) -> bool:
    """True when `final` already holds an export of `model` at `precision` (int8 / int4: with `quant_method`,
    `quant_block_size`, `quant_compute` and `quant_activations`, when given) (nothing to do); False when nothing
    is published there.
    Exits 2 with one message when it holds an export of another source, precision or quantization: never
    skip over it (the facade would serve the old weights under the new name) and never replace a version that
    pods may be serving."""
    from export.repository import published_identity, same_source
    from export.triton_config import parse_precision

    try:
        published = published_identity(final)
    except Exception as exc:  # unreadable: not ours to replace silently either
        typer.echo(f"export refused: {final}/config.pbtxt is unreadable ({exc}); choose a new version", err=True)
        raise typer.Exit(code=2) from exc
    if published is None:
        return False
    differs = same_source(
        published,
        model,
        str(parse_precision(str(precision))),
        quant_method,
        quant_block_size,
        quant_compute,
        quant_activations,
    )
    if differs:
        typer.echo(
            f"export refused: {final} already holds another model: {differs}. Export into a new version directory "
            "(helm: exportJob.version / model.version) instead of skipping over it or replacing it",
            err=True,
        )
        raise typer.Exit(code=2)
    typer.echo(f"{final} already holds {model} ({published.precision}); nothing to export")
    return True


def export_if_missing(model: str, repository: Path, name: str, backend: str, precision: str) -> None:
    """`serve --model` (`make serve`): export MODEL when the repository lacks it. MODEL=dev builds the offline
    dev model. A repository that holds another model under that name stops with one message."""
    if (repository / name / "config.pbtxt").exists():
        if model != "dev":
            published_elsewhere(repository / name, model, precision)
        typer.echo(f"using the existing export in {repository / name}")
        return
    from rich.console import Console

    from export.errors import ExportError
    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings, parse_precision

    if model == "dev":
        from export.dev_model import build_dev_model

        if not (DEV_MODEL_DIR / "config.json").exists():
            build_dev_model(DEV_MODEL_DIR)
        model = str(DEV_MODEL_DIR)
    try:
        repo = RepoSettings(name=name, backend=backend, precision=parse_precision(precision))
        run_export(ExportOptions(model=model, output=repository, repo=repo, auto_warmup=True), Console(stderr=True))
    except ExportError as exc:
        typer.echo(f"export failed: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def register(ext: Extensions) -> None:
    """The `qwen3_embed.cli` entry point: adds the export commands and the export step of `serve --model`."""
    ext.app.command("dev-model")(dev_model)
    ext.app.command("export")(export)
    ext.prepare_model = export_if_missing
