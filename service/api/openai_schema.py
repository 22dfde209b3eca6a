"""OpenAI embeddings API request/response shapes, with this service's documented extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingsRequest(BaseModel):
    # As OpenAI's own API: an unknown parameter is a 400 naming it (a client relying on another server's
    # extension learns it is not applied), and types are strict (no "64" for 64, no true for token id 1).
    model_config = ConfigDict(extra="forbid", strict=True)

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text, texts, token ids, or lists of token ids"
    )
    model: str = Field(description="The served model name (see GET /v1/models)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64 = little-endian float32 bytes, as OpenAI encodes them"
    )
    dimensions: int | None = Field(None, description="Matryoshka dimension; the vector is re-normalised")
    user: str | None = Field(None, description="Accepted and ignored")
    # Extensions
    instruction: str | None = Field(None, description="Task instruction: 'Instruct: {instruction}\\nQuery:{text}'")
    prompt_name: str | None = Field(None, description="A named prompt of the model: 'query' or 'document'")
    input_type: Literal["query", "passage", "document"] | None = Field(
        None, description="NIM-style alias: query -> prompt 'query', passage/document -> no prompt"
    )
    truncate: Literal["NONE", "END", "START"] = Field(
        "NONE", description="NONE rejects inputs over the model's limit; END/START cut them"
    )
    normalize: bool = Field(True, description="L2-normalise (after the dimension cut)")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


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
