"""The outermost HTTP layer: every response carries `X-Request-Id` (the client's valid one, else a new one),
logs written while a request runs carry it, and the API routes (POST) get their trace span here, continuing
the client's `traceparent`. A pure ASGI middleware: it adds a header and watches the status, nothing else."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import request_id, tracing

access_log = logging.getLogger("qwen3_embed.access")
# Routes whose requests are traced: the work the service does (probes and metrics scrapes would be noise).
TRACED = frozenset({"/v1/embeddings", "/v1/rerank", "/rerank"})
_HEADER = request_id.HEADER.encode()


class RequestEdge:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent_id: bytes | None = None
        for key, value in scope["headers"]:
            if key.lower() == _HEADER:
                sent_id = value
                break
        rid = request_id.choose(sent_id)
        header = (_HEADER, rid.encode())
        status = [0]

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        token = request_id.current.set(rid)
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        try:
            if method == "POST" and path in TRACED and tracing.enabled():
                await self._traced(scope, receive, tagged, rid, status)
            else:
                await self.app(scope, receive, tagged)
        finally:
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug("%s %s %d in %.1f ms", method, path, status[0], (time.perf_counter() - started) * 1e3)
            request_id.current.reset(token)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, rid: str, status: list[int]) -> None:
        path = scope["path"]
        attributes = {
            "http.request.method": "POST",
            "http.route": path,
            "url.path": path,
            tracing.REQUEST_ID: rid,
        }
        with tracing.request_span(f"POST {path}", scope["headers"], **attributes) as span:
            try:
                await self.app(scope, receive, send)
            finally:
                code = status[0] or 500  # no response started: the server answers 500
                tracing.set_outcome(
                    span, f"HTTP {code}" if code >= 500 else None, **{"http.response.status_code": code}
                )
