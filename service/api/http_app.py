"""OpenAI-compatible HTTP API (FastAPI) over the shared request lifecycle: module-level routes, one ASGI
guard in front (auth, size, content type, metrics); the request body is read and parsed before admission, so
only complete requests take a slot."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.auth import KeyChecker
from service.api.info import info_fields
from service.api.json_budget import DuplicateKey, ValueCounter, object_keys
from service.api.openai_schema import EmbeddingsRequest, EmbeddingsResponse, ErrorResponse
from service.api.token_ids import check_token_ids_allowed
from service.lifecycle import Lifecycle
from service.models import Models, ServedModel
from service.pipeline.embedder import Embedder
from service.pipeline.encoding import float32_base64
from service.pipeline.errors import ErrorKind, ServiceError, invalid
from service.pipeline.params import EmbedParams, Truncate
from service.settings import Settings

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
# Values a body may hold beyond the inputs and token ids themselves: the other fields and their keys.
FIELD_VALUES = 64
# An error message's length at most, and how many unknown parameters one names (then a count).
MAX_MESSAGE_CHARS = 2048
NAMED_UNKNOWN = 5


@dataclass(frozen=True)
class HttpContext:
    lifecycle: Lifecycle
    settings: Settings


def error_response(kind: ErrorKind, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    status, error_type = HTTP_STATUS[kind]
    headers = {"retry-after": "1"} if kind is ErrorKind.RESOURCE_EXHAUSTED else None
    # Messages may quote the client (a field name, a model name): lone surrogates must not break the JSON,
    # and however much the client sent, the error stays small (each quoting site bounds its quote too).
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code or kind.value}}
    return JSONResponse(body, status_code=status, headers=headers)


def payload_too_large(limit: int) -> JSONResponse:
    return error_response(ErrorKind.PAYLOAD_TOO_LARGE, f"request body over the {limit}-byte limit; split the batch")


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
    if body.dimensions is not None and body.dimensions < 1:
        raise invalid("dimensions must be a positive integer", "dimensions")
    return EmbedParams(
        texts=texts,
        token_ids=ids,
        instruction=body.instruction or "",
        prompt_name=prompt_name,
        dimensions=body.dimensions or 0,
        normalize=body.normalize,
        truncate=Truncate(body.truncate),
    )


def validation_error(exc: ValidationError) -> ServiceError:
    errors = exc.errors()
    if not errors:
        return invalid("invalid request")
    first = errors[0]
    loc = [str(x)[:64] for x in first["loc"] if x != "body"]
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        return unknown_parameters([str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden"])
    if first["type"] == "json_invalid":
        return invalid("the request body is not valid JSON (or not UTF-8)")
    return invalid(f"{'.'.join(loc) or 'body'}: {message}", loc[0] if loc else None)


async def read_body(request: Request, settings: Settings) -> bytes:
    """The body, counted as it arrives: once it holds more JSON values than the inputs and token ids the
    limits allow, it is refused without reading (or parsing) the rest."""
    max_inputs = settings.max_batch_inputs
    budget = max_inputs + settings.max_request_tokens + FIELD_VALUES
    counter = ValueCounter()
    body = bytearray()
    over = False
    try:
        async for chunk in request.stream():
            if over:
                continue  # drained, not kept: the client reads the refusal instead of a reset connection
            body += chunk
            over = counter.feed(chunk) > budget
            if over:
                body = bytearray()
    except ClientDisconnect:
        raise ServiceError(ErrorKind.CANCELLED, "the client went away") from None
    except BodyTooLarge:
        limit = settings.max_http_body_bytes
        raise ServiceError(
            ErrorKind.PAYLOAD_TOO_LARGE, f"request body over the {limit}-byte limit; split the batch"
        ) from None
    if over:
        raise invalid(
            f"the body holds more than {budget} JSON values: more than {max_inputs} "
            f"inputs with {settings.max_request_tokens} tokens in all can need; split the batch",
            "input",
        )
    return bytes(body)


def unknown_parameters(names: list[str]) -> ServiceError:
    """A 400 naming the first few unknown parameters (each cut to 64 characters) and counting the rest: a body
    of half a million unknown keys gets a short error, not one listing every key."""
    named = [name[:64] for name in names[:NAMED_UNKNOWN]]  # in the order sent (keys are unique by then)
    more = f" and {len(names) - len(named)} more" if len(names) > len(named) else ""
    return invalid(f"unknown parameter(s) {', '.join(named)}{more}; see GET /openapi.json", named[0])


M = TypeVar("M", bound=BaseModel)


def parse_json(model: type[M], body: bytes) -> M:
    """The body as `model` (strict: unknown fields are named in the 400). A key repeated in any object is a
    400 (JSON parsers keep the last one silently: a proxy or a check that read the first would disagree),
    and unknown top-level keys are refused before the model sees them (one error, not one per key)."""
    try:
        keys = object_keys(body)
    except DuplicateKey as exc:
        shown = exc.key if len(exc.key) <= 64 else exc.key[:64] + "…"
        raise invalid(f"duplicate key {shown!r} in the JSON body: each key may appear once", exc.key[:64]) from None
    if keys is not None:
        fields = model.model_fields
        unknown = [k for k in keys if k not in fields]
        if unknown:
            raise unknown_parameters(unknown)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    except RecursionError:
        raise invalid("the JSON body is nested too deeply") from None


def disconnected(request: Request) -> Callable[[], Awaitable[None]]:
    """Returns when the client has gone away: the lifecycle then cancels the request's work."""

    async def abandoned() -> None:
        # After the body, uvicorn's receive() returns only when the client disconnects.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return abandoned


