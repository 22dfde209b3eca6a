"""NVIDIA NeMo Retriever (NIM) routes: `POST /v1/ranking` (the reranking NIM's API) and NIM's probe and
metrics paths `/v1/health/live`, `/v1/health/ready`, `/v1/metrics` (the same answers as /health/*, /metrics).
Same gate, body reading, admission, limits and errors as `/v1/rerank` (service/api/http/rerank.py)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.http import embeddings
from service.api.http.admitted import reranked
from service.api.http.wire import ERROR_RESPONSES, json_response, parse_json, request_body
from service.pipeline.params import RerankParams, Truncate

STRICT = ConfigDict(extra="forbid", strict=True)


class NimText(BaseModel):
    model_config = STRICT
    text: str


class NimRankingRequest(BaseModel):
    model_config = STRICT
    model: str | None = Field(None, description="A served reranker (GET /v1/models); default: the default one")
    query: NimText = Field(description="{'text': the query}")
    passages: list[NimText] = Field(description="[{'text': a passage}]")
    truncate: Literal["NONE", "END"] = Field(
        "NONE", description="NONE refuses a passage over the model's limit (400 naming it); END cuts its end"
    )


class NimRanking(BaseModel):
    index: int
    logit: float


class NimRankingResponse(BaseModel):
    rankings: list[NimRanking] = Field(description="By logit, highest first")


def params_from_nim(body: NimRankingRequest) -> RerankParams:
    return RerankParams(
        query=body.query.text,
        documents=tuple(p.text for p in body.passages),
        truncate=Truncate(body.truncate),
        model=body.model or "",
    )


router = APIRouter()


@router.post(
    "/v1/ranking",
    response_model=NimRankingResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body(NimRankingRequest),
)
async def ranking(request: Request) -> Response:
    """NIM ranking: every passage's logit, highest first. Qwen3-Reranker's logit is the LM head's yes - no
    difference at the last token: sigmoid(logit) is /v1/rerank's relevance_score."""
    outcome = await reranked(request, lambda raw: params_from_nim(parse_json(NimRankingRequest, raw)))
    return json_response({"rankings": [{"index": h.index, "logit": h.raw_score} for h in outcome.result.hits]})


router.add_api_route("/v1/health/live", embeddings.live, methods=["GET"])
router.add_api_route("/v1/health/ready", embeddings.ready, methods=["GET"])
router.add_api_route("/v1/metrics", embeddings.metrics_endpoint, methods=["GET"])
