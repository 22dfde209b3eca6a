"""The export command: checkpoint -> ONNX -> verification -> Triton repository entry (atomic)."""

from __future__ import annotations

import gc
import resource
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from export.checkpoint import Checkpoint, resolve
from export.errors import ExportError
from export.memory import PeakMemory, gib
from export.resources import available_memory_bytes
from export.samples import LONG_RERANK_QUERY, RERANK_SAMPLES, SAMPLES, long_sample, rerank_ids
from export.triton_config import (
    BACKENDS,
    DEFAULT_NAMES,
    RepoSettings,
    default_warmup_lengths,
    deployment_facts,
    length_ladder,
    resolved_instances,
    resolved_kind,
)
from service.contract import RERANK_LABELS, RERANK_LOGITS, ModelFacts, ModelKind, Precision, SpecialIds

# Which graph an export writes (docs/export.md, "Two graphs"). fused: attention as ONNX Runtime's
# GroupQueryAttention, memory linear in tokens, right padding (the python and onnxruntime backends).
# eager: the traced standard-op graph, [L, L] scores, left padding (TensorRT cannot parse contrib ops).
ATTENTION_CHOICES = ("auto", "fused", "eager")
# Without --max-tokens the eager graph stops here: its scores grow with the square of the length.
EAGER_DEFAULT_MAX_TOKENS = 8192
# The long verification sample without --verify-long-tokens: 16k on the fused graph (full context is what it
# is for), 1k on the eager one (its ORT run would need GBs of scores).
FUSED_VERIFY_LONG_TOKENS = 16384
EAGER_VERIFY_LONG_TOKENS = 1024


@dataclass(frozen=True)
class ExportOptions:
    model: str
    output: Path
    repo: RepoSettings
    device: str = "auto"
    opset: int = 17
    verify_long_tokens: int = 0  # 0 = by graph: FUSED_ / EAGER_VERIFY_LONG_TOKENS
    min_dimensions: int = 32
    skip_resource_check: bool = False
    attention: str = "auto"  # ATTENTION_CHOICES; auto = fused unless the backend is tensorrt
    # Warm-up lengths chosen once max tokens is known (default_warmup_lengths); repo.warmup_lengths otherwise.
    auto_warmup: bool = False
    # --precision int8 / int4 (export/quantize.py): method and block size of the linear layers.
    quant_method: str = "rtn"
    quant_block_size: int = 32
    quant_compute: str = ""  # quantize.COMPUTE_LEVELS; "" = quantize.DEFAULT_COMPUTE of quant_activations
    # quantize.ACTIVATIONS: "fp32" (the float32 graph quantized; CPU) or "fp16" (the float16 graph; GPU).
    quant_activations: str = "fp32"
    calibration_file: Path | None = None  # gptq: one text per line; None = export/quant_texts.py's
    # Gate overrides (0 = the precision's own: verify.THRESHOLDS, SCORE_TOLERANCES, MIN_OVERLAP_AT_10,
    # MIN_SPEARMAN).
    min_cosine: float = 0.0
    min_overlap: float = 0.0
    min_spearman: float = 0.0
    max_score_diff: float = 0.0


def resolved_attention(opts: ExportOptions) -> str:
    if opts.attention != "auto":
        return opts.attention
    return "eager" if opts.repo.backend == "tensorrt" else "fused"


