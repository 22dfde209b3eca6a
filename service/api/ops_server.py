"""The operations listener (QWEN3_EMBED_METRICS_PORT): plaintext HTTP serving /metrics, /health/live and
/health/ready only, without API keys or TLS.

Why a listener of its own: Prometheus scrapes without the API's keys, and kubelet probes speak neither
TLS client certificates (mTLS) nor TLS for gRPC probes. Nothing here reveals more than the counters and
readiness; it serves no embeddings, reads only a bounded request head and answers with `Connection: close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from service.state import ServiceState

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 8192  # request line + headers; Prometheus and kubelet send a few hundred bytes
READ_TIMEOUT_S = 5.0  # to send the request head; then the connection is closed
# A probe and a scrape at a time is the normal load. Over the cap a newcomer evicts the oldest connection
# still waiting for its head (idle sockets cannot lock the kubelet out); only when all are being answered
# is it closed itself.
MAX_CONNECTIONS = 32
# Rendering /metrics takes at most this share of the event loop the API shares: a scrape that comes sooner
# after the last render than RENDER_SPACING times its duration gets that render's bytes, which are never
# older than MAX_STALE_S (a gauge polled to catch a short state must still see it). Scrapes spaced as
# Prometheus spaces them (15 s) are always fresh; a scrape flood costs copies of cached bytes.
MAX_RENDER_SHARE = 0.1
RENDER_SPACING = 1 / MAX_RENDER_SHARE
MAX_STALE_S = 0.05
PATHS = ("/metrics", "/health/live", "/health/ready")


class OpsServer:
    """`render` gives /metrics, `is_ready` /health/ready: a facade process's own (for_state), or with
    `serve --workers N` the parent's view of all workers (service/workers.py)."""

    def __init__(self, render: Callable[[], bytes], is_ready: Callable[[], bool], host: str, port: int) -> None:
        self.render = render
        self.is_ready = is_ready
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        # Open connections, oldest first: True once the head is in and the answer is being written.
        self._open: dict[asyncio.StreamWriter, bool] = {}
        self._metrics = b""
        self._fresh_until = 0.0  # monotonic time before which the last render is served again

    @classmethod
    def for_state(cls, state: ServiceState, host: str, port: int) -> OpsServer:
        return cls(state.metrics.render, lambda: state.ready and not state.draining, host, port)

    async def start(self) -> int:
        """Binds (OSError when the port is taken) and returns the bound port."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_HEAD_BYTES)
        port: int = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health (plaintext, no API key) on %s:%d", self.host, port)
        return port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(TimeoutError):  # connections end within READ_TIMEOUT_S anyway
            await asyncio.wait_for(self._server.wait_closed(), READ_TIMEOUT_S)

    def answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) for one request."""
        path = path.split("?", 1)[0]
        if path not in PATHS:
            return 404, b'{"error": "not found: this port serves /metrics and /health/* only"}', "application/json"
        if method not in ("GET", "HEAD"):
            return 405, b'{"error": "method not allowed"}', "application/json"
        if path == "/metrics":
            return 200, self.metrics(), CONTENT_TYPE_LATEST
        if path == "/health/live":
            return 200, b'{"status": "live"}', "application/json"
        ready = self.is_ready()
        body = json.dumps({"status": "ready" if ready else "not ready"}).encode()
        return (200 if ready else 503), body, "application/json"

    def metrics(self) -> bytes:
        start = time.monotonic()
        if start >= self._fresh_until:
            self._metrics = self.render()
            end = time.monotonic()
            self._fresh_until = end + min((end - start) * (RENDER_SPACING - 1), MAX_STALE_S)
        return self._metrics

    def _evict_waiting(self) -> bool:
        """Closes the oldest connection that has not sent its head; False when every one is being answered."""
        oldest = next((writer for writer, answering in self._open.items() if not answering), None)
        if oldest is None:
            return False
        del self._open[oldest]
        oldest.transport.abort()  # its handler ends on the lost connection
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= MAX_CONNECTIONS and not self._evict_waiting():
            writer.close()
            return
        self._open[writer] = False
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                if writer not in self._open:  # evicted just as its head arrived
                    return
                self._open[writer] = True
                parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    status, body, ctype = 400, b'{"error": "bad request"}', "application/json"
                else:
                    status, body, ctype = self.answer(parts[0], parts[1])
                reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
                    status, "Service Unavailable"
                )
                header = (
                    f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
                )
                writer.write(header.encode("latin-1") + (b"" if parts[:1] == ["HEAD"] else body))
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # slow, oversized or vanished clients just lose their connection
        finally:
            self._open.pop(writer, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
