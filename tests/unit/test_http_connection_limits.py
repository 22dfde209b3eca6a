"""The HTTP connection limits (service/api/http/server.py) with each parser, on a real uvicorn server and raw
sockets: slow-loris headers and bodies are cut at the request deadline, a request being served is never cut
or evicted, kept-alive idle connections get a fresh deadline, and the cap evicts the longest-idle one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from service.api.http.server import PROTOCOLS

TIMEOUT_S = 0.5
CAP = 4
SLOW_APP_S = 1.2  # longer than the request deadline: serving a request must not count against it


async def app(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_APP_S)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def server(parser: str) -> AsyncIterator[int]:
    protocol = type("P", (PROTOCOLS[parser],), {"max_connections": CAP, "request_timeout_s": TIMEOUT_S})
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=protocol, lifespan="off", log_level="error", timeout_keep_alive=60
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        assert not task.done()
        await asyncio.sleep(0.01)
    try:
        yield srv.servers[0].sockets[0].getsockname()[1]
    finally:
        srv.should_exit = True
        await task


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes (EOF or reset) within `seconds`, False when the connection stays open."""
    try:
        data = await asyncio.wait_for(reader.read(1 << 16), seconds)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return data == b""


async def request(port: int, path: str = "/") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    return await asyncio.wait_for(reader.readexactly(2), 5)


PARSERS = sorted(PROTOCOLS)


@pytest.mark.parametrize("parser", PARSERS)
async def test_partial_headers_and_bodies_are_cut_at_the_deadline(parser: str) -> None:
    async with server(parser) as port:
        loris_reader, loris = await asyncio.open_connection("127.0.0.1", port)
        loris.write(b"GET / HTTP/1.1\r\nhost: x\r\n")  # headers never finished
        body_reader, body = await asyncio.open_connection("127.0.0.1", port)
        body.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly part")  # body never finished
        await asyncio.gather(loris.drain(), body.drain())
        assert await closed_within(loris_reader, TIMEOUT_S + 2)
        assert await closed_within(body_reader, TIMEOUT_S + 2)


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_request_being_served_is_not_cut_and_keepalive_gets_a_fresh_deadline(parser: str) -> None:
    async with server(parser) as port:
        reader, writer = await request(port, "/slow")  # served for longer than the request deadline
        assert await response(reader) == b"ok"
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # the same connection, a second request
        await writer.drain()
        assert await response(reader) == b"ok"
        # Idle after its response: closed by the request deadline, not kept for the 60 s keep-alive.
        assert await closed_within(reader, TIMEOUT_S + 2)


@pytest.mark.parametrize("parser", PARSERS)
async def test_the_cap_evicts_the_longest_idle_connection_never_a_busy_one(parser: str) -> None:
    async with server(parser) as port:
        busy_reader, _busy = await request(port, "/slow")
        await asyncio.sleep(0.1)
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CAP - 1)]
        await asyncio.sleep(0.1)
        # One over the cap: the oldest idle connection goes, the busy one (older still) stays.
        newcomer_reader, _newcomer = await request(port)
        assert await response(newcomer_reader) == b"ok"
        assert await closed_within(idle[0][0], 0.3)
        assert not await closed_within(idle[1][0], 0.05)
        assert await response(busy_reader) == b"ok"
