"""The model-repository contract between `qwen3-embed export` and everything that serves its output.

Export writes a Triton model directory: tensors named below, and the model facts as string `parameters` in
config.pbtxt. The facade reads the facts back from Triton's model config (so a local or a remote Triton looks the
same), and export/templates/model.py (Triton's Python backend) reads its runtime knobs from the same parameters.
That template runs inside Triton's Python stub without this package, so it repeats the few names it uses;
tests/unit/test_contract.py checks they equal the ones here.

Serving code: no torch and no export/ imports here (the facade wheel ships `service` only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import numpy as np

# The graph's tensors: int64 [batch, sequence] in, float32 [batch, hidden] out (un-normalised last token).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "embedding"
INPUT_NAMES = (INPUT_IDS, ATTENTION_MASK)
# A reranker's graph (Qwen3-Reranker, a yes/no judge): float32 [batch, 2], the LM head's logits at the pooled
# position for the tokens RERANK_LABELS, in that order. The score is sigmoid(yes - no) (the official
# log_softmax over the two, exp of "yes"); the facade computes it, so raw scores (yes - no) stay exact.
# Triton priority levels of the dynamic batcher (1 is served first): interactive 1, bulk 2
# (service/priority.py). Requests that name none (older facades, other clients) get the interactive level.
PRIORITY_LEVEL_INTERACTIVE = 1
PRIORITY_LEVEL_BULK = 2
PRIORITY_LEVELS = 2
RERANK_LOGITS = "logits"
RERANK_LABELS = ("no", "yes")


class ModelKind(StrEnum):
    """What a Triton model of this repository does: written by export as the `kind` parameter."""

    EMBEDDING = "embedding"
    RERANKER = "reranker"

    @property
    def output(self) -> str:
        """The graph's output tensor."""
        return EMBEDDING if self is ModelKind.EMBEDDING else RERANK_LOGITS

    def output_width(self, hidden_size: int) -> int:
        return hidden_size if self is ModelKind.EMBEDDING else len(RERANK_LABELS)


class Precision(StrEnum):
    """Weights and activations of the exported graph (its output is always float32)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    # Weight-only quantization of the linear layers (com.microsoft.MatMulNBits); embeddings, norms and
    # activations stay float32.
    INT8 = "int8"
    INT4 = "int4"

    @property
    def itemsize(self) -> int:
        """Bytes of the float parts (activations; all weights but the quantized linear layers)."""
        return 2 if self in (Precision.FP16, Precision.BF16) else 4

    @property
    def dtype_name(self) -> str:
        """The torch / numpy name of the float dtype."""
        return {"fp16": "float16", "bf16": "bfloat16"}.get(self.value, "float32")

    @property
    def weight_bits(self) -> int:
        """Bits per quantized linear-layer weight; 0 for the float precisions."""
        return {"int8": 8, "int4": 4}.get(self.value, 0)


class Param(StrEnum):
    """Keys of config.pbtxt `parameters` (all values are strings, as Triton stores them)."""

    SOURCE_MODEL = "source_model"
    # The checkpoint's revision: the hub commit it was downloaded at, else a content hash of its weight files
    # ("sha256:..."); absent in exports from before the key.
    SOURCE_REVISION = "source_revision"
    HIDDEN_SIZE = "hidden_size"
    MIN_DIMENSIONS = "min_dimensions"
    MAX_INPUT_TOKENS = "max_input_tokens"
    EMBEDDING_ROWS = "embedding_rows"
    PRECISION = "precision"
    PROMPTS = "prompts"
    PAD_ID = "pad_token_id"
    EOS_ID = "eos_token_id"
    BACKEND = "backend"
    # Runtime knobs of the Python-backend model (export/templates/model.py) and the memory bound export printed.
    MAX_BATCH_TOKENS = "max_batch_tokens"
    EXPECTED_PEAK_BYTES = "expected_peak_bytes_per_instance"
    ORT_INTRA_OP_THREADS = "ort_intra_op_threads"
    ACTIVATION_BYTES_PER_TOKEN = "activation_bytes_per_token"
    ACTIVATION_BYTES_PER_SCORE = "activation_bytes_per_score"
    ORT_ARENA_KEEP_BYTES = "ort_arena_keep_bytes"
    # Where the facade puts padding: "right" for the fused-attention graph, "left" (also when absent: exports
    # from before the key) for the eager one.
    PADDING_SIDE = "padding_side"
    # ModelKind; absent = embedding (every export before rerankers).
    KIND = "kind"
    # Rerankers: the token ids whose LM-head rows the graph keeps (RERANK_LABELS order), for GetInfo and checks.
    RERANK_TOKEN_IDS = "rerank_token_ids"
    # The padded lengths the facade sends ("16,24,32,...,max_input_tokens"), the ladder export warmed up;
    # absent (exports before the key): the facade computes the same default (default_buckets below).
    LENGTH_BUCKETS = "length_buckets"
    # Quantized exports only (absent otherwise): method, block size, measured agreement with fp32 (JSON).
    QUANTIZATION_METHOD = "quantization_method"
    QUANTIZATION_BLOCK_SIZE = "quantization_block_size"
    QUANTIZATION_AGREEMENT = "quantization_agreement"
    # What MatMulNBits multiplies in: "int8" (ONNX Runtime's accuracy_level 4) or "fp32" (accuracy_level unset);
    # absent in quantized exports written before the key.
    QUANTIZATION_COMPUTE = "quantization_compute"
    # The quantized graph's activations: "fp32" (CPU) or "fp16" (GPU: float16 GroupQueryAttention and
    # MatMulNBits); absent in quantized exports written before the key (those are fp32).
    QUANTIZATION_ACTIVATIONS = "quantization_activations"


REQUIRED_PARAMS = (Param.HIDDEN_SIZE, Param.MAX_INPUT_TOKENS, Param.EMBEDDING_ROWS)
PADDING_SIDES = ("left", "right")


@dataclass(frozen=True)
class SpecialIds:
    """pad: what left padding fills with; eos: the token the tokenizer appends, whose hidden state is pooled."""

    pad_id: int
    eos_id: int


# --- Rules export and serving share (export writes or verifies with them, the request path applies them) ---


def instruction_prefix(instruction: str) -> str:
    """Qwen3-Embedding's query template, exactly: one newline, no space after "Query:"; documents get none."""
    return f"Instruct: {instruction}\nQuery:"


