"""Rerank over HTTP, in the two shapes clients already send: Cohere / Jina `POST /v1/rerank` (also what vLLM,
Infinity, LiteLLM, LangChain and Dify call) and Hugging Face TEI `POST /rerank`. Same guard, body reading,
admission, errors and strictness as `/v1/embeddings` (service/api/http_app.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.http_app import ERROR_RESPONSES, HttpContext, disconnected, parse_json, read_body
from service.lifecycle import Reranked
from service.models import Models
from service.pipeline.errors import invalid
from service.pipeline.params import RerankParams, Truncate

STRICT = ConfigDict(extra="forbid", strict=True)


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


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place (no $defs for OpenAPI to miss)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return dict(resolve(schema))


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra for a route that reads its own body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}


def params_from_cohere(body: RerankRequest) -> RerankParams:
    return RerankParams(
        query=body.query,
        documents=tuple(d if isinstance(d, str) else d.text for d in body.documents),
        instruction=body.instruction or "",
        top_n=body.top_n or 0,
        return_documents=body.return_documents,
        truncate=Truncate(body.truncate),
        model=body.model or "",
    )


def params_from_tei(body: TeiRerankRequest) -> RerankParams:
    if body.truncate and body.truncation_direction.lower() == "left":
        raise invalid(
            "truncation_direction Left is not supported for reranking: Qwen3-Reranker's usage cuts the end of "
            "a document (Right)",
            "truncation_direction",
        )
    return RerankParams(
        query=body.query,
        documents=tuple(body.texts),
        instruction=body.instruction or "",
        return_documents=body.return_text,
        truncate=Truncate.END if body.truncate else Truncate.NONE,
        raw_scores=body.raw_scores,
        model=body.model or "",
    )


async def serve(request: Request, parse: Callable[[bytes], RerankParams]) -> Reranked:
    ctx: HttpContext = request.app.state.ctx
    params = parse(await read_body(request, ctx.settings))  # before admission: slow bodies hold no slot

    async def parse_admitted(models: Models) -> RerankParams:
        return params

    return await ctx.lifecycle.rerank(parse_admitted, ctx.lifecycle.deadline(None), abandoned=disconnected(request))


def json_response(payload: Any) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


router = APIRouter()


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body(RerankRequest),
)
async def rerank(request: Request) -> Response:
    """Cohere / Jina rerank: documents by relevance to the query, highest first."""
    reranked = await serve(request, lambda body: params_from_cohere(parse_json(RerankRequest, body)))
    params, result = reranked.params, reranked.result
    results: list[dict[str, Any]] = []
    for hit in result.hits:
        item: dict[str, Any] = {"index": hit.index, "relevance_score": hit.score}
        if params.return_documents:
            item["document"] = {"text": params.documents[hit.index]}
        results.append(item)
    tokens = result.prompt_tokens
    return json_response(
        {
            "id": str(uuid.uuid4()),
            "model": reranked.model,
            "results": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "meta": {"billed_units": {"input_tokens": tokens}},
        }
    )


@router.post(
    "/rerank",
    response_model=list[TeiRerankResult],
    responses=ERROR_RESPONSES,
    openapi_extra=request_body(TeiRerankRequest),
)
async def rerank_tei(request: Request) -> Response:
    """TEI rerank: [{index, score, text?}] by score, highest first."""
    reranked = await serve(request, lambda body: params_from_tei(parse_json(TeiRerankRequest, body)))
    params = reranked.params
    out: list[dict[str, Any]] = []
    for hit in reranked.result.hits:
        item: dict[str, Any] = {"index": hit.index, "score": hit.raw_score if params.raw_scores else hit.score}
        if params.return_documents:
            item["text"] = params.documents[hit.index]
        out.append(item)
    return json_response(out)
