"""uvicorn for the HTTP API, in the facade's event loop, with connection limits uvicorn lacks: a cap on open
connections (set from the process's file-descriptor limit) and a deadline for receiving each request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
import ssl
from collections.abc import Iterator
from typing import Any, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.http.app import build_app
from service.lifecycle import Lifecycle
from service.settings import Settings

log = logging.getLogger(__name__)
# Descriptors kept for everything that is not an HTTP connection: gRPC connections, Triton, logs, probes.
FD_RESERVE = 128


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def max_http_connections(settings: Settings) -> int:
    """The configured cap, or half of the descriptors left after the reserve: HTTP clients can never take
    the descriptors gRPC and health checks need."""
    by_fds = max(8, (raise_fd_limit() - FD_RESERVE) // 2)
    return min(settings.http_max_connections, by_fds) if settings.http_max_connections else min(by_fds, 4096)


class ConnectionLimits:
    """At most `max_connections` open: a new connection over the cap evicts the one that has waited longest
    without a request in progress (an idle or slow client), or is closed itself when all are busy. A
    connection whose request (headers and body) has not fully arrived within the request timeout is
    closed: slow-loris, slow bodies and silent connections all end. Mixed into uvicorn's protocol classes,
    which differ only in how they tell that a whole request has arrived (`_request_in`)."""

    max_connections = 1024
    request_timeout_s = 30.0
    # Provided by uvicorn's protocol classes.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    server_state: Any
    cycle: Any

    def _request_in(self) -> bool:
        """The current request (headers and body) has fully arrived."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._read_deadline: asyncio.TimerHandle | None = None
        self._waiting_since = self.loop.time()
        if len(self.server_state.connections) >= self.max_connections and not self._evict_one():
            cast(asyncio.Transport, transport).abort()
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def _waiting(self) -> bool:
        """No request of this connection is being served: nothing received yet, or a partial one."""
        return not self._request_in() and (self.cycle is None or self.cycle.response_complete)

    def _evict_one(self) -> bool:
        waiting = [c for c in self.server_state.connections if isinstance(c, ConnectionLimits) and c._waiting()]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._waiting_since)
        oldest.transport.abort()
        self.server_state.connections.discard(oldest)
        return True

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.request_timeout_s, self._on_read_deadline)

    def _disarm(self) -> None:
        timer = getattr(self, "_read_deadline", None)
        if timer is not None:
            timer.cancel()
            self._read_deadline = None

    def _on_read_deadline(self) -> None:
        self._read_deadline = None
        if not self._request_in() and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._request_in():  # the whole request is in: the app has it now
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._waiting_since = self.loop.time()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if getattr(self, "transport", None) is not None:
            super().connection_lost(exc)  # type: ignore[misc]


class LimitedH11Protocol(ConnectionLimits, H11Protocol):
    """h11, the pure-Python parser (`http_parser = "h11"`)."""

    def _request_in(self) -> bool:
        return self.conn.their_state is h11.DONE


class LimitedHttpToolsProtocol(ConnectionLimits, HttpToolsProtocol):
    """httptools (llhttp, in C), the default: measured cheaper per request than h11 (docs/benchmarks.md)."""

    # Whole requests received and responses completed on this connection: a request is in while the first
    # runs ahead of the second (pipelined requests included).
    _received = 0
    _answered = 0

    def _request_in(self) -> bool:
        return self._received > self._answered

    def on_message_complete(self) -> None:
        self._received += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()


PROTOCOLS: dict[str, type[ConnectionLimits]] = {"httptools": LimitedHttpToolsProtocol, "h11": LimitedH11Protocol}


def http_backlog(max_connections: int) -> int:
    """asyncio accepts up to `backlog` sockets per wake-up: a small burst keeps descriptors within the cap."""
    return max(16, min(2048, max_connections // 2))


class WorkerPidHeader:
    """ASGI wrapper adding `x-worker-pid` to every response (workers of `serve --workers N` only)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.header = (b"x-worker-pid", str(os.getpid()).encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, tagged)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the facade owns SIGTERM and drains both APIs."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start_http(
    lifecycle: Lifecycle, settings: Settings, sock: socket.socket | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Serves on settings.host/http_port, or on `sock`: the listening socket a worker of `serve --workers N`
    inherits from its parent and accepts from beside its siblings (its responses then name its pid)."""
    kwargs: dict[str, Any] = {}
    if settings.tls_cert and settings.tls_key:
        kwargs = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
        if settings.tls_client_ca:
            kwargs |= {"ssl_ca_certs": str(settings.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    limits = {"max_connections": max_http_connections(settings), "request_timeout_s": settings.http_request_timeout_s}
    protocol: type[ConnectionLimits] = type("Protocol", (PROTOCOLS[settings.http_parser],), limits)
    app: Any = build_app(lifecycle, settings)
    config = uvicorn.Config(
        app if sock is None else WorkerPidHeader(app),
        host=settings.host,
        port=settings.http_port,
        http=cast(Any, protocol),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=int(settings.http_keepalive_s) or 1,
        backlog=http_backlog(protocol.max_connections),
        timeout_graceful_shutdown=int(settings.drain_seconds) or None,
        **kwargs,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=None if sock is None else [sock]))
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error (port in use, bad certificate)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    log.info(
        "HTTP (%s): at most %d connections, %.0f s to send a request",
        settings.http_parser,
        protocol.max_connections,
        settings.http_request_timeout_s,
    )
    return server, task, port