def check_dimensions(dimensions: int | None, embedder: Embedder) -> None:
    """HTTP has no "0 = full" (OpenAI's dimensions is positive), so its range message says so."""
    low, high = embedder.info.min_dimensions, embedder.info.hidden_size
    if dimensions is not None and not low <= dimensions <= high:
        raise invalid(f"dimensions must be between {low} and {high}, got {dimensions}", "dimensions")


def model_card(model: ServedModel) -> dict[str, Any]:
    """OpenAI's model object, plus what a client of several models needs: its kind and input limit."""
    info = model.info
    return {
        "id": info.served_name,
        "object": "model",
        "created": 0,
        "owned_by": "qwen3-embedding-service",
        "kind": info.kind.value,
        "max_input_tokens": info.max_input_tokens,
    }


router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingsResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EmbeddingsRequest"}}},
        }
    },
)
async def embeddings(request: Request) -> Response:
    ctx: HttpContext = request.app.state.ctx
    # The whole body is read and parsed before admission: a client sending slowly holds no slot (its own
    # bounds are the connection's request deadline and the connection cap, service/api/http_server.py).
    req = parse_json(EmbeddingsRequest, await read_body(request, ctx.settings))

    async def parse(models: Models) -> EmbedParams:
        embedder = models.embedder(req.model)  # OpenAI's model is required: it picks the model
        check_dimensions(req.dimensions, embedder)
        params = check_token_ids_allowed(params_from_openai(req), ctx.settings)
        return replace(params, model=embedder.info.triton_name)

    embedded = await ctx.lifecycle.embed(parse, ctx.lifecycle.deadline(None), abandoned=disconnected(request))
    result = embedded.result
    body = embeddings_json(result.vectors, req.encoding_format, embedded.model, result.prompt_tokens)
    return Response(body, media_type="application/json")


