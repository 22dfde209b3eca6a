"""The export command: checkpoint -> ONNX -> verification -> Triton repository entry (atomic)."""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from export.checkpoint import Checkpoint, resolve
from export.errors import ExportError
from export.samples import SAMPLES, long_sample
from export.triton_config import BACKENDS, PRECISIONS, ModelFacts, RepoSettings

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class ExportOptions:
    model: str
    output: Path
    repo: RepoSettings
    device: str = "auto"
    opset: int = 17
    verify_long_tokens: int = 1024
    min_dimensions: int = 32
    skip_resource_check: bool = False


def validate_options(opts: ExportOptions) -> None:
    r = opts.repo
    if r.backend not in BACKENDS:
        raise ExportError(f"--backend must be one of {', '.join(BACKENDS)}, not {r.backend!r}")
    if r.precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, not {r.precision!r}")
    if r.accelerator not in ("none", "tensorrt"):
        raise ExportError(f"--accelerator must be none or tensorrt, not {r.accelerator!r}")
    if r.accelerator != "none" and r.backend != "onnxruntime":
        raise ExportError("--accelerator applies to --backend onnxruntime only")
    for flag, value, low in (
        ("--max-batch-size", r.max_batch_size, 1),
        ("--max-tokens", r.max_input_tokens, 2),
        ("--instances", r.instances, 0),
        ("--max-queue-size", r.max_queue_size, 1),
        ("--min-dimensions", opts.min_dimensions, 1),
    ):
        if value < low:
            raise ExportError(f"{flag} must be >= {low}, got {value}")
    if not r.name.replace("_", "").replace("-", "").isalnum():
        raise ExportError(f"--name must be letters, digits, '_' or '-', got {r.name!r}")
    if opts.device not in ("auto", "cpu", "cuda"):
        raise ExportError(f"--device must be auto, cpu or cuda, not {opts.device!r}")


def check_resources(ckpt: Checkpoint, opts: ExportOptions) -> None:
    import psutil

    weight_bytes = ckpt.parameter_count() * DTYPE_BYTES[opts.repo.precision]
    # The loaded model, the traced graph and its serialised proto coexist for a moment.
    need_ram = int(weight_bytes * 2.5)
    need_disk = int(weight_bytes * (2.2 if opts.repo.backend == "tensorrt" else 1.1))
    free_ram = psutil.virtual_memory().available
    probe = opts.output if opts.output.exists() else opts.output.resolve().parent
    while not probe.exists():
        probe = probe.parent
    free_disk = shutil.disk_usage(probe).free
    gib = 1024**3
    if free_ram < need_ram:
        raise ExportError(
            f"not enough memory: exporting {ckpt.source} in {opts.repo.precision} needs about "
            f"{need_ram / gib:.1f} GiB, {free_ram / gib:.1f} GiB available (--skip-resource-check to try anyway)"
        )
    if free_disk < need_disk:
        raise ExportError(
            f"not enough disk under {probe}: need about {need_disk / gib:.1f} GiB, {free_disk / gib:.1f} GiB free"
        )


@contextmanager
def step(console: Console, title: str) -> Iterator[None]:
    start = time.perf_counter()
    with console.status(f"[bold]{title}…"):
        yield
    console.print(f"[green]✓[/] {title} ({time.perf_counter() - start:.1f} s)")


def sample_ids(ckpt: Checkpoint, long_tokens: int) -> dict[str, list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt.directory / "tokenizer.json"))
    eos = ckpt.config.get("eos_token_id", 151643)
    samples = dict(SAMPLES)
    samples[f"long (~{long_tokens} tokens)"] = long_sample(long_tokens)
    out = {}
    for name, text in samples.items():
        ids = tok.encode(text).ids
        if name.startswith("long"):
            ids = [*ids[: long_tokens - 1], ids[-1]]
        out[name] = ids
    # A broken tokenizer (no EOS appended) would make every vector wrong without failing parity.
    if any(ids[-1] != 151643 for ids in out.values()):
        raise ExportError(f"the tokenizer of {ckpt.source} does not append <|endoftext|> (eos id {eos})")
    return out


