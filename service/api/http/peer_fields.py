"""The embeddings request's peer fields (vLLM, NIM, Jina, Infinity, OpenAI) -> one EmbedParams and the wire format
of the response. Pure functions: each field has the peer's meaning or is refused with a 400 naming it, and two
fields that say the same thing must agree (docs/clients.md, "Drop-in for peers' clients")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from service.api.http.schemas import EmbeddingsRequest
from service.errors import invalid
from service.pipeline.encoding import BYTE_ORDERS, FLOAT_DTYPES
from service.pipeline.params import EmbedParams, Encoding, Truncate

PACKED = {
    "int8": Encoding.INT8,
    "uint8": Encoding.UINT8,
    "binary": Encoding.BINARY,
    "ubinary": Encoding.UBINARY,
}
JINA_TASKS = {"retrieval.query": "query", "retrieval.passage": "passage"}
NIM_SUFFIXES = {"-query": "query", "-passage": "passage"}


@dataclass(frozen=True)
class WireFormat:
    """How the vectors are written: FLOAT = numbers (JSON) or `float_dtype` bytes in `byteorder` (base64);
    otherwise the packed encoding, as JSON integers or base64 of its bytes."""

    encoding: Encoding = Encoding.FLOAT
    base64: bool = False
    float_dtype: str = "float32"
    byteorder: str = "<"

    @property
    def label(self) -> str:
        """What the body holds, for traces: float32, float16, int8, binary, ... and /base64 when base64."""
        name = self.float_dtype if self.encoding is Encoding.FLOAT else self.encoding.value.lower()
        return f"{name}/base64" if self.base64 else name


def split_model_suffix(name: str, served: Callable[[str], bool]) -> tuple[str, str | None]:
    """NIM's "<model>-query" / "<model>-passage": the model and the input type it implies. Only when no served
    model has the exact name and the name without the suffix is served; otherwise the name stays as sent."""
    if served(name):
        return name, None
    for suffix, input_type in NIM_SUFFIXES.items():
        base = name.removesuffix(suffix)
        if base != name and served(base):
            return base, input_type
    return name, None


def wire_format(req: EmbeddingsRequest) -> WireFormat:
    as_base64 = req.encoding_format == "base64"
    dtype = req.embed_dtype or "float32"
    if dtype not in FLOAT_DTYPES:
        raise invalid(
            f"embed_dtype {dtype!r} is not supported here: use one of {', '.join(FLOAT_DTYPES)} "
            "(fp8 output has no agreed byte layout outside vLLM)",
            "embed_dtype",
        )
    byteorder = BYTE_ORDERS[req.endianness or "native"]
    kind = req.embedding_type or "float"
    if kind == "base64":  # Jina: base64 of little-endian float32
        if req.encoding_format == "float":
            raise invalid("embedding_type base64 asks for base64, encoding_format float for numbers", "embedding_type")
        return WireFormat(Encoding.FLOAT, True, dtype, byteorder)
    if kind == "float":
        return WireFormat(Encoding.FLOAT, as_base64, dtype, byteorder)
    if dtype != "float32":
        raise invalid(f"embed_dtype {dtype} applies to float output, not to embedding_type {kind}", "embed_dtype")
    return WireFormat(PACKED[kind], as_base64)


def _agreeing(values: list[tuple[str, object]], default: object) -> object:
    """The one value several fields give (in the order listed); a 400 naming the first field that differs."""
    given = [(name, value) for name, value in values if value is not None]
    for name, value in given[1:]:
        if value != given[0][1]:
            raise invalid(f"{name} {value!r} contradicts {given[0][0]} {given[0][1]!r}; send one of them", name)
    return given[0][1] if given else default


def _input_type(req: EmbeddingsRequest, suffix_type: str | None) -> str | None:
    task = None
    if req.task is not None:
        task = JINA_TASKS.get(req.task)
        if task is None:
            shown = req.task if len(req.task) <= 64 else req.task[:64] + "…"
            raise invalid(
                f"task {shown!r} is not supported: Qwen3-Embedding has no task adapters; use retrieval.query or "
                "retrieval.passage (or an instruction)",
                "task",
            )
    nim = None if req.input_type is None else ("query" if req.input_type == "query" else "passage")
    found = _agreeing([("input_type", nim), ("task", task), ("model", suffix_type)], None)
    return None if found is None else str(found)


def _truncation(req: EmbeddingsRequest) -> tuple[Truncate, int]:
    """The policy and the per-request token limit (0 = the model's)."""
    if isinstance(req.truncate, bool):  # Jina: drop the tail, or refuse
        policy = Truncate.END if req.truncate else Truncate.NONE
    else:
        policy = Truncate(req.truncate or "NONE")
    k = req.truncate_prompt_tokens
    if k is None:
        return policy, 0
    if req.truncate is not None and policy is not Truncate.NONE:
        raise invalid("set either truncate or truncate_prompt_tokens", "truncate_prompt_tokens")
    if k == 0:
        raise invalid(
            "truncate_prompt_tokens 0 leaves nothing to embed: use -1 (the model's limit) or >= 1",
            "truncate_prompt_tokens",
        )
    # vLLM: the tokenizer's truncation side, right (keep the first tokens) for Qwen3's; left keeps the last.
    side = Truncate.START if req.truncation_side == "left" else Truncate.END
    return side, 0 if k == -1 else k


def _texts(req: EmbeddingsRequest) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    raw = req.input
    if isinstance(raw, str):
        return (raw,), ()
    if raw and all(isinstance(x, int) for x in raw):
        return (), (tuple(raw),)  # type: ignore[arg-type]
    if raw and all(isinstance(x, list) for x in raw):
        return (), tuple(tuple(x) for x in raw)  # type: ignore[arg-type,union-attr]
    return tuple(raw), ()  # type: ignore[arg-type]


def _check_refused(req: EmbeddingsRequest, count: int) -> None:
    if req.add_special_tokens is False:
        raise invalid(
            "add_special_tokens false is not supported: Qwen3-Embedding pools the EOS token the tokenizer adds, "
            "so a vector without it is not the model's embedding",
            "add_special_tokens",
        )
    if req.late_chunking:
        raise invalid("late_chunking is not supported: each input is embedded on its own", "late_chunking")
    if req.modality is not None:
        modalities = [req.modality] if isinstance(req.modality, str) else req.modality
        bad = [m for m in modalities if m != "text"]
        if bad or not modalities:
            shown = bad[0][:64] if bad else "[]"
            raise invalid(f"modality {shown!r} is not supported: Qwen3-Embedding embeds text only", "modality")
        if len(modalities) not in (1, count):
            raise invalid(f"modality has {len(modalities)} values for {count} inputs (send 1 or {count})", "modality")


def params_from_request(req: EmbeddingsRequest, suffix_type: str | None = None) -> EmbedParams:
    """EmbedParams of an embeddings request (model and encoding are the route's to set)."""
    texts, ids = _texts(req)
    _check_refused(req, len(ids) or len(texts))
    prompt_name = req.prompt_name or ""
    input_type = _input_type(req, suffix_type)
    if input_type is not None:
        if req.prompt_name:
            raise invalid("set either input_type or prompt_name", "input_type")
        prompt_name = "query" if input_type == "query" else ""
    normalize = _agreeing(
        [("normalize", req.normalize), ("normalized", req.normalized), ("use_activation", req.use_activation)], True
    )
    truncate, max_tokens = _truncation(req)
    return EmbedParams(
        texts=texts,
        token_ids=ids,
        instruction=req.instruction or "",
        prompt_name=prompt_name,
        dimensions=req.dimensions or 0,
        normalize=bool(normalize),
        truncate=truncate,
        max_tokens=max_tokens,
    )
