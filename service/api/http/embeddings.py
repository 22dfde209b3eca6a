"""OpenAI's embeddings and models routes, and the service's health, metrics and /info over HTTP."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.http.priority import request_priority
from service.api.http.schemas import EmbeddingsRequest, EmbeddingsResponse
from service.api.http.token_ids import check_token_ids_allowed
from service.api.http.wire import (
    ERROR_RESPONSES,
    JSON,
    HttpContext,
    disconnected,
    json_bytes,
    parse_json,
    read_body,
    request_body,
)
from service.api.info import info_fields
from service.errors import ErrorKind, ServiceError, invalid
from service.model_identity import identity_fields
from service.models import Models
from service.pipeline.embedder import Embedder
from service.pipeline.encoding import float32_base64
from service.pipeline.inference import ServedModel
from service.pipeline.params import EmbedParams, Truncate
from service.pipeline.postprocess import check_dimensions
from service.priority import applied


def params_from_openai(body: EmbeddingsRequest) -> EmbedParams:
    raw = body.input
    texts: tuple[str, ...] = ()
    ids: tuple[tuple[int, ...], ...] = ()
    if isinstance(raw, str):
        texts = (raw,)
    elif raw and all(isinstance(x, int) for x in raw):
        ids = (tuple(raw),)  # type: ignore[arg-type]
    elif raw and all(isinstance(x, list) for x in raw):
        ids = tuple(tuple(x) for x in raw)  # type: ignore[arg-type,union-attr]
    else:
        texts = tuple(raw)  # type: ignore[arg-type]
    prompt_name = body.prompt_name or ""
    if body.input_type is not None:
        if body.prompt_name:
            raise invalid("set either input_type or prompt_name", "input_type")
        prompt_name = "query" if body.input_type == "query" else ""
    return EmbedParams(
        texts=texts,
        token_ids=ids,
        instruction=body.instruction or "",
        prompt_name=prompt_name,
        dimensions=body.dimensions or 0,
        normalize=body.normalize,
        truncate=Truncate(body.truncate),
    )


def model_card(model: ServedModel) -> dict[str, Any]:
    """OpenAI's model object, plus what a client of several models needs: its kind and input limit."""
    info = model.info
    return {
        "id": info.served_name,
        "object": "model",
        "created": 0,
        "owned_by": "qwen3-embedding-service",
        "max_input_tokens": info.max_input_tokens,
        # What the weights are (the export's identity): clients and indexes can tell two vector spaces apart.
        **identity_fields(info),
    }


router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body(EmbeddingsRequest),
)
async def embeddings(request: Request) -> Response:
    ctx: HttpContext = request.app.state.ctx
    # The whole body is read and parsed before admission: a client sending slowly holds no slot (its own
    # bounds are the connection's request deadline and the connection cap, service/api/http/server.py).
    req = parse_json(EmbeddingsRequest, await read_body(request, ctx.settings))

    async def parse(models: Models) -> tuple[EmbedParams, Embedder]:
        embedder = models.embedder(req.model)  # OpenAI's model is required: it picks the model
        if req.dimensions is not None:  # HTTP has no "0 = full" (OpenAI's dimensions is positive)
            info = embedder.info
            check_dimensions(req.dimensions, info.min_dimensions, info.hidden_size, zero_means_full=False)
        params = check_token_ids_allowed(params_from_openai(req), ctx.settings)
        return replace(params, model=embedder.info.triton_name), embedder

    with applied(request_priority(request, req.priority)):
        embedded = await ctx.lifecycle.embed(parse, ctx.lifecycle.deadline(None), abandoned=disconnected(request))
    result = embedded.result
    body = embeddings_json(result.vectors, req.encoding_format, embedded.model, result.prompt_tokens)
    return Response(body, media_type=JSON)


def embeddings_json(vectors: np.ndarray, encoding_format: str, model: str, prompt_tokens: int) -> bytes:
    """The embeddings response body. Floats go from numpy to JSON in one call (json_bytes), not one Python
    float at a time, widened to float64 first: the numbers written are those json.dumps(vectors.tolist())
    writes (the shortest text that reads back as the same double, hence as the same float32)."""
    data: Any = [float32_base64(v) for v in vectors] if encoding_format == "base64" else vectors.astype(np.float64)
    items = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]
    payload = {
        "object": "list",
        "data": items,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return json_bytes(payload)


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    models = request.app.state.ctx.lifecycle.state.require_models()
    return {"object": "list", "data": [model_card(m) for m in models.all()]}


@router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
async def model(model_id: str, request: Request) -> dict[str, Any]:
    """One model (the openai SDK's `models.retrieve`); the same names as the embeddings route accepts."""
    models = request.app.state.ctx.lifecycle.state.require_models()
    found = models.find(model_id)
    if found is None:
        shown = model_id if len(model_id) <= 64 else model_id[:64] + "…"
        raise ServiceError(
            ErrorKind.NOT_FOUND, f"model {shown!r} is not served here; served: {models.names()}", "model"
        )
    return model_card(found)


@router.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "live"}


@router.get("/health/ready")
async def ready(request: Request) -> JSONResponse:
    if request.app.state.ctx.lifecycle.state.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not ready"}, status_code=503)


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.ctx.lifecycle.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    return info_fields(request.app.state.ctx.lifecycle.state)