def validate_options(opts: ExportOptions) -> None:
    r = opts.repo
    if r.backend not in BACKENDS:
        raise ExportError(f"--backend must be one of {', '.join(BACKENDS)}, not {r.backend!r}")
    if r.accelerator not in ("none", "tensorrt"):
        raise ExportError(f"--accelerator must be none or tensorrt, not {r.accelerator!r}")
    if r.accelerator != "none" and r.backend != "onnxruntime":
        raise ExportError("--accelerator applies to --backend onnxruntime only")
    if opts.attention not in ATTENTION_CHOICES:
        raise ExportError(f"--attention must be one of {', '.join(ATTENTION_CHOICES)}, not {opts.attention!r}")
    # ORT's TensorRT execution provider (--accelerator tensorrt) hands the contrib ops to the CUDA provider;
    # a TensorRT plan (--backend tensorrt) has no such fallback.
    if opts.attention == "fused" and r.backend == "tensorrt":
        raise ExportError("--attention fused needs ONNX Runtime: TensorRT cannot parse com.microsoft ops")
    if r.max_input_tokens == 1 or r.max_input_tokens < 0:  # 0 = the default, decided from the checkpoint
        raise ExportError(f"--max-tokens must be >= 2 (or 0: the model's limit), got {r.max_input_tokens}")
    for flag, value, low in (
        ("--max-batch-size", r.max_batch_size, 1),
        ("--max-batch-tokens", r.max_batch_tokens, 1),
        ("--instances", r.instances, 0),
        ("--max-queue-size", r.max_queue_size, 1),
        ("--min-dimensions", opts.min_dimensions, 1),
    ):
        if value < low:
            raise ExportError(f"{flag} must be >= {low}, got {value}")
    if r.name and not r.name.replace("_", "").replace("-", "").isalnum():
        raise ExportError(f"--name must be letters, digits, '_' or '-', got {r.name!r}")
    if opts.device not in ("auto", "cpu", "cuda"):
        raise ExportError(f"--device must be auto, cpu or cuda, not {opts.device!r}")
    if r.precision.weight_bits:
        from export.quantize import validate as validate_quant

        validate_quant(quant_settings(opts))
        if resolved_attention(opts) != "fused":
            raise ExportError(
                f"--precision {r.precision} needs the fused graph (ONNX Runtime's MatMulNBits): not --attention eager "
                "or --backend tensorrt"
            )
    if not r.precision.weight_bits and opts.quant_activations != "fp32":
        # A float export's activations are its precision's: --precision fp16 is the float16 graph.
        raise ExportError(f"--quant-activations applies to --precision int8/int4, not {r.precision}")
    for gate, bound in (
        ("--min-cosine", opts.min_cosine),
        ("--min-overlap", opts.min_overlap),
        ("--min-spearman", opts.min_spearman),
        ("--max-score-diff", opts.max_score_diff),
    ):
        if not 0.0 <= bound <= 1.0:
            raise ExportError(f"{gate} must be within [0, 1] (0 = the precision's default), got {bound}")


def quant_accuracy_level(compute: str) -> int:
    """MatMulNBits' accuracy_level the graph carries for --quant-compute (0: the attribute is left out)."""
    from export.quantize import COMPUTE_LEVELS

    return COMPUTE_LEVELS[compute]


def quant_settings(opts: ExportOptions) -> Any:
    from export.quantize import QuantSettings

    return QuantSettings(
        opts.repo.precision,
        opts.quant_method,
        opts.quant_block_size,
        resolved_compute(opts.quant_compute, opts.quant_activations),
        activations=opts.quant_activations,
    )


def resolved_compute(compute: str, activations: str) -> str:
    """--quant-compute as given, or (not given) the default for the activations: int8 with fp32, fp32 with fp16."""
    from export.quantize import DEFAULT_COMPUTE

    return compute or DEFAULT_COMPUTE.get(activations, "int8")


def graph_precision(opts: ExportOptions) -> Precision:
    """The precision the fused graph is built in: the export's own for float exports; for int8 / int4 the float
    graph whose linear layers are then quantized, float32 or (--quant-activations fp16) float16. The PyTorch
    reference stays float32 either way: the gate measures the quantized graph against fp32."""
    if opts.repo.precision.weight_bits and opts.quant_activations == "fp16":
        return Precision.FP16
    return opts.repo.precision


def check_resources(ckpt: Checkpoint, opts: ExportOptions) -> None:
    weight_bytes = ckpt.loaded_parameter_count() * opts.repo.precision.itemsize
    # The loaded model, the traced graph and its serialised proto coexist for a moment.
    need_ram = int(weight_bytes * 2.5)
    need_disk = int(weight_bytes * (2.2 if opts.repo.backend == "tensorrt" else 1.1))
    free_ram = available_memory_bytes()  # the container's cgroup limit, not the node's memory
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
    # The process's peak RSS so far: at 4B/8B scale it shows which step needs the memory.
    peak = gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    console.print(f"[green]✓[/] {title} ({time.perf_counter() - start:.1f} s, peak RSS {peak})")


