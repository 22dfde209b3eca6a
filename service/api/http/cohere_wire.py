"""Cohere's embed and rerank API (v1 and v2) as this service reads and answers it: the request shapes the
`cohere` Python SDK sends, the pure translation to the pipeline's params, and Cohere's response and error
bodies. The routes are in service/api/http/cohere.py; docs/clients.md ("Cohere") says field by field what is
the same and what is refused, and why."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from service.api.http.peer_errors import as_cohere
from service.api.http.wire import error_response
from service.errors import ServiceError, invalid
from service.pipeline.encoding import float32_base64, pack
from service.pipeline.params import EmbedParams, Encoding, RerankParams, Truncate

STRICT = ConfigDict(extra="forbid", strict=True)

InputType = Literal["search_query", "search_document", "classification", "clustering", "image"]
EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
CohereTruncate = Literal["NONE", "START", "END"]
# Cohere's default for both embed versions: inputs over the model's limit lose their end.
DEFAULT_TRUNCATE: CohereTruncate = "END"
# Cohere's rerank v2 default for max_tokens_per_doc.
DEFAULT_MAX_TOKENS_PER_DOC = 4096
# Each packed type: the Encoding that packs it (the gRPC API's bytes, service/pipeline/encoding.py) and the numpy
# type its bytes are written as (JSON integers, as Cohere writes them).
PACKED: dict[str, tuple[Encoding, type[np.integer[Any]]]] = {
    "binary": (Encoding.BINARY, np.int8),
    "ubinary": (Encoding.UBINARY, np.uint8),
    "int8": (Encoding.INT8, np.int8),
    "uint8": (Encoding.UINT8, np.uint8),
}

INSTRUCTION_HELP = (
    "Qwen3-Embedding task instruction (this service's extension): every text is embedded as "
    "'Instruct: {instruction}\\nQuery:{text}'; not with search_document"
)


class CohereEmbedV1Request(BaseModel):
    """`POST /v1/embed`: what `cohere.Client.embed` sends."""

    model_config = STRICT
    texts: list[str] = Field(description="The texts to embed")
    model: str | None = Field(None, description="A served embedding model; default: the default one")
    input_type: InputType | None = Field(
        None, description="search_query: Qwen3's query prompt; the others: no prompt; image: refused"
    )
    embedding_types: list[EmbeddingType] | None = Field(
        None, description="Absent: the 'embeddings_floats' response; present: 'embeddings_by_type'"
    )
    truncate: CohereTruncate = Field(DEFAULT_TRUNCATE, description="NONE refuses inputs over the limit")
    images: list[str] | None = Field(None, description="Refused: a text-only model")
    instruction: str | None = Field(None, description=INSTRUCTION_HELP)


class CohereEmbedV2Request(BaseModel):
    """`POST /v2/embed`: what `cohere.ClientV2.embed` sends."""

    model_config = STRICT
    model: str = Field(description="A served embedding model (GET /v1/models)")
    input_type: InputType = Field(description="search_query: Qwen3's query prompt; the others: no prompt")
    texts: list[str] | None = Field(None, description="The texts to embed")
    embedding_types: list[EmbeddingType] | None = Field(None, description="Default: ['float']")
    truncate: CohereTruncate = Field(DEFAULT_TRUNCATE, description="NONE refuses inputs over the limit")
    output_dimension: int | None = Field(None, description="Matryoshka dimension; the vector is re-normalised")
    images: list[str] | None = Field(None, description="Refused: a text-only model")
    inputs: list[Any] | None = Field(None, description="Refused: send texts")
    max_tokens: int | None = Field(None, description="Refused: use truncate (the model's own limit)")
    priority: int | None = Field(None, description="0 only (every request has the same priority here)")
    instruction: str | None = Field(None, description=INSTRUCTION_HELP)


class CohereRerankV2Request(BaseModel):
    """`POST /v2/rerank`: what `cohere.ClientV2.rerank` sends (and vLLM's return_documents)."""

    model_config = STRICT
    model: str = Field(description="A served reranker (GET /v1/models)")
    query: str = Field(description="The search query")
    documents: list[str] = Field(description="The texts to rank")
    top_n: int | None = Field(None, ge=1, description="Return the best top_n results; default: all")
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="Each document's tokens are cut to this many (default 4096), never refused"
    )
    return_documents: bool = Field(False, description="Echo each result's document as {'text': ...}")
    relevant_spans: dict[str, Any] | None = Field(None, description="Only {'mode': 'disabled'}: no spans here")
    priority: int | None = Field(None, description="0 only (every request has the same priority here)")
    instruction: str | None = Field(None, description="Qwen3-Reranker task instruction (extension)")


class CohereError(BaseModel):
    """Cohere's error body."""

    message: str


# The statuses of Cohere's routes, the gate's refusals (401, 413, 415) included: service/api/http/peer_errors.py.
COHERE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": CohereError} for code in (400, 401, 404, 413, 415, 429, 499, 503, 504)
}


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    input_tokens: int


class CohereMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: BilledUnits


class CohereEmbeddingsByType(BaseModel):
    float_: list[list[float]] | None = Field(None, alias="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereEmbedResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_floats", "embeddings_by_type"]
    embeddings: list[list[float]] | CohereEmbeddingsByType = Field(
        description="embeddings_floats (v1 without embedding_types): a list of float lists; else one list per type"
    )
    texts: list[str]
    meta: CohereMeta


class CohereRerankDocument(BaseModel):
    text: str


