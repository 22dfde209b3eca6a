"""The OpenAI-compatible HTTP app (FastAPI) over the shared request lifecycle: the routes of embeddings.py and
rerank.py, one gate in front (gate.py: auth, size, content type, metrics); each request body is read and
parsed before admission, so only complete requests take a slot."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from service import __version__
from service.api.http import cohere, embeddings, nim, rerank, tei
from service.api.http.gate import HttpGate
from service.api.http.request_edge import RequestEdge
from service.api.http.wire import HttpContext, error_response
from service.errors import ServiceError
from service.lifecycle import Lifecycle
from service.settings import Settings


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Framework errors (unknown path, wrong method) in OpenAI's shape too."""
    assert isinstance(exc, StarletteHTTPException)
    # No route lets FastAPI read the body (the embeddings route reads and caps it itself), so no body error
    # arrives here.
    message = "the request body could not be parsed" if exc.status_code == 400 else str(exc.detail)
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": str(exc.status_code)}}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.kind, exc.message, exc.param)


def build_app(lifecycle: Lifecycle, settings: Settings) -> ASGIApp:
    app = FastAPI(
        # No /docs or /redoc: they load their scripts from a public CDN. The schema is at /openapi.json.
        docs_url=None,
        redoc_url=None,
        title="Qwen3-Embedding service",
        version=__version__,
        description="OpenAI-compatible embeddings over NVIDIA Triton. Extensions: instruction, prompt_name, "
        "input_type, truncate, normalize, and the vLLM / NIM / Jina / Infinity fields of docs/clients.md.",
    )
    ctx = HttpContext(lifecycle, settings)
    app.state.ctx = ctx
    app.include_router(embeddings.router)
    app.include_router(rerank.router)
    app.include_router(tei.router)  # TEI's routes, and /tokenize, /decode, /detokenize (TEI and vLLM)
    app.include_router(cohere.router)
    app.include_router(nim.router)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ServiceError, on_service_error)
    # The request id and the trace span outermost: the gate's refusals carry them too.
    return RequestEdge(HttpGate(app, ctx))
