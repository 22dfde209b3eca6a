"""Triton model configuration (config.pbtxt) for each backend, built on Triton's own ModelConfig schema."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ExportError
from export.memory import MIB, PeakMemory
from service.contract import (
    ATTENTION_MASK,
    INPUT_IDS,
    INPUT_NAMES,
    PRIORITY_LEVEL_INTERACTIVE,
    PRIORITY_LEVELS,
    ModelFacts,
    ModelKind,
    Precision,
    default_buckets,
)

BACKENDS = ("python", "onnxruntime", "tensorrt")
# The Triton model name when none is given (RepoSettings.name ""; `export` without --name).
DEFAULT_NAMES = {ModelKind.EMBEDDING: "qwen3_embedding", ModelKind.RERANKER: "qwen3_reranker"}

# Triton's onnxruntime backend reads these model parameters (onnxruntime_backend README, "Model Config
# Options"): the same memory behaviour model.py sets up for the Python backend, except that the backend
# shrinks the CPU arena after every run (it has no per-run choice). The GPU arena grows by what is asked
# (kSameAsRequested) instead of doubling; it is not shrunk, because one "gpu:N" entry for all instances would
# fail every run of an instance on another GPU.
ORT_BACKEND_MEMORY_PARAMETERS = {
    "enable_mem_arena": "1",
    "enable_mem_pattern": "0",
    "memory.enable_memory_arena_shrinkage": "cpu:0",
    "arena_extend_strategy": "1",
}


@dataclass(frozen=True)
class RepoSettings:
    # "" = by the checkpoint's kind (DEFAULT_NAMES), decided by the exporter.
    name: str = DEFAULT_NAMES[ModelKind.EMBEDDING]
    backend: str = "python"
    precision: Precision = Precision.FP32
    max_batch_size: int = 32
    # 0 = the default: the checkpoint's max_position_embeddings with the fused graph, 8192 with the eager one
    # (export/exporter.py resolves it).
    max_input_tokens: int = 0
    # Padded tokens (rows x width) per ONNX Runtime run in model.py: Triton merges requests of one width up
    # to max_batch_size rows, so without it a merged batch could be max_batch_size times a facade chunk.
    # 16,384 = the facade's default token_budget.
    max_batch_tokens: int = 16384
    instances: int = 0  # 0 = auto: one per CPU core for CPU instances, 1 per GPU
    instance_kind: str = "auto"  # auto: CPU for python, GPU otherwise
    max_queue_delay_us: int = 500
    max_queue_size: int = 256
    queue_timeout_us: int = 30_000_000
    ort_intra_op_threads: int = 0
    # model.py gives its ORT arena back after a run estimated above this; smaller runs keep it (no re-faulting
    # of pages on the common short-text path). See export/memory.py and docs in model.py.
    ort_arena_keep_bytes: int = 256 * MIB
    accelerator: str = "none"  # onnxruntime backend: none | tensorrt
    trt_engine_cache: str = "/tmp/trt-cache"
    warmup_lengths: tuple[int, ...] = field(default_factory=tuple)
    # The facade's padded lengths, written as the length_buckets parameter; () = default_buckets(max tokens).
    length_buckets: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Callers may pass the flag's string ("fp16"); the field is always the enum.
        object.__setattr__(self, "precision", parse_precision(self.precision))


def parse_precision(text: str) -> Precision:
    """A bad value is the user's to fix, so it is an ExportError (one clear line), not a ValueError."""
    if text not in tuple(Precision):
        raise ExportError(f"--precision must be one of {', '.join(Precision)}, not {text!r}")
    return Precision(text)


def resolved_kind(settings: RepoSettings) -> str:
    if settings.instance_kind != "auto":
        return settings.instance_kind
    return "CPU" if settings.backend == "python" else "GPU"


def resolved_instances(settings: RepoSettings) -> int:
    """Auto (0): one CPU instance per core, each running ONNX Runtime on one thread. Measured on 2 cores
    (docs/benchmarks.md, tuning): 2 instances x 1 thread served mixed-length traffic 14.5x faster than one
    instance, because one instance runs the different bucket shapes one after another. On GPUs: 1."""
    if settings.instances > 0:
        return settings.instances
    return max(1, min(os.cpu_count() or 1, 8)) if resolved_kind(settings) == "CPU" else 1


def resolved_ort_threads(settings: RepoSettings) -> int:
    """Auto (0): one intra-op thread per instance when several CPU instances share the cores."""
    if settings.ort_intra_op_threads > 0:
        return settings.ort_intra_op_threads
    return 1 if resolved_kind(settings) == "CPU" and resolved_instances(settings) > 1 else 0


def length_ladder(settings: RepoSettings, max_input_tokens: int) -> list[int]:
    """The bucket ladder an export writes (Param.LENGTH_BUCKETS) and warms up: settings.length_buckets below
    max_input_tokens, then max_input_tokens; without them the default ladder, the one the facade computes
    for exports that carry none."""
    if not settings.length_buckets:
        return default_buckets(max_input_tokens)
    return [*sorted({b for b in settings.length_buckets if 0 < b < max_input_tokens}), max_input_tokens]


