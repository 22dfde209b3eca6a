"""The gate in front of every HTTP route: a pure ASGI middleware (no buffering, disconnects pass through)."""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import KeyChecker
from service.api.http.peer_errors import shaped
from service.api.http.priority import applied_header, pin
from service.api.http.wire import BodyTooLarge, HttpContext, error_response, payload_too_large, plain_error
from service.errors import ErrorKind

KNOWN_PATHS = {
    "/v1/embeddings",
    "/embeddings",
    "/v1/rerank",
    "/rerank",
    "/v1/models",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/info",
    # TEI's and vLLM's routes (tei.py, tokenize.py)
    "/",
    "/invocations",
    "/embed",
    "/embed_all",
    "/embed_sparse",
    "/predict",
    "/similarity",
    "/tokenize",
    "/decode",
    "/detokenize",
    "/health",
    # Cohere's and NIM's routes (cohere.py, nim.py)
    "/v1/embed",
    "/v2/embed",
    "/v2/rerank",
    "/v1/ranking",
    "/v1/health/live",
    "/v1/health/ready",
    "/v1/metrics",
}


def route_label(path: str) -> str:
    """Metric label: known paths as they are, model lookups as one label, anything else as "other"."""
    if path in KNOWN_PATHS:
        return path
    return "/v1/models/{id}" if path.startswith("/v1/models/") else "other"


class HttpGate:
    """Auth, declared size and content type
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
        # The parsers bound the whole head (service/api/http/server.py); these are the finer limits.
        if len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") > self.max_url:
            return plain_error(414, f"the URL is over {self.max_url} bytes", "uri_too_long", True)
        if len(scope["headers"]) > self.max_headers:
            return plain_error(431, f"more than {self.max_headers} header fields", "header_fields_too_large", True)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        if self.checker.enabled and not self.checker.is_exempt(path):
            if self.checker.check(headers.get("authorization")):
                pin(scope, self.checker.pinned(headers.get("authorization")))
            else:
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
                if (echo := applied_header(scope)) is not None:
                    message = {**message, "headers": [*message.get("headers", ()), echo]}
            await send(message)

        refusal = self.refusal(scope)
        try:
            if refusal is not None:
                await shaped(scope["path"], refusal)(scope, receive, recording_send)
            else:
                await self.app(scope, capped_receive, recording_send)
        except BodyTooLarge:
            await shaped(scope["path"], payload_too_large(self.limit))(scope, receive, recording_send)
        finally:
            metrics = self.ctx.lifecycle.state.metrics
            route = route_label(scope["path"])
            metrics.requests.labels("http", route, str(status[0])).inc()
            metrics.request_seconds.labels("http", route).observe(time.perf_counter() - started)
