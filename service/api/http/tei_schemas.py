"""Request shapes of Hugging Face text-embeddings-inference (router/src/http/types.rs: the same fields and
defaults) and of vLLM's `/tokenize` and `/detokenize`. Strict as the rest of the HTTP API: an unknown field
is refused by name (TEI itself ignores unknown fields; a migrating client learns here that a field it relies
on is not applied)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.api.http.schemas import STRICT

Direction = Literal["Right", "Left", "right", "left"]
# TEI's input: a text or token ids, or a batch of them.
TeiInput = str | list[int] | list[str | list[int]]


class TeiEmbedRequest(BaseModel):
    """TEI `POST /embed` (also `POST /` and `/invocations`, where TEI serves an embedding model)."""

    model_config = STRICT
    inputs: TeiInput = Field(description="A text, a batch of texts, or token ids (off unless allowed)")
    truncate: bool | None = Field(
        False, description="Cut inputs over the model's limit; false: such an input is a 413, as TEI"
    )
    truncation_direction: Direction = Field("Right", description="Right cuts the end, Left the start")
    prompt_name: str | None = Field(None, description="A named prompt of the model: 'query' or 'document'")
    normalize: bool = Field(True, description="L2-normalise (after the dimension cut)")
    dimensions: int | None = Field(None, description="Matryoshka dimension; the vector is re-normalised")


class SimilarityInput(BaseModel):
    model_config = STRICT
    source_sentence: str
    sentences: list[str]


class SimilarityParameters(BaseModel):
    model_config = STRICT
    truncate: bool | None = False
    truncation_direction: Direction = "Right"
    prompt_name: str | None = None


class TeiSimilarityRequest(BaseModel):
    """TEI `POST /similarity` (what huggingface_hub's sentence_similarity sends)."""

    model_config = STRICT
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TeiTokenizeRequest(BaseModel):
    """TEI `POST /tokenize`."""

    model_config = STRICT
    inputs: str | list[str]
    add_special_tokens: bool = Field(True, description="Append the EOS the embedding model pools")
    prompt_name: str | None = Field(None, description="A named prompt, prefixed as the embedding route does")


class TeiDecodeRequest(BaseModel):
    """TEI `POST /decode`."""

    model_config = STRICT
    ids: list[int] | list[list[int]]
    skip_special_tokens: bool = True


class VllmTokenizeRequest(BaseModel):
    """vLLM `POST /tokenize` (its completion form; the chat form's `messages` is refused as unknown)."""

    model_config = STRICT
    prompt: str
    model: str | None = Field(None, description="A served model (GET /v1/models); default: the embedding model")
    add_special_tokens: bool = Field(True, description="Append the EOS an embedding model pools")
    return_token_strs: bool = Field(False, description="Also return each token's vocabulary entry")


class VllmDetokenizeRequest(BaseModel):
    """vLLM `POST /detokenize`."""

    model_config = STRICT
    tokens: list[int]
    model: str | None = None


class TeiErrorResponse(BaseModel):
    """TEI's error body (router/src/lib.rs ErrorResponse)."""

    error: str
    error_type: Literal["unhealthy", "backend", "overloaded", "validation", "tokenizer", "empty"]