def embeddings_json(vectors: np.ndarray, encoding_format: str, model: str, prompt_tokens: int) -> bytes:
    """The embeddings response body. Floats go from numpy to JSON in orjson, not one Python float at a time,
    widened to float64 first: the numbers written are those json.dumps(vectors.tolist()) writes (the shortest
    text that reads back as the same double, hence as the same float32)."""
    data: Any = [float32_base64(v) for v in vectors] if encoding_format == "base64" else vectors.astype(np.float64)
    items = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]
    payload = {
        "object": "list",
        "data": items,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


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


KNOWN_PATHS = {
    "/v1/embeddings",
    "/v1/rerank",
    "/rerank",
    "/v1/models",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/info",
}


def route_label(path: str) -> str:
    """Metric label: known paths as they are, model lookups as one label, anything else as "other"."""
    if path in KNOWN_PATHS:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class BodyTooLarge(Exception):
    pass


def plain_error(status: int, message: str, code: str, close: bool = False) -> JSONResponse:
    """An error in OpenAI's shape for a status the service's ErrorKinds do not cover (the guard's refusals)."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers={"connection": "close"} if close else None)


class Guard:
    """Pure ASGI middleware (no buffering, disconnects pass through): auth, declared size and content type
    before the app runs; a cap on the bytes a chunked body may deliver; metrics for every response."""

    def __init__(self, app: ASGIApp, ctx: HttpContext) -> None:
        self.app = app
        self.ctx = ctx
        settings = ctx.settings
        self.checker = KeyChecker(settings.all_api_keys(), settings.auth_exempt)
        self.limit = settings.max_http_body_bytes
        self.max_url = settings.http_max_url_bytes
        self.max_headers = settings.http_max_headers

    def refusal(self, scope: Scope) -> JSONResponse | None:
        # The parsers bound the whole head (service/api/http_server.py); these are the finer limits.
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > self.max_url:
            return plain_error(414, f"the URL is over {self.max_url} bytes", "uri_too_long", True)
        if len(scope["headers"]) > self.max_headers:
            return plain_error(431, f"more than {self.max_headers} header fields", "header_fields_too_large", True)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        if (
            self.checker.enabled
            and not self.checker.is_exempt(path)
            and not self.checker.check(headers.get("authorization"))
        ):
            return error_response(
                ErrorKind.UNAUTHENTICATED,
                "missing or invalid API key (Authorization: Bearer <key>)",
                code="invalid_api_key",
            )
        codings = b",".join(v for k, v in scope["headers"] if k.lower() == b"transfer-encoding")
        if codings and [c.strip().lower() for c in codings.split(b",")] != [b"chunked"]:
            # Only chunked is understood: "gzip, chunked" read as chunked would hand the app compressed bytes
            # that a proxy in front may have framed differently (RFC 9112 6.1: 501 for a coding not known).
            return plain_error(501, "Transfer-Encoding other than chunked is not supported", "not_implemented", True)
        if "content-length" in headers and "transfer-encoding" in headers:
            # RFC 9112 6.3: a request with both is a smuggling attempt or a broken proxy; refuse and close.
            response = error_response(
                ErrorKind.INVALID_ARGUMENT, "a request may not carry both Content-Length and Transfer-Encoding"
            )
            response.headers["connection"] = "close"
            return response
        if method == "POST":
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                return payload_too_large(self.limit)
            if "json" not in headers.get("content-type", "").lower():
                return plain_error(415, "send the request body as application/json", "unsupported_media_type")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refusal = self.refusal(scope)
        try:
            if refusal is not None:
                await refusal(scope, receive, recording_send)
            else:
                await self.app(scope, capped_receive, recording_send)
        except BodyTooLarge:
            await payload_too_large(self.limit)(scope, receive, recording_send)
        finally:
            metrics = self.ctx.lifecycle.state.metrics
            route = route_label(scope["path"])
            metrics.requests.labels("http", route, str(status[0])).inc()
            metrics.request_seconds.labels("http", route).observe(time.perf_counter() - started)


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


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request model the embeddings route parses itself."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["EmbeddingsRequest"] = EmbeddingsRequest.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        app.openapi_schema = schema
    return app.openapi_schema


def build_app(lifecycle: Lifecycle, settings: Settings) -> ASGIApp:
    app = FastAPI(
        # No /docs or /redoc: they load their scripts from a public CDN. The schema is at /openapi.json.
        docs_url=None,
        redoc_url=None,
        title="Qwen3-Embedding service",
        version=__version__,
        description="OpenAI-compatible embeddings over NVIDIA Triton. Extensions: instruction, prompt_name, "
        "input_type, truncate, normalize.",
    )
    ctx = HttpContext(lifecycle, settings)
    app.state.ctx = ctx
    app.include_router(router)
    from service.api.http_rerank import router as rerank_router  # it imports this module's helpers

    app.include_router(rerank_router)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ServiceError, on_service_error)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]
    return Guard(app, ctx)
