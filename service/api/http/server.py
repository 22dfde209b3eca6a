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

from service import request_id
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
    max_head_bytes = 16384  # request line and headers
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
        """No request of this connection is being served: nothing received yet, a partial head, or a partial
        body not yet answered (the app only reads it: admission comes after the whole body)."""
        if self._request_in():
            return False
        cycle = self.cycle
        return cycle is None or cycle.response_complete or not cycle.response_started

    def _refuse_head(self) -> None:
        """431 and close: the request line and headers passed max_head_bytes."""
        message = f"request line and headers over {self.max_head_bytes} bytes"
        self._refuse(b"431 Request Header Fields Too Large", message)

    def send_400_response(self, msg: str) -> None:
        """The parser's 400 (a request it cannot read), as uvicorn writes it but with a request id too."""
        self._refuse(b"400 Bad Request", msg)

    def _refuse(self, status: bytes, message: str) -> None:
        """A plain-text answer and close, for a request the app never sees: it still carries a request id (a
        new one: the client's headers were not read, or not trusted)."""
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            + b"x-request-id: " + request_id.new().encode() + b"\r\n"
            + b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )  # fmt: skip
        self.transport.close()

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
    """h11, the pure-Python parser (`http_parser = "h11"`). It bounds the head itself (its incomplete-event
    limit, set to max_head_bytes) and parses no pipelined request before the one in progress is answered."""

    def _request_in(self) -> bool:
        return self.conn.their_state is h11.DONE

    def send_400_response(self, msg: str) -> None:
        # h11 refuses a head over its limit as any other protocol error; it is a 431 (RFC 6585).
        if self.conn.their_state is h11.ERROR and len(self.conn.trailing_data[0]) > self.max_head_bytes:
            self._refuse_head()
            return
        super().send_400_response(msg)


# httptools parses whatever it is fed, up to the end of the buffer: fed in slices of this size, it stops
# within one slice after a pipelined request, and a head is measured to within a slice.
PARSE_SLICE = 16384


class LimitedHttpToolsProtocol(ConnectionLimits, HttpToolsProtocol):
    """httptools (llhttp, in C), the default: measured cheaper per request than h11 (docs/benchmarks.md).

    llhttp has no pause and uvicorn queues every pipelined request it parses (one 256 KiB read of
    `GET /health/live` is thousands of queued requests, and each answer resumes reading): here bytes past a
    pipelined request wait unparsed, with reading paused, until the requests before them are answered. A
    head (bytes fed while no request's headers are complete) over max_head_bytes is a 431: llhttp has no
    limit, and httptools joins a header's pieces by copying them each time."""

    # Whole requests received and responses completed on this connection: a request is in while the first
    # runs ahead of the second (pipelined requests included).
    _received = 0
    _answered = 0
    _held = b""  # read but not parsed: behind a pipelined request still waiting for its turn
    _resume_scheduled = False
    _in_head = True
    _head_bytes = 0  # of the head in progress, counted in whole slices: it may pass the cap by one slice
    _progress = 0  # heads and messages completed

    def _request_in(self) -> bool:
        return self._received > self._answered

    def data_received(self, data: bytes) -> None:
        if self._held or self._resume_scheduled:  # reading is paused: a last read waits its turn too
            self._held += data
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), PARSE_SLICE):
            piece = view[start : start + PARSE_SLICE]
            progress = self._progress
            super().data_received(piece)  # type: ignore[arg-type]  # llhttp reads any buffer
            if self.transport.is_closing() or self.parser is None:
                return
            if self._progress != progress:  # a head or a message ended in this slice: a new head starts
                self._head_bytes = 0
            elif self._in_head:  # the whole slice belongs to the head in progress
                self._head_bytes += len(piece)
                if self._head_bytes > self.max_head_bytes:
                    self._refuse_head()
                    return
            if self.pipeline:  # a parsed request waits behind one not yet answered: parse no further
                self._held = bytes(view[start + PARSE_SLICE :])
                self.flow.pause_reading()
                return

    def _parse_held(self) -> None:
        self._resume_scheduled = False
        held, self._held = self._held, b""
        if self.transport.is_closing() or self.parser is None:
            return
        self._parse(held)
        if not self._held and not self.pipeline and not self.transport.is_closing():
            self.flow.resume_reading()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._progress += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._received += 1
        self._in_head = True
        self._progress += 1
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._answered += 1
        super().on_response_complete()  # starts the next queued request, if any, and resumes reading
        if self.transport.is_closing() or not (self.pipeline or self._held):
            return
        self.flow.pause_reading()  # the queue first, then the held bytes
        if not self.pipeline and not self._resume_scheduled:
            self._resume_scheduled = True
            self.loop.call_soon(self._parse_held)  # not from inside the finished response's send()


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
    limits = {
        "max_connections": max_http_connections(settings),
        "request_timeout_s": settings.http_request_timeout_s,
        "max_head_bytes": settings.http_max_head_bytes,
    }
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
        h11_max_incomplete_event_size=settings.http_max_head_bytes,
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
