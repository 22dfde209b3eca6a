"""Rerank over HTTP, in the two shapes clients already send: Cohere / Jina `POST /v1/rerank` (also what vLLM,
Infinity, LiteLLM, LangChain and Dify call) and Hugging Face TEI `POST /rerank`. Same gate, body reading,
admission, errors and strictness as `/v1/embeddings` (service/api/http/embeddings.py)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http.admitted import reranked
from service.api.http.schemas import RerankRequest, RerankResponse, TeiRerankRequest, TeiRerankResult
from service.api.http.wire import ERROR_RESPONSES, json_response, parse_json, request_body
from service.errors import invalid
from service.lifecycle import RerankOutcome
from service.pipeline.params import RerankParams, Truncate


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


def cohere_results(outcome: RerankOutcome) -> list[dict[str, Any]]:
    """Cohere's (and Jina's) result list: index and relevance_score, highest first, with the document's text
    when the request asked for it back."""
    params = outcome.params
    results: list[dict[str, Any]] = []
    for hit in outcome.result.hits:
        item: dict[str, Any] = {"index": hit.index, "relevance_score": hit.score}
        if params.return_documents:
            item["document"] = {"text": params.documents[hit.index]}
        results.append(item)
    return results


router = APIRouter()


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body(RerankRequest),
)
async def rerank(request: Request) -> Response:
    """Cohere / Jina rerank: documents by relevance to the query, highest first."""
    outcome = await reranked(request, lambda body: params_from_cohere(parse_json(RerankRequest, body)))
    tokens = outcome.result.prompt_tokens
    return json_response(
        {
            "id": str(uuid.uuid4()),
            "model": outcome.model,
            "results": cohere_results(outcome),
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
    outcome = await reranked(request, lambda body: params_from_tei(parse_json(TeiRerankRequest, body)))
    params = outcome.params
    out: list[dict[str, Any]] = []
    # TEI's order: by score, highest first, tied documents last index first (TEI sorts ascending, then reverses).
    for hit in sorted(outcome.result.hits, key=lambda h: (h.raw_score, h.index), reverse=True):
        item: dict[str, Any] = {"index": hit.index, "score": hit.raw_score if params.raw_scores else hit.score}
        if params.return_documents:
            item["text"] = params.documents[hit.index]
        out.append(item)
    return json_response(out)
