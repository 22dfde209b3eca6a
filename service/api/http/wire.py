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

from service.api.http.json_budget import ValueCounter
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


@dataclass(frozen=True)
class HttpContext:
    lifecycle: Lifecycle
    settings: Settings


def error_response(kind: ErrorKind, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    status, error_type = HTTP_STATUS[kind]
    headers = {"retry-after": "1"} if kind is ErrorKind.RESOURCE_EXHAUSTED else None
    # Messages may quote the client (a field name, a model name): lone surrogates must not break the JSON.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code or kind.value}}
    return JSONResponse(body, status_code=status, headers=headers)


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
        unknown = sorted({str(e["loc"][-1])[:64] for e in errors if e["type"] == "extra_forbidden"})
        return invalid(f"unknown parameter(s) {', '.join(unknown)}; see GET /openapi.json", unknown[0])
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


M = TypeVar("M", bound=BaseModel)


def parse_json(model: type[M], body: bytes) -> M:
    """The body as `model` (strict: unknown fields are named in the 400)."""
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
    """openapi_extra for a route that reads its own body (after admission)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(model)}}}}
