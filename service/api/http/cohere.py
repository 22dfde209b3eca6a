"""Cohere's routes: `POST /v1/embed` (cohere.Client), `POST /v2/embed` and `POST /v2/rerank` (cohere.ClientV2).
Same gate, body reading, admission and limits as `/v1/embeddings`; errors in Cohere's shape {"message"} with
the service's statuses. Shapes and translation: service/api/http/cohere_wire.py. (`/v1/rerank`, Cohere v1 and
Jina, is service/api/http/rerank.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import wraps

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http.cohere_wire import (
    COHERE_ERRORS,
    CohereEmbedResponse,
    CohereEmbedV1Request,
    CohereEmbedV2Request,
    CohereRerankResponse,
    CohereRerankV2Request,
    Embedded,
    cohere_error,
    embed_body,
    meta,
    params_from_rerank_v2,
    params_from_v1,
    params_from_v2,
)
from service.api.http.priority import request_priority
from service.api.http.rerank import cohere_results, rerank_admitted
from service.api.http.wire import HttpContext, disconnected, json_response, parse_json, read_body
from service.api.http.wire import request_body as described_body
from service.errors import ServiceError, invalid
from service.models import Models
from service.pipeline.embedder import Embedder
from service.pipeline.params import EmbedParams
from service.pipeline.postprocess import check_dimensions
from service.priority import applied

Handler = Callable[[Request], Awaitable[Response]]


def cohere_errors(handler: Handler) -> Handler:
    """Every error of the route (parse, limits, admission, model, deadline) in Cohere's shape."""

    @wraps(handler)
    async def shaped(request: Request) -> Response:
        try:
            return await handler(request)
        except ServiceError as exc:
            return cohere_error(exc)

    return shaped


async def embed_admitted(request: Request, params: EmbedParams, model: str, dimensions: int | None) -> Embedded:
    ctx: HttpContext = request.app.state.ctx

    async def parse(models: Models) -> tuple[EmbedParams, Embedder]:
        embedder = models.embedder(model)
        if dimensions is not None:
            info = embedder.info
            try:
                check_dimensions(dimensions, info.min_dimensions, info.hidden_size, zero_means_full=False)
            except ServiceError as exc:
                raise invalid(exc.message.replace("dimensions", "output_dimension", 1), "output_dimension") from None
        return replace(params, model=embedder.info.triton_name), embedder

    with applied(request_priority(request)):
        embedded = await ctx.lifecycle.embed(parse, ctx.lifecycle.deadline(None), abandoned=disconnected(request))
    return Embedded(embedded.result.vectors, params.texts, embedded.result.prompt_tokens)


router = APIRouter()


@router.post(
    "/v1/embed",
    response_model=CohereEmbedResponse,
    responses=COHERE_ERRORS,
    openapi_extra=described_body(CohereEmbedV1Request),
)
@cohere_errors
async def embed_v1(request: Request) -> Response:
    """Cohere v1 embed: 'embeddings_floats' unless embedding_types is given."""
    ctx: HttpContext = request.app.state.ctx
    body = parse_json(CohereEmbedV1Request, await read_body(request, ctx.settings))  # before admission
    embedded = await embed_admitted(request, params_from_v1(body), body.model or "", None)
    return json_response(embed_body(embedded, body.embedding_types, "1"))


@router.post(
    "/v2/embed",
    response_model=CohereEmbedResponse,
    responses=COHERE_ERRORS,
    openapi_extra=described_body(CohereEmbedV2Request),
)
@cohere_errors
async def embed_v2(request: Request) -> Response:
    """Cohere v2 embed: 'embeddings_by_type', one list per embedding type asked (default float)."""
    ctx: HttpContext = request.app.state.ctx
    body = parse_json(CohereEmbedV2Request, await read_body(request, ctx.settings))
    embedded = await embed_admitted(request, params_from_v2(body), body.model, body.output_dimension)
    return json_response(embed_body(embedded, body.embedding_types or ["float"], "2"))


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    responses=COHERE_ERRORS,
    openapi_extra=described_body(CohereRerankV2Request),
)
@cohere_errors
async def rerank_v2(request: Request) -> Response:
    """Cohere v2 rerank: documents by relevance_score (sigmoid(yes - no)), highest first."""
    reranked = await rerank_admitted(request, lambda raw: params_from_rerank_v2(parse_json(CohereRerankV2Request, raw)))
    result = reranked.result
    results = cohere_results(reranked)
    return json_response({"id": str(uuid.uuid4()), "results": results, "meta": meta("2", result.prompt_tokens)})