def print_table(console: Console, verification: object) -> None:
    from export.verify import Verification

    assert isinstance(verification, Verification)
    table = Table(
        title=f"ONNX Runtime ({verification.provider}) vs PyTorch, {verification.precision}, "
        f"threshold cosine >= {verification.threshold}"
    )
    for col in ("sample", "tokens", "cos alone", "cos batched", "max |diff|", "finite"):
        table.add_column(col)
    for r in verification.results:
        ok = r.finite and min(r.cosine_alone, r.cosine_batched) >= verification.threshold
        style = "green" if ok else "bold red"
        table.add_row(
            r.name,
            str(r.tokens),
            f"{r.cosine_alone:.7f}",
            f"{r.cosine_batched:.7f}",
            f"{r.max_abs_diff:.2e}",
            "yes" if r.finite else "NO",
            style=style,
        )
    console.print(table)


def run_export(opts: ExportOptions, console: Console | None = None) -> Path:
    """Returns the final model directory; raises ExportError (nothing final written) on any failure."""
    import torch

    from export.graph import LastTokenEmbedder, load_backbone
    from export.onnx_graph import export_onnx
    from export.repository import publish, write_model_dir
    from export.verify import reference_vectors, verify

    console = console or Console()
    validate_options(opts)
    started = time.perf_counter()
    with step(console, f"load {opts.model}"):
        ckpt = resolve(opts.model)
    if not opts.skip_resource_check:
        check_resources(ckpt, opts)
    repo = opts.repo
    max_tokens = min(repo.max_input_tokens, ckpt.max_position_embeddings)
    repo = replace(repo, max_input_tokens=max_tokens)
    if repo.warmup_lengths and max(repo.warmup_lengths) > max_tokens:
        raise ExportError(f"warm-up lengths must be <= --max-tokens ({max_tokens})")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[repo.precision]
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with step(console, f"load weights ({repo.precision}, {device})"):
        try:
            backbone = load_backbone(str(ckpt.directory), dtype).to(device)
        except (OSError, ValueError) as exc:
            raise ExportError(f"could not load {ckpt.source}: {exc}") from exc
    final = opts.output / repo.name
    # Staged inside the repository (same filesystem, so publishing is one rename; works when the
    # repository is a volume mount point). Removed on success and on failure.
    staging = opts.output / f".{repo.name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        onnx_path = staging / "1" / "model.onnx"
        samples = sample_ids(ckpt, min(opts.verify_long_tokens, max_tokens))
        with step(console, "PyTorch reference on the verification samples"):
            reference = reference_vectors(backbone, list(samples.values()))
        with step(console, "trace to ONNX"):
            export_onnx(LastTokenEmbedder(backbone), onnx_path, opset=opts.opset)
        # Free the PyTorch weights before ONNX Runtime loads its copy: halves peak memory at 4B/8B scale.
        del backbone
        gc.collect()
        with step(console, "verify ONNX Runtime against PyTorch"):
            verification = verify(onnx_path, reference, samples, repo.precision, pad_id=151643)
        print_table(console, verification)
        if not verification.passed:
            raise ExportError(
                f"verification failed: worst cosine {verification.worst_cosine:.7f} < {verification.threshold}"
                " or non-finite outputs; nothing was written"
            )
        if repo.backend == "tensorrt":
            from export.tensorrt_plan import build_plan

            with step(console, "build TensorRT plan"):
                build_plan(
                    onnx_path, staging / "1" / "model.plan", repo.precision, repo.max_batch_size, max_tokens
                )
            for f in staging.joinpath("1").glob("model.onnx*"):
                f.unlink()
        facts = ModelFacts(
            source_model=ckpt.source,
            hidden_size=ckpt.hidden_size,
            min_dimensions=min(opts.min_dimensions, ckpt.hidden_size),
            max_input_tokens=max_tokens,
            embedding_rows=ckpt.embedding_rows,
            precision=repo.precision,
            prompts=ckpt.prompts(),
        )
        report = {
            "source_model": ckpt.source,
            "backend": repo.backend,
            "precision": repo.precision,
            "provider": verification.provider,
            "threshold": verification.threshold,
            "worst_cosine": verification.worst_cosine,
            "samples": [asdict(r) for r in verification.results],
            "export_seconds": round(time.perf_counter() - started, 1),
        }
        with step(console, f"write {final}"):
            write_model_dir(staging, repo, facts, ckpt.tokenizer_files(), report)
            publish(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    console.print(f"[bold green]verified export written to {final}[/]")
    return final