def sample_ids(ckpt: Checkpoint, long_tokens: int) -> dict[str, list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt.directory / "tokenizer.json"))
    samples = dict(SAMPLES)
    samples[f"long (~{long_tokens} tokens)"] = long_sample(long_tokens)
    out = {}
    for name, text in samples.items():
        ids = tok.encode(text).ids
        if name.startswith("long"):
            ids = [*ids[: long_tokens - 1], ids[-1]]
        out[name] = ids
    return out


def rerank_sample_ids(ckpt: Checkpoint, long_tokens: int) -> dict[str, list[int]]:
    """The reranker's verification samples: (query, document) pairs formatted as the official usage does, plus
    one long document cut to `long_tokens` in all."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt.directory / "tokenizer.json"))
    out = {name: rerank_ids(tok, q, d, long_tokens) for name, (q, d) in RERANK_SAMPLES.items()}
    out[f"long document (~{long_tokens} tokens)"] = rerank_ids(
        tok, LONG_RERANK_QUERY, long_sample(long_tokens), long_tokens
    )
    return out


def print_rerank_table(console: Console, verification: object) -> None:
    from export.verify import RerankVerification

    assert isinstance(verification, RerankVerification)
    table = Table(
        title=f"ONNX Runtime ({verification.provider}) vs transformers' causal LM, {verification.precision}, "
        f"threshold |score diff| <= {verification.tolerance:g}, same ranking"
    )
    for col in ("sample", "tokens", "score (ref)", "|diff| alone", "|diff| batched", "max |logit diff|", "finite"):
        table.add_column(col)
    for r in verification.results:
        ok = r.finite and r.score_diff <= verification.tolerance
        table.add_row(
            r.name,
            str(r.tokens),
            f"{r.reference_score:.6f}",
            f"{abs(r.score_alone - r.reference_score):.2e}",
            f"{abs(r.score_batched - r.reference_score):.2e}",
            f"{r.max_logit_diff:.2e}",
            "yes" if r.finite else "NO",
            style="green" if ok else "bold red",
        )
    console.print(table)
    if not verification.ranking_kept:
        console.print("[bold red]the graph ranks the samples differently from the reference[/]")


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
    """Returns the final model directory; raises ExportError (nothing final written) on any failure.
    An embedding checkpoint gives the `embedding` graph, a reranker (Checkpoint.kind) the `logits` one."""
    import torch

    from export.repository import publish, write_model_dir

    console = console or Console()
    validate_options(opts)
    started = time.perf_counter()
    with step(console, f"load {opts.model}"):
        ckpt = resolve(opts.model)
        kind = ckpt.kind
        special = ckpt.special_ids()
        token_ids = ckpt.rerank_token_ids() if kind is ModelKind.RERANKER else None
    if not opts.skip_resource_check:
        check_resources(ckpt, opts)
    repo = opts.repo
    if not repo.name:
        repo = replace(repo, name=DEFAULT_NAMES[kind])
    attention = resolved_attention(opts)
    fused = attention == "fused"
    requested = repo.max_input_tokens or (ckpt.max_position_embeddings if fused else EAGER_DEFAULT_MAX_TOKENS)
    max_tokens = min(requested, ckpt.max_position_embeddings)
    repo = replace(repo, max_input_tokens=max_tokens)
    if opts.auto_warmup:  # the ladder deployment_facts writes as length_buckets: what the facade will send
        repo = replace(repo, warmup_lengths=tuple(default_warmup_lengths(length_ladder(repo, max_tokens))))
    if repo.warmup_lengths and max(repo.warmup_lengths) > max_tokens:
        raise ExportError(f"warm-up lengths must be <= --max-tokens ({max_tokens})")
    dtype = getattr(torch, repo.precision.dtype_name)
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    final = opts.output / repo.name
    # Staged inside the repository (same filesystem, so publishing is one rename; works when the
    # repository is a volume mount point). Removed on success and on failure.
    staging = opts.output / f".{repo.name}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        onnx_path = staging / "1" / "model.onnx"
        long_tokens = opts.verify_long_tokens or (FUSED_VERIFY_LONG_TOKENS if fused else EAGER_VERIFY_LONG_TOKENS)
        padding_side = "right" if fused else "left"
        # The helpers own the loaded weights (no reference to them is kept here), so they can free them before
        # ONNX Runtime loads its copy: halves peak memory at 4B/8B scale.
        graph_args = (console, opts, ckpt, dtype, device, onnx_path, min(long_tokens, max_tokens), fused, special)
        if token_ids is not None:
            verification = _reranker_graph(*graph_args, token_ids)
        else:
            verification = _embedding_graph(*graph_args)
        gc.collect()
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
            source_revision=ckpt.revision(),
            hidden_size=ckpt.hidden_size,
            min_dimensions=min(opts.min_dimensions, ckpt.hidden_size),
            max_input_tokens=max_tokens,
            embedding_rows=ckpt.embedding_rows,
            prompts=ckpt.prompts(),
            pad_id=special.pad_id,
            eos_id=special.eos_id,
            padding_side=padding_side,
            kind=kind,
            rerank_token_ids=",".join(str(i) for i in token_ids) if token_ids is not None else "",
            **quantization_facts(opts, verification),
        )
        graph_bytes = sum(f.stat().st_size for f in onnx_path.parent.glob("model.onnx*")) if onnx_path.exists() else 0
        memory = PeakMemory.for_model(
            ckpt.config, ckpt.parameter_count(), repo.precision, fused=fused,
            graph_bytes=graph_bytes if repo.precision.weight_bits else 0,
        )
        facts = deployment_facts(repo, facts, memory)
        settings = quant_settings(opts)
        report = {
            "source_model": ckpt.source,
            "source_revision": facts.source_revision,
            "kind": str(kind),
            "dimensions": ckpt.hidden_size,
            "backend": repo.backend,
            "attention": attention,
            "padding_side": padding_side,
            "precision": repo.precision,
            **(
                {
                    "quantization": {
                        "bits": repo.precision.weight_bits,
                        "compute": settings.compute,
                        "accuracy_level": quant_accuracy_level(settings.compute),
                        # The token embedding table's dtype in the graph (export/quantize.py: float16 rows, cast
                        # to float32 after the Gather).
                        "embedding": settings.embedding,
                        # MatMulNBits' and GroupQueryAttention's input dtype (--quant-activations).
                        "activations": opts.quant_activations,
                        **quantization_facts(opts, verification),
                    }
                }
                if repo.precision.weight_bits
                else {}
            ),
            **verification_report(verification),
            "export_seconds": round(time.perf_counter() - started, 1),
            # The export process's peak RSS so far (ru_maxrss: KiB on Linux).
            "export_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "expected_peak_bytes_per_instance": facts.expected_peak_bytes_per_instance,
        }
        with step(console, f"write {final}"):
            write_model_dir(staging, repo, facts, ckpt.tokenizer_files(), report)
            publish(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    console.print(memory_summary(repo, facts, memory))
    console.print(f"[bold green]verified export written to {final}[/]")
    return final


def _load_weights(
    console: Console, opts: ExportOptions, ckpt: Checkpoint, dtype: Any, device: str, fused: bool, causal: bool
) -> Any:
    """The bare Qwen3Model, or (causal) the whole causal LM of a reranker."""
    from export import graph

    with step(console, f"load weights ({opts.repo.precision}, {device})"):
        try:
            # The fused graph is built from the weights, not traced: the reference may use SDPA, which runs
            # the 16k-token verification sample without eager attention's GBs of scores.
            impl = "sdpa" if fused else "eager"
            load = graph.load_causal_lm if causal else graph.load_backbone
            return load(str(ckpt.directory), dtype, attention=impl).to(device)
        except (OSError, ValueError) as exc:
            raise ExportError(f"could not load {ckpt.source}: {exc}") from exc


def _embedding_graph(
    console: Console,
    opts: ExportOptions,
    ckpt: Checkpoint,
    dtype: Any,
    device: str,
    onnx_path: Path,
    long_tokens: int,
    fused: bool,
    special: SpecialIds,
) -> object:
    """Reference vectors, the embedding graph, its verification (raises ExportError when it fails)."""
    from export import graph
    from export.verify import reference_vectors, verify

    backbone = _load_weights(console, opts, ckpt, dtype, device, fused, causal=False)
    pad_id, eos_id, padding_side = special.pad_id, special.eos_id, "right" if fused else "left"
    samples = sample_ids(ckpt, long_tokens)
    with step(console, "PyTorch reference on the verification samples"):
        reference = reference_vectors(backbone, list(samples.values()))
    quantized = opts.repo.precision.weight_bits > 0
    if quantized:
        queries, documents = retrieval_ids(ckpt)
        with step(console, "PyTorch reference on the retrieval set"):
            retrieval_ref = (
                np.stack(reference_vectors(backbone, queries)), np.stack(reference_vectors(backbone, documents))
            )
    if fused:
        from export.fused_graph import build_fused_graph, save_fused_graph

        with step(console, "build the fused-attention ONNX graph"):
            model = build_fused_graph(backbone, graph_precision(opts), ckpt.max_position_embeddings)
            save_fused_graph(model, onnx_path)
            del model
        quantize_step(console, opts, ckpt, onnx_path)
    else:
        from export.onnx_graph import export_onnx

        with step(console, "trace to ONNX"):
            export_onnx(graph.LastTokenEmbedder(backbone), onnx_path, eos_id, opset=opts.opset)
    # Free the PyTorch weights before ONNX Runtime loads its copy: halves peak memory at 4B/8B scale.
    del backbone
    gc.collect()
    with step(console, "verify ONNX Runtime against PyTorch"):
        verification = verify(
            onnx_path, reference, samples, opts.repo.precision, pad_id=pad_id, padding_side=padding_side,
            threshold=opts.min_cosine,
        )
    print_table(console, verification)
    if not verification.passed:
        raise ExportError(
            f"verification failed: worst cosine {verification.worst_cosine:.7f} < {verification.threshold}"
            " or non-finite outputs; nothing was written"
        )
    if quantized:
        from export.verify import MIN_OVERLAP_AT_10, MIN_SPEARMAN, graph_vectors, retrieval_agreement

        precision = opts.repo.precision
        with step(console, "retrieval check: the graph's top-10 neighbours against the fp32 reference's"):
            ours = graph_vectors(onnx_path, precision, [queries, documents], pad_id, padding_side)
            retrieval = retrieval_agreement(
                retrieval_ref, (ours[0], ours[1]), opts.min_overlap or MIN_OVERLAP_AT_10[precision],
                opts.min_spearman or MIN_SPEARMAN[precision],
            )
        console.print(
            f"retrieval ({len(queries)} queries x {len(documents)} documents): overlap@10 {retrieval.overlap_at_10:.3f}"
            f" (worst query {retrieval.worst_overlap_at_10:.2f}, needs >= {retrieval.min_overlap_at_10}), Spearman "
            f"{retrieval.spearman:.4f} (needs >= {retrieval.min_spearman})",
            style="green" if retrieval.passed else "bold red",
        )
        if not retrieval.passed:
            raise ExportError(
                f"retrieval check failed: overlap@10 {retrieval.overlap_at_10:.3f} (needs >= "
                f"{retrieval.min_overlap_at_10}) or Spearman {retrieval.spearman:.4f} (needs >= "
                f"{retrieval.min_spearman}) against the fp32 reference; nothing was written"
            )
        return verification, retrieval
    return verification


def _reranker_graph(
    console: Console,
    opts: ExportOptions,
    ckpt: Checkpoint,
    dtype: Any,
    device: str,
    onnx_path: Path,
    long_tokens: int,
    fused: bool,
    special: SpecialIds,
    token_ids: tuple[int, int],
) -> object:
    """Reference logits from the whole causal LM, the reranker graph (backbone + the two head rows), its
    verification (raises ExportError when it fails)."""
    from export import graph
    from export.verify import reference_rerank_logits, verify_reranker

    causal_lm = _load_weights(console, opts, ckpt, dtype, device, fused, causal=True)
    pad_id, eos_id, padding_side = special.pad_id, special.eos_id, "right" if fused else "left"
    samples = rerank_sample_ids(ckpt, long_tokens)
    with step(console, "transformers reference (causal LM) on the formatted verification pairs"):
        reference = reference_rerank_logits(causal_lm, list(samples.values()), token_ids)
    rows = graph.rerank_head_rows(causal_lm, token_ids)
    backbone: Any = causal_lm.model
    if fused:
        from export.fused_graph import RerankHead, build_fused_graph, save_fused_graph

        title = f"build the fused-attention ONNX graph (reranker head: rows {token_ids} = {RERANK_LABELS})"
        with step(console, title):
            model = build_fused_graph(
                backbone, graph_precision(opts), ckpt.max_position_embeddings, head=RerankHead(rows, token_ids)
            )
            save_fused_graph(model, onnx_path)
            del model
        quantize_step(console, opts, ckpt, onnx_path)
    else:
        from export.onnx_graph import export_onnx

        with step(console, "trace to ONNX"):
            export_onnx(
                graph.LastTokenReranker(backbone, rows), onnx_path, eos_id, opset=opts.opset,
                output_name=RERANK_LOGITS,
            )
    del backbone, rows, causal_lm
    gc.collect()
    with step(console, "verify ONNX Runtime against transformers"):
        verification = verify_reranker(
            onnx_path, reference, samples, opts.repo.precision, pad_id=pad_id, padding_side=padding_side,
            tolerance=opts.max_score_diff,
        )
    print_rerank_table(console, verification)
    if not verification.passed:
        raise ExportError(
            f"verification failed: worst |score diff| {verification.worst_score_diff:.2e} > "
            f"{verification.tolerance:g}, a different ranking, or non-finite outputs; nothing was written"
        )
    return verification


def quantize_step(console: Console, opts: ExportOptions, ckpt: Checkpoint, onnx_path: Path) -> None:
    """--precision int8 / int4: the float graph's linear layers -> MatMulNBits, in place, before verification."""
    if not opts.repo.precision.weight_bits:
        return
    from export.quantize import quantize_graph

    settings = quant_settings(opts)
    calibration = calibration_ids(ckpt, opts.calibration_file) if settings.method == "gptq" else []
    title = (
        f"quantize the linear layers ({settings.precision}, {settings.method}, block {settings.block_size}, "
        f"{settings.compute} compute, {settings.activations} activations)"
    )
    if calibration:
        title += f" on {len(calibration)} calibration texts"
    with step(console, title):
        quantize_graph(onnx_path, settings, calibration)


