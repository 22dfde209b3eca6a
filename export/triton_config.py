"""Triton model configuration (config.pbtxt) for each backend, built on Triton's own ModelConfig schema."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

BACKENDS = ("python", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class RepoSettings:
    name: str = "qwen3_embedding"
    backend: str = "python"
    precision: str = "fp32"
    max_batch_size: int = 32
    max_input_tokens: int = 8192
    instances: int = 0  # 0 = auto: one per CPU core for CPU instances, 1 per GPU
    instance_kind: str = "auto"  # auto: CPU for python, GPU otherwise
    max_queue_delay_us: int = 500
    max_queue_size: int = 256
    queue_timeout_us: int = 30_000_000
    ort_intra_op_threads: int = 0
    accelerator: str = "none"  # onnxruntime backend: none | tensorrt
    trt_engine_cache: str = "/tmp/trt-cache"
    warmup_lengths: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ModelFacts:
    """What the facade needs to know; stored in config.pbtxt `parameters`."""

    source_model: str
    hidden_size: int
    min_dimensions: int
    max_input_tokens: int
    embedding_rows: int
    precision: str
    prompts: dict[str, str]
    pad_token_id: int = 151643
    eos_token_id: int = 151643

    def as_parameters(self) -> dict[str, str]:
        return {
            "source_model": self.source_model,
            "hidden_size": str(self.hidden_size),
            "min_dimensions": str(self.min_dimensions),
            "max_input_tokens": str(self.max_input_tokens),
            "embedding_rows": str(self.embedding_rows),
            "precision": self.precision,
            "prompts": json.dumps(self.prompts, ensure_ascii=False),
            "pad_token_id": str(self.pad_token_id),
            "eos_token_id": str(self.eos_token_id),
        }


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
    for name in ("input_ids", "attention_mask"):
        cfg.input.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    cfg.output.add(name="embedding", data_type=mc.TYPE_FP32, dims=[facts.hidden_size])

    batching = cfg.dynamic_batching
    batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    policy = batching.default_queue_policy
    # Bounded queue: overload is rejected (UNAVAILABLE "Exceeds maximum queue size"), never queued forever.
    policy.max_queue_size = settings.max_queue_size
    policy.timeout_action = mc.ModelQueuePolicy.REJECT
    policy.default_timeout_microseconds = settings.queue_timeout_us
    policy.allow_timeout_override = True

    kind = resolved_kind(settings)
    cfg.instance_group.add(
        count=resolved_instances(settings),
        kind=mc.ModelInstanceGroup.KIND_CPU if kind == "CPU" else mc.ModelInstanceGroup.KIND_GPU,
    )

    if settings.backend == "onnxruntime":
        cfg.optimization.graph.level = 1
        if settings.accelerator == "tensorrt":
            accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accel.parameters["precision_mode"] = "FP16" if settings.precision != "fp32" else "FP32"
            accel.parameters["max_workspace_size_bytes"] = str(4 << 30)
            accel.parameters["trt_engine_cache_enable"] = "1"
            accel.parameters["trt_engine_cache_path"] = settings.trt_engine_cache

    params = facts.as_parameters()
    params["backend"] = settings.backend
    params["ort_intra_op_threads"] = str(resolved_ort_threads(settings))
    for key, value in params.items():
        cfg.parameters[key].string_value = value

    for length in settings.warmup_lengths:
        warm = cfg.model_warmup.add(name=f"warmup_len_{length}", batch_size=1)
        for name in ("input_ids", "attention_mask"):
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
