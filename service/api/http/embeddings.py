"""OpenAI's embeddings and models routes, and the service's health, metrics and /info over HTTP."""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service import tracing
from service.api.http.admitted import check_size, embedded
from service.api.http.peer_fields import WireFormat, params_from_request, split_model_suffix, wire_format
from service.api.http.schemas import EmbeddingsRequest, EmbeddingsResponse
from service.api.http.tei import tei_info_fields
from service.api.http.token_ids import check_token_ids_allowed
from service.api.http.wire import (
    ERROR_RESPONSES,
    JSON,
    HttpContext,
    json_bytes,
    read_json,
    request_body,
)
from service.api.info import info_fields
from service.errors import ErrorKind, ServiceError
from service.model_identity import identity_fields
from service.models import Models
from service.pipeline.embedder import Embedder
from service.pipeline.encoding import float_bytes, pack
from service.pipeline.inference import ServedModel
from service.pipeline.params import EmbedParams, Encoding


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


async def embeddings(request: Request) -> Response:
    """OpenAI's embeddings with the peers' extension fields (peer_fields.py); also Infinity's `/embeddings`."""
    ctx: HttpContext = request.app.state.ctx
    req = await read_json(request, EmbeddingsRequest)  # before admission (wire.read_json)
    wire = wire_format(req)

    async def parse(models: Models) -> tuple[EmbedParams, Embedder]:
        name, suffix_type = split_model_suffix(req.model, lambda n: models.find(n) is not None)
        embedder = models.embedder(name)  # OpenAI's model is required: it picks the model
        check_size(embedder, req.dimensions)
        params = check_token_ids_allowed(params_from_request(req, suffix_type), ctx.settings)
        return replace(params, model=embedder.info.triton_name, encoding=wire.encoding), embedder

    outcome = await embedded(request, parse, req.priority)
    result = outcome.result
    with tracing.stage("encode", **{tracing.ENCODING: wire.label}):
        body = embeddings_json(result.vectors, wire, outcome.model, result.prompt_tokens)
    return Response(body, media_type=JSON)


for _path in ("/v1/embeddings", "/embeddings"):  # Infinity serves the OpenAI shape without /v1
    router.add_api_route(
        _path,
        embeddings,
        methods=["POST"],
        response_model=EmbeddingsResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=request_body(EmbeddingsRequest),
    )


def _rows(vectors: np.ndarray, wire: WireFormat) -> list[Any]:
    """Each row as the wire wants it: base64 text of its bytes, or JSON numbers (floats widened to float64 so
    orjson writes the shortest text that reads back as the same float32; packed bytes as their integers)."""
    if wire.encoding is Encoding.FLOAT:
        if not wire.base64:
            return list(vectors.astype(np.float64))
        rows = float_bytes(vectors, wire.float_dtype, wire.byteorder)
    else:
        rows = pack(vectors, wire.encoding)
        if not wire.base64:
            dtype = np.uint8 if wire.encoding in (Encoding.UINT8, Encoding.UBINARY) else np.int8
            return [np.frombuffer(r, dtype=dtype) for r in rows]
    return [base64.b64encode(r).decode("ascii") for r in rows]


def embeddings_json(vectors: np.ndarray, wire: WireFormat | str, model: str, prompt_tokens: int) -> bytes:
    """The embeddings response body (`wire` may be an OpenAI encoding_format, "float" or "base64"). Floats go
    from numpy to JSON in one call (json_bytes), not one Python float at a time."""
    if isinstance(wire, str):
        wire = WireFormat(base64=wire == "base64")
    items = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(_rows(vectors, wire))]
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
    """The service's facts, and TEI's Info fields beside them (tei.tei_info_fields: none share a name)."""
    state = request.app.state.ctx.lifecycle.state
    return {**tei_info_fields(state), **info_fields(state)}
