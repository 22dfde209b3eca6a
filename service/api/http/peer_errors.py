"""Errors in a peer's shape on that peer's routes. Every error starts in the service's OpenAI shape
(service/api/http/wire.py); on Cohere's routes it is answered as Cohere's `{"message": ...}` with the same status
and headers, whether a route raised it or the gate refused the request before any route ran (API key, declared
size, content type)."""

from __future__ import annotations

import orjson
from fastapi.responses import JSONResponse

COHERE_PATHS = frozenset({"/v1/embed", "/v2/embed", "/v2/rerank"})
# The headers an error carries that say something to the client (the body's own are set anew).
KEPT_HEADERS = ("retry-after", "connection")


def as_cohere(response: JSONResponse) -> JSONResponse:
    """The same error as Cohere's body: the message only (bounded and JSON-safe already)."""
    message = orjson.loads(response.body)["error"]["message"]
    headers = {k: response.headers[k] for k in KEPT_HEADERS if k in response.headers}
    return JSONResponse({"message": message}, status_code=response.status_code, headers=headers or None)


def shaped(path: str, response: JSONResponse) -> JSONResponse:
    """`response` as the peer whose route `path` is answers errors; unchanged on the service's own routes."""
    return as_cohere(response) if path in COHERE_PATHS else response
