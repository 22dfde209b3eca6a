"""What every HTTP route shares: the context, the request body (counted as it arrives, parsed strictly), errors
in OpenAI's shape, JSON responses (one encoder, orjson) and the OpenAPI description of a body a route reads
itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from service.api.http.json_budget import DuplicateKey, ValueCounter, object_keys
from service.api.http.schemas import ErrorResponse
from service.errors import ErrorKind, ServiceError, invalid
from service.lifecycle import Lifecycle
from service.settings import Settings

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


def client_message(message: str) -> str:
    """An error message as every error body carries it, whatever the API's shape. Messages may quote the client
    (a field name, a model name): lone surrogates must not break the JSON, and however much the client sent,
    the error stays small (each quoting site bounds its quote too)."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def error_headers(status: int) -> dict[str, str] | None:
    """An overloaded (429) answer tells the client when to try again, in every API's shape."""
    return {"retry-after": "1"} if status == 429 else None


def error_response(kind: ErrorKind, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    status, error_type = HTTP_STATUS[kind]
    error = {"message": client_message(message), "type": error_type, "param": param, "code": code or kind.value}
    return JSONResponse({"error": error}, status_code=status, headers=error_headers(status))


def payload_too_large(limit: int) -> JSONResponse:
    return error_response(ErrorKind.PAYLOAD_TOO_LARGE, f"request body over the {limit}-byte limit; split the batch")


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
    if first["type"] == "literal_error" and isinstance(first.get("input"), str):
        # Name the value sent as well as the ones allowed (vLLM's clients look for both).
        message = f"{message}, got {first['input'][:64]!r} (literal_error)"
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


async def read_json(request: Request, model: type[M], parse: Callable[[type[M], bytes], M] = parse_json) -> M:
    """The request's body (read_body) as `model`; `parse` is a route family's own parse_json (TEI's answers
    what the strict parser refuses with its own status). Read and parsed before admission: a client sending
    slowly holds no slot (its own bounds are the connection's request deadline and the connection cap,
    service/api/http/server.py)."""
    ctx: HttpContext = request.app.state.ctx
    return parse(model, await read_body(request, ctx.settings))


def disconnected(request: Request) -> Callable[[], Awaitable[None]]:
    """Returns when the client has gone away: the lifecycle then cancels the request's work."""

    async def abandoned() -> None:
        # After the body, uvicorn's receive() returns only when the client disconnects.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return abandoned


def plain_error(status: int, message: str, code: str, close: bool = False) -> JSONResponse:
    """An error in OpenAI's shape for a status the service's ErrorKinds do not cover (the gate's refusals)."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers={"connection": "close"} if close else None)


class BodyTooLarge(Exception):
    """A chunked body went past max_http_body_bytes (raised by the gate, service/api/http/gate.py)."""


JSON = "application/json"


def json_bytes(payload: Any) -> bytes:
    """The one JSON encoder of the HTTP API's bodies: orjson (numpy arrays as they are, each float in the
    shortest text that reads back as the same double, as json.dumps writes it)."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(payload: Any) -> Response:
    return Response(json_bytes(payload), media_type=JSON)


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
