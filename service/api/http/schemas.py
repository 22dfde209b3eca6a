"""The HTTP API's request and response shapes: OpenAI embeddings, Cohere / Jina and TEI rerank, OpenAI errors,
with this service's documented extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(extra="forbid", strict=True)


class EmbeddingsRequest(BaseModel):
    # As OpenAI's own API: an unknown parameter is a 400 naming it (a client relying on another server's
    # extension learns it is not applied), and types are strict (no "64" for 64, no true for token id 1).
    # The peers' fields below carry the peer's meaning (docs/clients.md, "Drop-in for peers' clients");
    # service/api/http/peer_fields.py turns them into the request.
    model_config = ConfigDict(extra="forbid", strict=True)

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, texts, token ids, or lists of token ids"
    )
    model: str = Field(
        description="The served model name (see GET /v1/models); NIM: a '-query' / '-passage' suffix sets input_type"
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float (default) = JSON numbers; base64 = the bytes of embedding_type / embed_dtype"
    )
    dimensions: int | None = Field(None, description="Matryoshka dimension; the vector is re-normalised")
    user: str | None = Field(None, description="Accepted and ignored")
    # Extensions
    instruction: str | None = Field(None, description="Task instruction: 'Instruct: {instruction}\\nQuery:{text}'")
    prompt_name: str | None = Field(None, description="A named prompt of the model: 'query' or 'document'")
    input_type: Literal["query", "passage", "document"] | None = Field(
        None, description="NIM: query -> prompt 'query', passage/document -> no prompt"
    )
    truncate: Literal["NONE", "END", "START"] | bool | None = Field(
        None,
        description="NONE (default) rejects inputs over the model's limit; END/START cut them (NIM). "
        "Jina: true = END, false = NONE",
    )
    normalize: bool | None = Field(None, description="L2-normalise (after the dimension cut); default true")
    # NIM / Jina
    embedding_type: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] | None = Field(
        None,
        description="float (default); int8 / uint8 / binary / ubinary = packed, as sentence-transformers "
        "(int8/uint8 with the fixed range [-1, 1]); Jina's base64 = base64 float32",
    )
    task: str | None = Field(None, description="Jina: retrieval.query or retrieval.passage (others are refused)")
    normalized: bool | None = Field(None, description="Jina's name for normalize")
    late_chunking: bool | None = Field(None, description="Jina: only false (late chunking is not done here)")
    modality: str | list[str] | None = Field(None, description="NIM / Infinity: only 'text'")
    # vLLM
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="vLLM: cut each input to this many tokens (template and EOS included); -1 = the limit"
    )
    truncation_side: Literal["left", "right"] | None = Field(
        None, description="vLLM: right (default) keeps the first tokens, left the last (the instruction stays)"
    )
    embed_dtype: Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"] | None = Field(
        None, description="vLLM: the float type of base64 output: float32 (default), float16, bfloat16; fp8 refused"
    )
    endianness: Literal["native", "little", "big"] | None = Field(
        None, description="vLLM: byte order of base64 floats; native = the server's = little"
    )
    use_activation: bool | None = Field(None, description="vLLM: for embeddings, the same as normalize")
    add_special_tokens: bool | None = Field(
        None, description="vLLM: only true (Qwen3-Embedding pools the EOS token it adds)"
    )
    priority: int | None = Field(
        None,
        description="vLLM's priority (lower = served earlier, default 0): <= 0 runs as interactive, > 0 as bulk; "
        "the X-Priority header, when sent, wins (docs/configuration.md, 'Priority classes')",
    )


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class RerankDocument(BaseModel):
    """Cohere's document object (only its text is ranked)."""

    model_config = STRICT
    text: str


class RerankRequest(BaseModel):
    """Cohere / Jina rerank request, with this service's extensions (instruction, truncate)."""

    model_config = STRICT
    query: str = Field(description="The search query")
    documents: list[str | RerankDocument] = Field(description="Texts, or Cohere objects {'text': ...}")
    model: str | None = Field(None, description="A served reranker (GET /v1/models); default: the default one")
    top_n: int | None = Field(None, ge=1, description="Return the best top_n results; default: all")
    return_documents: bool = Field(False, description="Echo each result's document as {'text': ...}")
    # Extensions
    instruction: str | None = Field(
        None, description="Qwen3-Reranker task instruction; default: the official web-search instruction"
    )
    truncate: Literal["NONE", "END", "START"] = Field(
        "NONE", description="NONE rejects a document over the model's limit (400 naming it); END cuts its end"
    )


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankResultDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class BilledUnits(BaseModel):
    input_tokens: int


class RerankMeta(BaseModel):
    billed_units: BilledUnits


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult] = Field(description="By relevance_score, highest first")
    usage: RerankUsage = Field(description="Jina / vLLM: every document's sequence counts")
    meta: RerankMeta = Field(description="Cohere: the same tokens as billed_units.input_tokens")


class TeiRerankRequest(BaseModel):
    """Hugging Face text-embeddings-inference's rerank request."""

    model_config = STRICT
    query: str
    texts: list[str]
    raw_scores: bool = Field(False, description="The logit difference yes - no instead of its sigmoid")
    return_text: bool = False
    truncate: bool | None = Field(False, description="Cut documents over the model's limit instead of a 400")
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        "Right", description="Only Right (cut the end) is supported, as Qwen3-Reranker's usage"
    )
    # Extensions
    instruction: str | None = None
    model: str | None = None


class TeiRerankResult(BaseModel):
    index: int
    score: float
    text: str | None = None
