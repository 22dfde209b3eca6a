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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

# The graph's tensors: int64 [batch, sequence] in, float32 [batch, hidden] out (un-normalised last token).
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
EMBEDDING = "embedding"
INPUT_NAMES = (INPUT_IDS, ATTENTION_MASK)
# A reranker's graph (Qwen3-Reranker, a yes/no judge): float32 [batch, 2], the LM head's logits at the pooled
# position for the tokens RERANK_LABELS, in that order. The score is sigmoid(yes - no) (the official
# log_softmax over the two, exp of "yes"); the facade computes it, so raw scores (yes - no) stay exact.
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
    # absent (exports before the key): the facade computes the same default (service/pipeline/batching.py).
    LENGTH_BUCKETS = "length_buckets"
    # Quantized exports only (absent otherwise): method, block size, measured agreement with fp32 (JSON).
    QUANTIZATION_METHOD = "quantization_method"
    QUANTIZATION_BLOCK_SIZE = "quantization_block_size"
    QUANTIZATION_AGREEMENT = "quantization_agreement"


REQUIRED_PARAMS = (Param.HIDDEN_SIZE, Param.MAX_INPUT_TOKENS, Param.EMBEDDING_ROWS)
PADDING_SIDES = ("left", "right")


@dataclass(frozen=True)
class SpecialIds:
    """pad: what left padding fills with; eos: the token the tokenizer appends, whose hidden state is pooled."""

    pad_id: int
    eos_id: int

    @classmethod
    def from_checkpoint(cls, directory: Path) -> SpecialIds:
        """Read from the checkpoint's own files rather than assumed: eos is whatever tokenizer.json's
        post-processor appends; pad is tokenizer_config.json's pad_token, else config.json's pad_token_id,
        else eos. Raises ValueError when the tokenizer appends nothing (old Qwen3-Embedding tokenizer
        revisions did: every vector would be pooled from the wrong token)."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        bare = tok.encode("a", add_special_tokens=False).ids
        full = tok.encode("a").ids
        if len(full) <= len(bare) or full[: len(bare)] != bare:
            raise ValueError(
                f"the tokenizer in {directory} appends no end-of-text token; Qwen3-Embedding pools the hidden "
                "state of the appended <|endoftext|> (update tokenizer.json from the official repository)"
            )
        eos = full[-1]
        pad = _pad_from_tokenizer_config(directory, tok)
        if pad is None:
            config = _read_json(directory / "config.json")
            pad = config.get("pad_token_id") if isinstance(config.get("pad_token_id"), int) else None
        return cls(pad_id=eos if pad is None else pad, eos_id=eos)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _pad_from_tokenizer_config(directory: Path, tok: Any) -> int | None:
    token = _read_json(directory / "tokenizer_config.json").get("pad_token")
    if isinstance(token, dict):  # older files store the AddedToken as a dict
        token = token.get("content")
    if not isinstance(token, str):
        return None
    found = tok.token_to_id(token)
    return int(found) if found is not None else None


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

    def __post_init__(self) -> None:
        # Callers may pass the plain string ("fp16"); the field is always the enum.
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "kind", ModelKind(self.kind))
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, not {self.padding_side!r}")
        buckets = tuple(int(b) for b in self.length_buckets)
        if buckets and (
            any(b < 1 for b in buckets)
            or list(buckets) != sorted(set(buckets))
            or buckets[-1] != self.max_input_tokens
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
}
_STRING_FIELDS = {
    "source_model", "source_revision", "backend", "padding_side", "rerank_token_ids", "quantization_method"
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