def calibration_ids(ckpt: Checkpoint, path: Path | None) -> list[list[int]]:
    """The calibration texts as the graph will see them: tokenized texts for an embedding model, formatted
    (query, document) pairs for a reranker; each cut to CALIBRATION_MAX_TOKENS."""
    from tokenizers import Tokenizer

    from export.quant_texts import calibration_texts
    from export.quantize import CALIBRATION_MAX_TOKENS

    tok = Tokenizer.from_file(str(ckpt.directory / "tokenizer.json"))
    texts = calibration_texts(path)
    if ckpt.kind is ModelKind.RERANKER:
        # Each text judged against the next one's opening as the query: relevant-looking and unrelated pairs.
        return [
            rerank_ids(tok, texts[(i + 1) % len(texts)][:120], text, CALIBRATION_MAX_TOKENS)
            for i, text in enumerate(texts)
        ]
    return [tok.encode(t).ids[:CALIBRATION_MAX_TOKENS] for t in texts]


def retrieval_ids(ckpt: Checkpoint) -> tuple[list[list[int]], list[list[int]]]:
    from tokenizers import Tokenizer

    from export.quant_texts import DOCUMENTS, RETRIEVAL_QUERIES

    tok = Tokenizer.from_file(str(ckpt.directory / "tokenizer.json"))
    return [tok.encode(t).ids for t in RETRIEVAL_QUERIES], [tok.encode(t).ids for t in DOCUMENTS]