class CohereRerankResult(BaseModel):
    index: int
    relevance_score: float
    document: CohereRerankDocument | None = None


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereRerankResult] = Field(description="By relevance_score, highest first")
    meta: CohereMeta


def refuse(field: str, why: str) -> ServiceError:
    return invalid(f"{field} is not supported here: {why}", field)


def check_priority(priority: int | None) -> None:
    if priority not in (None, 0):
        raise refuse("priority", "every request has the same priority (0, Cohere's default and highest)")


def prompt_for(input_type: str | None, instruction: str | None) -> tuple[str, str]:
    """(instruction, prompt_name) for Cohere's input_type. Qwen3-Embedding prompts queries only: search_query
    gets the model's 'query' prompt, documents get none. Classification and clustering compare texts with each
    other (one kind of text), so they get no prompt either, unless the request names its task instruction,
    as Qwen3-Embedding's own evaluation instructs every text of those tasks."""
    if input_type == "image":
        raise refuse("input_type", "image: the model embeds text only")
    if instruction is not None:
        if input_type == "search_document":
            raise invalid("search_document takes no instruction: Qwen3-Embedding instructs queries only", "instruction")
        return instruction, ""
    return "", "query" if input_type == "search_query" else ""


def embed_params(
    texts: list[str], input_type: str | None, truncate: str, dimensions: int, instruction: str | None
) -> EmbedParams:
    instruction_text, prompt_name = prompt_for(input_type, instruction)
    return EmbedParams(
        texts=tuple(texts),
        instruction=instruction_text,
        prompt_name=prompt_name,
        dimensions=dimensions,
        truncate=Truncate(truncate),
    )


def params_from_v1(body: CohereEmbedV1Request) -> EmbedParams:
    if body.images is not None:
        raise refuse("images", "the model embeds text only")
    check_types(body.embedding_types or [])
    return embed_params(body.texts, body.input_type, body.truncate, 0, body.instruction)


def params_from_v2(body: CohereEmbedV2Request) -> EmbedParams:
    if body.images is not None:
        raise refuse("images", "the model embeds text only")
    if body.inputs is not None:
        raise refuse("inputs", "send the texts as texts (the model embeds text only)")
    if body.max_tokens is not None:
        raise refuse("max_tokens", "inputs are cut at the model's own limit only, as truncate says")
    check_priority(body.priority)
    if body.texts is None:
        raise invalid("texts is required (images and inputs are not supported here)", "texts")
    check_types(body.embedding_types or [])
    return embed_params(body.texts, body.input_type, body.truncate, body.output_dimension or 0, body.instruction)


def check_types(types: Sequence[str]) -> None:
    if len(set(types)) != len(types):
        raise invalid("embedding_types names a type twice", "embedding_types")


def params_from_rerank_v2(body: CohereRerankV2Request) -> RerankParams:
    if body.relevant_spans is not None and body.relevant_spans.get("mode") != "disabled":
        raise refuse("relevant_spans", "Qwen3-Reranker scores whole documents, it finds no spans")
    check_priority(body.priority)
    return RerankParams(
        query=body.query,
        documents=tuple(body.documents),
        instruction=body.instruction or "",
        top_n=body.top_n or 0,
        return_documents=body.return_documents,
        # Cohere v2 cuts long documents, never refuses them: each to max_tokens_per_doc, then the model's limit.
        truncate=Truncate.END,
        max_tokens_per_doc=body.max_tokens_per_doc or DEFAULT_MAX_TOKENS_PER_DOC,
        model=body.model,
    )


def typed_embeddings(vectors: np.ndarray, name: str) -> Any:
    """One Cohere embedding type of every vector: floats, base64 of little-endian float32 (as OpenAI's), or
    the packed bytes of service/pipeline/encoding.py::pack (the gRPC API's bytes) as JSON integers."""
    if name == "float":
        return vectors.astype(np.float64)  # written as json.dumps writes each float32's double
    if name == "base64":
        return [float32_base64(v) for v in vectors]
    encoding, dtype = PACKED[name]
    return [np.frombuffer(row, dtype=dtype) for row in pack(vectors, encoding)]


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray
    texts: tuple[str, ...]
    prompt_tokens: int


def meta(version: str, tokens: int) -> dict[str, Any]:
    return {
        "api_version": {"version": version},
        "billed_units": {"input_tokens": tokens},
        "tokens": {"input_tokens": tokens},
    }


def embed_body(embedded: Embedded, types: Sequence[str] | None, version: str) -> dict[str, Any]:
    """Cohere's embed response: v1 without embedding_types is 'embeddings_floats' (a list of float lists);
    otherwise 'embeddings_by_type' (an object with one list per type asked, float only by default in v2)."""
    body: dict[str, Any] = {"id": str(uuid.uuid4())}
    if types is None and version == "1":
        body["response_type"] = "embeddings_floats"
        body["embeddings"] = typed_embeddings(embedded.vectors, "float")
    else:
        body["response_type"] = "embeddings_by_type"
        body["embeddings"] = {name: typed_embeddings(embedded.vectors, name) for name in types or ["float"]}
    body["texts"] = list(embedded.texts)
    body["meta"] = meta(version, embedded.prompt_tokens)
    return body


def cohere_error(exc: ServiceError) -> JSONResponse:
    """Cohere's error body {"message": ...} with the status (and Retry-After) the service gives the error on
    every route; the message is bounded and made JSON-safe as on the OpenAI routes."""
    return as_cohere(error_response(exc.kind, exc.message, exc.param))
