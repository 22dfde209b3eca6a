"""OpenAI-compatible HTTP API (FastAPI on uvicorn) in the facade's event loop, over the same pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.api.auth import KeyChecker
from service.api.grpc_service import info_fields
from service.api.openai_schema import EmbeddingsRequest, EmbeddingsResponse, ErrorResponse
from service.pipeline.encoding import float32_base64
from service.pipeline.errors import ErrorKind, ServiceError
from service.pipeline.params import EmbedParams, Truncate
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger(__name__)

HTTP_STATUS = {
    ErrorKind.INVALID_ARGUMENT: (400, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.UNAUTHENTICATED: (401, "invalid_request_error"),
    ErrorKind.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    ErrorKind.UNAVAILABLE: (503, "service_unavailable"),
    ErrorKind.DEADLINE_EXCEEDED: (504, "timeout"),
    ErrorKind.CANCELLED: (499, "cancelled"),
    ErrorKind.INTERNAL: (500, "server_error"),
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 429, 503, 504)
}


def error_response(
    kind: ErrorKind, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    status, error_type = HTTP_STATUS[kind]
    headers = {"retry-after": "1"} if kind is ErrorKind.RESOURCE_EXHAUSTED else None
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code or kind.value}}
    return JSONResponse(body, status_code=status, headers=headers)


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
            raise ServiceError(
                ErrorKind.INVALID_ARGUMENT, "set either input_type or prompt_name", "input_type"
            )
        prompt_name = "query" if body.input_type == "query" else ""
    if body.dimensions is not None and body.dimensions < 1:
        raise ServiceError(ErrorKind.INVALID_ARGUMENT, "dimensions must be a positive integer", "dimensions")
    return EmbedParams(
        texts=texts,
        token_ids=ids,
        instruction=body.instruction or "",
        prompt_name=prompt_name,
        dimensions=body.dimensions or 0,
        normalize=body.normalize,
        truncate=Truncate(body.truncate),
    )


def build_app(state: ServiceState, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="Qwen3-Embedding service",
        version=__version__,
        description="OpenAI-compatible embeddings over NVIDIA Triton. Extensions: instruction, prompt_name, "
        "input_type, truncate, normalize.",
    )
    checker = KeyChecker(settings.all_api_keys(), settings.auth_exempt)
    metrics = state.metrics

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Auth, body size and content type before any parsing; metrics for every response."""
        path = request.url.path
        started = time.perf_counter()
        response: Response
        if (
            checker.enabled
            and not checker.is_exempt(path)
            and not checker.check(request.headers.get("authorization"))
        ):
            response = error_response(
                ErrorKind.UNAUTHENTICATED,
                "missing or invalid API key (Authorization: Bearer <key>)",
                code="invalid_api_key",
            )
        elif request.method == "POST" and _too_large(request, settings.max_http_body_bytes):
            response = _payload_too_large(settings.max_http_body_bytes)
        elif request.method == "POST" and "json" not in request.headers.get("content-type", "").lower():
            response = JSONResponse(
                {
                    "error": {
                        "message": "send the request body as application/json",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "unsupported_media_type",
                    }
                },
                status_code=415,
            )
        else:
            try:
                response = await call_next(request)
            except _BodyTooLarge:
                response = _payload_too_large(settings.max_http_body_bytes)
        route = path if path in KNOWN_PATHS else "other"
        metrics.requests.labels("http", route, str(response.status_code)).inc()
        metrics.request_seconds.labels("http", route).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON (or not UTF-8)"
        return error_response(
            ErrorKind.INVALID_ARGUMENT, f"{'.'.join(loc) or 'body'}: {message}", loc[0] if loc else None
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Framework errors (unparsable body, unknown path, wrong method) in OpenAI's shape too.
        cause = exc.__cause__  # FastAPI turns errors from reading the body (in an ExceptionGroup) into a 400
        if isinstance(cause, _BodyTooLarge) or (
            isinstance(cause, BaseExceptionGroup) and cause.subgroup(_BodyTooLarge) is not None
        ):
            return _payload_too_large(settings.max_http_body_bytes)
        message = (
            "the request body could not be parsed (invalid JSON or not UTF-8)"
            if exc.status_code == 400
            else str(exc.detail)
        )
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": str(exc.status_code),
            }
        }
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def on_recursion(request: Request, exc: RecursionError) -> JSONResponse:
        return error_response(ErrorKind.INVALID_ARGUMENT, "the JSON body is nested too deeply")

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.kind, exc.message, exc.param)

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=ERROR_RESPONSES)
    async def embeddings(body: EmbeddingsRequest) -> Response:
        embedder = state.require_embedder()
        info = embedder.info
        if body.model not in (info.served_name, info.source_model, info.triton_name):
            raise ServiceError(
                ErrorKind.NOT_FOUND,
                f"model {body.model!r} is not served here; served models: {info.served_name}",
                "model",
            )
        params = params_from_openai(body)
        async with state.admit(wait=False):
            result = await embedder.embed(params, settings.default_timeout_s)
        if body.encoding_format == "base64":
            data: list[Any] = [float32_base64(v) for v in result.vectors]
        else:
            data = result.vectors.tolist()
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": info.served_name,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        }
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        embedder = state.require_embedder()
        return {
            "object": "list",
            "data": [
                {
                    "id": embedder.info.served_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "qwen3-embedding-service",
                }
            ],
        }

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready"}, status_code=503)

    @app.get("/metrics")
    async def metrics_endpoint() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return info_fields(state)

    KNOWN_PATHS = {route.path for route in app.routes if hasattr(route, "path")}  # type: ignore[attr-defined]
    return app


class _BodyTooLarge(Exception):
    pass


def _too_large(request: Request, limit: int) -> bool:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return True
    # Chunked bodies without a length: cap what the app can read.
    receive = request._receive
    seen = 0

    async def capped() -> Any:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _BodyTooLarge
        return message

    request._receive = capped
    return False


def _payload_too_large(limit: int) -> JSONResponse:
    return error_response(
        ErrorKind.PAYLOAD_TOO_LARGE, f"request body over the {limit}-byte limit; split the batch"
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the facade owns SIGTERM and drains both APIs."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start_http(
    state: ServiceState, settings: Settings
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    kwargs: dict[str, Any] = {}
    if settings.tls_cert and settings.tls_key:
        kwargs = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        if settings.tls_client_ca:
            kwargs |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    config = uvicorn.Config(
        build_app(state, settings),
        host=settings.host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(settings.drain_seconds) or None,
        **kwargs,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error (port in use, bad certificate)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port