def quantization_facts(opts: ExportOptions, verification: object) -> dict[str, Any]:
    """The ModelFacts quantization fields (config.pbtxt; GetInfo and /v1/models show them); {} for float."""
    if not opts.repo.precision.weight_bits:
        return {}
    from export.verify import RerankVerification, Retrieval, Verification

    agreement: dict[str, float] = {}
    checks = verification if isinstance(verification, tuple) else (verification,)
    for check in checks:
        if isinstance(check, Verification):
            agreement["worst_cosine"] = round(check.worst_cosine, 6)
        elif isinstance(check, Retrieval):
            agreement["overlap_at_10"] = round(check.overlap_at_10, 4)
            agreement["spearman"] = round(check.spearman, 4)
        elif isinstance(check, RerankVerification):
            agreement["worst_score_diff"] = round(check.worst_score_diff, 6)
    return {
        "quantization_method": opts.quant_method,
        "quantization_block_size": opts.quant_block_size,
        "quantization_compute": resolved_compute(opts.quant_compute, opts.quant_activations),
        "quantization_activations": opts.quant_activations,
        "quantization_agreement": agreement,
    }


def verification_report(verification: object) -> dict[str, object]:
    """The export_report.json fields of either verification (and, quantized, the retrieval check)."""
    from export.verify import RerankVerification, Retrieval, Verification

    if isinstance(verification, tuple):
        checks = [v for v in verification if not isinstance(v, Retrieval)]
        retrieval = [asdict(v) for v in verification if isinstance(v, Retrieval)]
        return {**verification_report(checks[0]), "retrieval": retrieval[0]}

    if isinstance(verification, RerankVerification):
        return {
            "provider": verification.provider,
            "score_tolerance": verification.tolerance,
            "worst_score_diff": verification.worst_score_diff,
            "max_logit_diff": verification.max_logit_diff,
            "ranking_kept": verification.ranking_kept,
            "samples": [asdict(r) for r in verification.results],
        }
    assert isinstance(verification, Verification)
    return {
        "provider": verification.provider,
        "threshold": verification.threshold,
        "worst_cosine": verification.worst_cosine,
        "samples": [asdict(r) for r in verification.results],
    }