def deployment_facts(settings: RepoSettings, facts: ModelFacts, memory: PeakMemory | None = None) -> ModelFacts:
    """The checkpoint's facts plus what these settings decide: backend, thread count, token budget, the length
    buckets and the expected peak per instance (from `memory`; without it the facts' own memory fields stay
    as they are)."""
    facts = replace(
        facts,
        backend=settings.backend,
        precision=settings.precision,
        ort_intra_op_threads=resolved_ort_threads(settings),
        length_buckets=tuple(length_ladder(settings, facts.max_input_tokens)),
    )
    python = settings.backend == "python"
    # Only model.py splits batches by tokens and reads the arena knobs; the other backends run Triton's batch.
    facts = replace(
        facts,
        max_batch_tokens=settings.max_batch_tokens if python else 0,
        ort_arena_keep_bytes=settings.ort_arena_keep_bytes if python else 0,
    )
    if memory is None:
        return facts
    if settings.backend == "tensorrt":  # TensorRT engines are not the eager ORT graph the formula describes
        return replace(facts, expected_peak_bytes_per_instance=0)
    return replace(
        facts,
        activation_bytes_per_token=memory.bytes_per_token if python else 0,
        activation_bytes_per_score=memory.bytes_per_score if python else 0,
        expected_peak_bytes_per_instance=memory.instance_bytes(
            facts.max_batch_tokens, facts.max_input_tokens, settings.max_batch_size
        ),
    )


# Warm-up stops here, not at the longest rungs: a 32k-token run would only add its seconds to every start of
# every instance.
WARMUP_MAX_TOKENS = 8192


def default_warmup_lengths(ladder: Sequence[int]) -> list[int]:
    """The lengths Triton runs once per instance before READY, all rungs of the model's ladder (the
    length_buckets export writes, so shapes the facade will send): one rung per octave up to WARMUP_MAX_TOKENS
    and the largest rung there (with the default ladder: the powers of two, as before the finer ladder).

    Why not every rung (benchmarks/warmup_cost.py, docs/benchmarks.md "Warm-up"): what a warm-up buys on ONNX
    Runtime is the first run of an instance (~150 ms on the dev model), not a shape; a rung first seen after
    warm-up ran no slower than a warmed one, while warming all 27 rungs of a 3-per-octave ladder to 8192 started
    Triton 1.5x slower.
    Ending at the largest rung also leaves TensorRT's shape range covering every rung below it."""
    rungs = [b for b in ladder if b <= WARMUP_MAX_TOKENS]
    out: list[int] = []
    for b in rungs:
        if not out or b >= 2 * out[-1]:
            out.append(b)
    if rungs and out[-1] != rungs[-1]:
        out.append(rungs[-1])
    return out


def warmup_file(length: int) -> str:
    """File name under <model>/warmup/ holding `length` int64 ones."""
    return f"ones_{length}"


def build_config(settings: RepoSettings, facts: ModelFacts) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=settings.name, max_batch_size=settings.max_batch_size)
    if settings.backend == "python":
        cfg.backend = "python"
    elif settings.backend == "onnxruntime":
        cfg.platform = "onnxruntime_onnx"
    elif settings.backend == "tensorrt":
        cfg.platform = "tensorrt_plan"
    else:
        raise ValueError(f"unknown backend {settings.backend}")
    # TensorRT plans built from the ONNX graph take int64 ids only where the engine keeps them; the
    # onnx graph itself is int64 everywhere.
    for name in INPUT_NAMES:
        cfg.input.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    # embedding [hidden] or, for a reranker, logits [2] (RERANK_LABELS).
    cfg.output.add(name=facts.kind.output, data_type=mc.TYPE_FP32, dims=[facts.kind.output_width(facts.hidden_size)])

    batching = cfg.dynamic_batching
    batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    policy = batching.default_queue_policy
    # Bounded queue: overload is rejected (UNAVAILABLE "Exceeds maximum queue size"), never queued forever.
    policy.max_queue_size = settings.max_queue_size
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = settings.queue_timeout_us
    policy.allow_timeout_override = True
    # Priority classes (service/priority.py): the facade sends each call's level; interactive calls leave the
    # queue before bulk ones. The default queue policy applies to every level.
    batching.priority_levels = PRIORITY_LEVELS
    batching.default_priority_level = PRIORITY_LEVEL_INTERACTIVE

    kind = resolved_kind(settings)
    cfg.instance_group.add(
        count=resolved_instances(settings),
        kind=mc.ModelInstanceGroup.KIND_CPU if kind == "CPU" else mc.ModelInstanceGroup.KIND_GPU,
    )

    params = deployment_facts(settings, facts).to_parameters()
    if settings.backend == "onnxruntime":
        cfg.optimization.graph.level = 1
        params.update(ORT_BACKEND_MEMORY_PARAMETERS)
        if settings.accelerator == "tensorrt":
            accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accel.parameters["precision_mode"] = "FP16" if settings.precision != Precision.FP32 else "FP32"
            accel.parameters["max_workspace_size_bytes"] = str(4 << 30)
            accel.parameters["trt_engine_cache_enable"] = "1"
            accel.parameters["trt_engine_cache_path"] = settings.trt_engine_cache
    for key, value in params.items():
        cfg.parameters[key].string_value = value

    for length in settings.warmup_lengths:
        warm = cfg.model_warmup.add(name=f"warmup_len_{length}", batch_size=1)
        for name in (INPUT_IDS, ATTENTION_MASK):
            warm.inputs[name].data_type = mc.TYPE_INT64
            warm.inputs[name].dims.append(length)
            # A fully attended row of token id 1: valid for every backend (zero_data would be an
            # all-padding row, random_data could index past the embedding table).
            warm.inputs[name].input_data_file = warmup_file(length)
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