# Qwen3-Reranker's official input format (model card and the QwenLM/Qwen3-Embedding repository). A reranker is a
# yes/no judge: the chat prompt asks whether a document meets a query's requirements, and the score is the
# probability of "yes" against "no" at the last position. Each sequence is `prefix_ids + body_ids + suffix_ids`,
# with the body tokenized alone (no special tokens) and, when too long, cut at its end to
# `max_length - len(prefix_ids) - len(suffix_ids)`.
RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# The official usage's max_length; an export may serve more (its max_input_tokens).
OFFICIAL_MAX_LENGTH = 8192


def rerank_body(instruction: str, query: str, document: str) -> str:
    """The user turn between prefix and suffix (an empty instruction means the default one)."""
    return f"<Instruct>: {instruction or DEFAULT_RERANK_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"


# The default length-bucket ladder (docs/benchmarks.md, "Length buckets"; benchmarks/ladders.py): export writes it
# into config.pbtxt (length_buckets, the shapes Triton warms up) and the facade pads to it. 4 rungs per doubling
# on multiples of 8. Against powers of two, measured side by side: mixed lengths (8-512 tokens) pad 1.10x instead
# of 1.38-1.43x, with throughput 1.1x (dev model, overhead-bound) to 1.8x (0.6B config, compute-bound), no loss
# on short or long inputs. 3 per octave padded 1.13-1.15x (too close to the 1.15 target on small samples).
BUCKETS_PER_OCTAVE = 4
BUCKET_ALIGN = 8
SMALLEST_BUCKET = 16


def default_buckets(
    max_tokens: int,
    smallest: int = SMALLEST_BUCKET,
    per_octave: int = BUCKETS_PER_OCTAVE,
    align: int = BUCKET_ALIGN,
) -> list[int]:
    """The padded lengths, ascending, ending exactly at max_tokens: a geometric ladder from `smallest`,
    `per_octave` rungs to each doubling, every rung `smallest * 2**(k / per_octave)` rounded to the nearest
    multiple of `align` (GPU-friendly shapes; duplicates dropped). per_octave=1 gives powers of two.

    Guarantee (tests/unit/test_buckets.py): with r = 2**(1 / per_octave), every length n in
    [smallest, max_tokens] lands in a bucket b < r * (n + align), so no input pads more than about r times
    (1.19x at 4 per octave, once n is large against `align`), and a log-uniform mix of lengths pads about
    r * ln(r) / (r - 1) (1.39x at 1 per octave, 1.07x at 4, plus the rounding); shorter inputs pad to the
    first rung."""
    if max_tokens < 1 or smallest < 1 or per_octave < 1 or align < 1:
        raise ValueError("max_tokens, smallest, per_octave and align must be >= 1")
    out: list[int] = []
    k = 0
    while (point := smallest * 2 ** (k / per_octave)) < max_tokens:
        edge = max(align, align * round(point / align))
        if edge < max_tokens and (not out or edge > out[-1]):
            out.append(edge)
        k += 1
    out.append(max_tokens)
    return out