def memory_summary(repo: RepoSettings, facts: ModelFacts, memory: PeakMemory) -> str:
    """The expected peak per instance (also in config.pbtxt) and what it is made of."""
    if not facts.expected_peak_bytes_per_instance:
        return "expected peak memory: not estimated for TensorRT engines (TensorRT sizes them at build time)"
    rows, width = memory.worst_run(facts.max_batch_tokens, facts.max_input_tokens, repo.max_batch_size)
    instances = resolved_instances(repo)
    where = "host RAM" if resolved_kind(repo) == "CPU" else "GPU memory"
    text = (
        f"expected peak memory per instance: {gib(facts.expected_peak_bytes_per_instance)} ({where}: weights "
        f"{gib(memory.weight_bytes)} + largest ONNX Runtime run [{rows} x {width}] {gib(memory.run_bytes(rows, width))}"
        f" + runtime), x {instances} instance(s) = {gib(instances * facts.expected_peak_bytes_per_instance)}"
    )
    if facts.max_batch_tokens:
        text += f"; runs are split at {facts.max_batch_tokens} padded tokens (--max-batch-tokens)"
    else:
        # Triton's onnxruntime backend runs the dynamic batcher's whole batch: only fewer rows or tokens help.
        text += (
            f"; [yellow]the {facts.backend} backend runs Triton's merged batch whole (up to --max-batch-size "
            "rows of one width): lower --max-batch-size / --max-tokens, or use --backend python, to bound it[/]"
        )
    return text
