"""Cohere's routes: `POST /v1/embed` (cohere.Client), `POST /v2/embed` and `POST /v2/rerank` (cohere.ClientV2).
Same gate, body reading, admission and limits as `/v1/embeddings`; errors in Cohere's shape {"message"} with
the service's statuses. Shapes and translation: service/api/http/cohere_wire.py. (`/v1/rerank`, Cohere v1 and
Jina, is service/api/http/rerank.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import wraps

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http.admitted import embedded, on_embedder, reranked
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
from service.api.http.rerank import cohere_results
from service.api.http.wire import json_response, parse_json, read_json
from service.api.http.wire import request_body as described_body
from service.errors import ServiceError
from service.pipeline.params import EmbedParams

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


async def embed_answer(
    request: Request, params: EmbedParams, model: str, dimensions: int | None, types: Sequence[str] | None, version: str
) -> Response:
    """`params` embedded on `model` (Cohere calls the size output_dimension) and answered in Cohere's shape."""
    outcome = await embedded(request, on_embedder(params, model, dimensions, "output_dimension"))
    result = outcome.result
    return json_response(embed_body(Embedded(result.vectors, params.texts, result.prompt_tokens), types, version))


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
    body = await read_json(request, CohereEmbedV1Request)
    return await embed_answer(request, params_from_v1(body), body.model or "", None, body.embedding_types, "1")


@router.post(
    "/v2/embed",
    response_model=CohereEmbedResponse,
    responses=COHERE_ERRORS,
    openapi_extra=described_body(CohereEmbedV2Request),
)
@cohere_errors
async def embed_v2(request: Request) -> Response:
    """Cohere v2 embed: 'embeddings_by_type', one list per embedding type asked (default float)."""
    body = await read_json(request, CohereEmbedV2Request)
    types = body.embedding_types or ["float"]
    return await embed_answer(request, params_from_v2(body), body.model, body.output_dimension, types, "2")


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    responses=COHERE_ERRORS,
    openapi_extra=described_body(CohereRerankV2Request),
)
@cohere_errors
async def rerank_v2(request: Request) -> Response:
    """Cohere v2 rerank: documents by relevance_score (sigmoid(yes - no)), highest first."""
    outcome = await reranked(request, lambda raw: params_from_rerank_v2(parse_json(CohereRerankV2Request, raw)))
    results = cohere_results(outcome)
    return json_response({"id": str(uuid.uuid4()), "results": results, "meta": meta("2", outcome.result.prompt_tokens)})