def pad(
    sequences: Sequence[Sequence[int]], width: int, pad_id: int, side: str = "left"
) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and mask [len(sequences), width]; `side` (the model's padding_side, one of PADDING_SIDES) is
    where the padding goes."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding side must be left or right, not {side!r}")
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        n = len(seq)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = seq
        mask[row, cols] = 1
    return ids, mask


@dataclass(frozen=True, kw_only=True)
class ModelFacts:
    """Everything export writes into config.pbtxt `parameters`; one definition for the writer and readers."""

    source_model: str
    hidden_size: int
    max_input_tokens: int
    embedding_rows: int
    pad_id: int
    eos_id: int
    min_dimensions: int = 32
    precision: Precision = Precision.FP32
    prompts: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    # 0 = not set (exports from before these keys existed): no split, no bound known.
    max_batch_tokens: int = 0
    expected_peak_bytes_per_instance: int = 0
    ort_intra_op_threads: int = 0
    activation_bytes_per_token: int = 0
    activation_bytes_per_score: int = 0
    ort_arena_keep_bytes: int = 0
    padding_side: str = "left"
    kind: ModelKind = ModelKind.EMBEDDING
    rerank_token_ids: str = ""  # rerankers: "no_id,yes_id"
    length_buckets: tuple[int, ...] = ()  # () = not written: the default ladder for max_input_tokens
    source_revision: str = ""  # "" = not written (exports before the key)
    # Quantized exports (precision int8 / int4): the method ("rtn", "gptq"), the block size and what the export
    # gate measured against the fp32 reference (worst_cosine, overlap_at_10, spearman; rerankers:
    # worst_score_diff). Empty / 0 for float exports.
    quantization_method: str = ""
    quantization_block_size: int = 0
    quantization_agreement: dict[str, float] = field(default_factory=dict)
    quantization_compute: str = ""  # "int8" | "fp32" (export/quantize.py COMPUTE_LEVELS); "" = not written
    quantization_activations: str = ""  # "fp32" | "fp16" (export/quantize.py ACTIVATIONS); "" = not written

    def __post_init__(self) -> None:
        # Callers may pass the plain string ("fp16"); the field is always the enum.
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "kind", ModelKind(self.kind))
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, not {self.padding_side!r}")
        buckets = tuple(int(b) for b in self.length_buckets)
        if buckets and (
            any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)) or buckets[-1] != self.max_input_tokens
        ):
            raise ValueError(
                f"length_buckets must ascend from >= 1 to max_input_tokens ({self.max_input_tokens}), not {buckets}"
            )
        object.__setattr__(self, "length_buckets", buckets)

    def to_parameters(self) -> dict[str, str]:
        out = {key.value: _encode(getattr(self, name)) for name, key in _FIELD_KEYS.items()}
        # Optional numbers left at 0 (and an empty ladder) are left out: a reader takes the same default.
        return {
            k: v
            for k, v in out.items()
            if not ((k in _OPTIONAL_NUMBERS and v == "0") or (k in _OPTIONAL_LISTS and v in ("", "{}")))
        }

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], model_name: str = "") -> ModelFacts:
        missing = sorted(k.value for k in REQUIRED_PARAMS if k not in params)
        if missing:
            raise ValueError(
                f"Triton model {model_name!r} lacks parameters {missing}: export it with `qwen3-embed export`"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = _FIELD_KEYS[f.name]
            if key in params:
                values[f.name] = _decode(f.name, params[key])
        values.setdefault("source_model", model_name)
        # Exports written before the ids were read from the checkpoint did not always store them.
        values.setdefault("eos_id", _LEGACY_ENDOFTEXT_ID)
        values.setdefault("pad_id", values["eos_id"])
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class ModelInfo(ModelFacts):
    """What the facade knows about the served model: the facts plus what Triton's own config says."""

    triton_name: str
    served_name: str
    max_batch_size: int

    @classmethod
    def from_triton_config(cls, config: Any, served_name: str = "") -> ModelInfo:
        """`config` is tritonclient's ModelConfig message."""
        params = {k: v.string_value for k, v in config.parameters.items()}
        facts = ModelFacts.from_parameters(params, config.name)
        values = {f.name: getattr(facts, f.name) for f in fields(ModelFacts)}
        values["backend"] = facts.backend or config.backend or config.platform
        return cls(
            **values,
            triton_name=config.name,
            served_name=served_name or facts.source_model.rstrip("/").split("/")[-1],
            max_batch_size=int(config.max_batch_size) or 1,
        )


# <|endoftext|> of the Qwen2/Qwen3 vocabulary: only the fallback for repositories exported before pad and
# eos ids were written; new exports read them from the checkpoint (SpecialIds.from_checkpoint).
_LEGACY_ENDOFTEXT_ID = 151643

_FIELD_KEYS: dict[str, Param] = {
    "source_model": Param.SOURCE_MODEL,
    "hidden_size": Param.HIDDEN_SIZE,
    "max_input_tokens": Param.MAX_INPUT_TOKENS,
    "embedding_rows": Param.EMBEDDING_ROWS,
    "pad_id": Param.PAD_ID,
    "eos_id": Param.EOS_ID,
    "min_dimensions": Param.MIN_DIMENSIONS,
    "precision": Param.PRECISION,
    "prompts": Param.PROMPTS,
    "backend": Param.BACKEND,
    "max_batch_tokens": Param.MAX_BATCH_TOKENS,
    "expected_peak_bytes_per_instance": Param.EXPECTED_PEAK_BYTES,
    "ort_intra_op_threads": Param.ORT_INTRA_OP_THREADS,
    "activation_bytes_per_token": Param.ACTIVATION_BYTES_PER_TOKEN,
    "activation_bytes_per_score": Param.ACTIVATION_BYTES_PER_SCORE,
    "ort_arena_keep_bytes": Param.ORT_ARENA_KEEP_BYTES,
    "padding_side": Param.PADDING_SIDE,
    "kind": Param.KIND,
    "rerank_token_ids": Param.RERANK_TOKEN_IDS,
    "length_buckets": Param.LENGTH_BUCKETS,
    "source_revision": Param.SOURCE_REVISION,
    "quantization_method": Param.QUANTIZATION_METHOD,
    "quantization_block_size": Param.QUANTIZATION_BLOCK_SIZE,
    "quantization_agreement": Param.QUANTIZATION_AGREEMENT,
    "quantization_compute": Param.QUANTIZATION_COMPUTE,
    "quantization_activations": Param.QUANTIZATION_ACTIVATIONS,
}
_OPTIONAL_NUMBERS = {
    Param.MAX_BATCH_TOKENS,
    Param.EXPECTED_PEAK_BYTES,
    Param.ACTIVATION_BYTES_PER_TOKEN,
    Param.ACTIVATION_BYTES_PER_SCORE,
    Param.ORT_ARENA_KEEP_BYTES,
    Param.QUANTIZATION_BLOCK_SIZE,
}
_OPTIONAL_LISTS = {
    Param.LENGTH_BUCKETS,
    Param.SOURCE_REVISION,
    Param.QUANTIZATION_METHOD,
    Param.QUANTIZATION_AGREEMENT,
    Param.QUANTIZATION_COMPUTE,
    Param.QUANTIZATION_ACTIVATIONS,
}
_STRING_FIELDS = {
    "source_model",
    "source_revision",
    "backend",
    "padding_side",
    "rerank_token_ids",
    "quantization_method",
    "quantization_compute",
    "quantization_activations",
}


def _encode(value: object) -> str:
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _decode(name: str, raw: str) -> Any:
    if name in _STRING_FIELDS:
        return raw
    if name == "precision":
        return Precision(raw)
    if name == "kind":
        return ModelKind(raw)
    if name == "prompts":
        return {str(k): str(v) for k, v in json.loads(raw or "{}").items()}
    if name == "quantization_agreement":
        return {str(k): float(v) for k, v in json.loads(raw or "{}").items()}
    if name == "length_buckets":
        return tuple(int(v) for v in raw.split(",") if v.strip())
    return int(raw)
