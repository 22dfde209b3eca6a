"""TEI's error shape and status codes for the TEI-shaped routes: `{"error": "...", "error_type": "..."}` flat,
with the statuses of TEI's router (lib.rs, ErrorType -> StatusCode): validation 413 (TEI reports an input over
the limit, a batch over the client cap or an unknown prompt name as `validation`, 413), a body its JSON
extractor cannot read 422, an empty batch 400 (`empty`), overloaded 429, unhealthy 503, and a route the
model cannot serve 424 (`backend`). The OpenAI shape stays on /v1/*.

The gate's own refusals (401 without a key, 413 over the body budget, 415 without JSON) come before any route
and keep the service's shape: TEI answers those without a JSON body at all, so no TEI client parses them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.api.http.tei_schemas import TeiErrorResponse
from service.api.http.wire import client_message, error_headers, parse_json
from service.errors import ErrorKind, ServiceError

TEI_STATUS = {
    ErrorKind.INVALID_ARGUMENT: (413, "validation"),
    ErrorKind.PAYLOAD_TOO_LARGE: (413, "validation"),
    ErrorKind.NOT_FOUND: (424, "backend"),
    ErrorKind.UNAUTHENTICATED: (401, "validation"),
    ErrorKind.RESOURCE_EXHAUSTED: (429, "overloaded"),
    ErrorKind.UNAVAILABLE: (503, "unhealthy"),
    ErrorKind.DEADLINE_EXCEEDED: (504, "backend"),
    ErrorKind.CANCELLED: (499, "backend"),
    ErrorKind.INTERNAL: (424, "backend"),
}
# The OpenAPI description of the TEI routes' errors; 401, 413 and 415 from the gate keep the service's shape.
TEI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": TeiErrorResponse} for code in (400, 413, 422, 424, 429, 503)
}
# Request fields the pipeline names by the OpenAI route's name, and TEI's name for them.
TEI_PARAM = {"input": "inputs"}


class TeiError(Exception):
    """An error with TEI's own status and type (those no ErrorKind maps to: 422 unreadable body, 400 empty)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def tei_error_response(status: int, error_type: str, message: str) -> JSONResponse:
    body = {"error": client_message(message), "error_type": error_type}
    return JSONResponse(body, status_code=status, headers=error_headers(status))


def from_service_error(exc: ServiceError) -> JSONResponse:
    status, error_type = TEI_STATUS[exc.kind]
    message = exc.message
    param = TEI_PARAM.get(exc.param or "", exc.param)
    if param and not message.startswith(param):
        message = f"{param}: {message}"  # every message names the field it is about
    return tei_error_response(status, error_type, message)


M = TypeVar("M", bound=BaseModel)


def parse_tei(model: type[M], body: bytes) -> M:
    """The body as `model`; what the strict parser refuses (bad JSON, a wrong type, an unknown field) is a
    422, TEI's status for a body its JSON extractor rejects."""
    try:
        return parse_json(model, body)
    except ServiceError as exc:
        raise TeiError(422, "validation", exc.message) from None


def empty(field: str) -> TeiError:
    return TeiError(400, "empty", f"`{field}` cannot be empty")


async def tei_errors(work: Callable[[], Awaitable[Response]]) -> Response:
    """Runs a TEI route's work, answering its errors in TEI's shape."""
    try:
        return await work()
    except TeiError as exc:
        return tei_error_response(exc.status, exc.error_type, exc.message)
    except ServiceError as exc:
        return from_service_error(exc)
