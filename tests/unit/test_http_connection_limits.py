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


RUNNING: list[uvicorn.Server] = []


def _connections() -> list[Any]:
    """The protocol objects of the server running now."""
    return list(RUNNING[-1].server_state.connections)


@contextlib.asynccontextmanager
async def server(parser: str, **limits: Any) -> AsyncIterator[int]:
    limits = {"max_connections": CAP, "request_timeout_s": TIMEOUT_S} | limits
    protocol = type("P", (PROTOCOLS[parser],), limits)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=protocol,
        lifespan="off",
        log_level="error",
        timeout_keep_alive=60,
        h11_max_incomplete_event_size=protocol.max_head_bytes,
    )
    srv = uvicorn.Server(config)
    RUNNING.append(srv)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        assert not task.done()
        await asyncio.sleep(0.01)
    try:
        yield srv.servers[0].sockets[0].getsockname()[1]
    finally:
        srv.should_exit = True
        await task
        RUNNING.remove(srv)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes (EOF or reset) within `seconds`, False when the connection stays open."""
    try:
        data = await asyncio.wait_for(reader.read(1 << 16), seconds)
    except TimeoutError:
        return False
    except ConnectionError:  # reset, or a write of ours failed on the closed socket
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


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_partial_body_is_evictable_it_holds_no_place_a_working_request_needs(parser: str) -> None:
    async with server(parser) as port:
        bodies = []
        for _ in range(CAP):  # the cap filled with bodies that never finish
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\npart")
            await writer.drain()
            bodies.append((reader, writer))  # the writer kept: a collected StreamWriter closes its socket
            await asyncio.sleep(0.02)
        assert len(_connections()) == CAP
        newcomer_reader, _newcomer = await request(port)
        assert await response(newcomer_reader) == b"ok"  # served: the oldest unfinished body made room
        assert await closed_within(bodies[0][0], 0.3)
        assert not await closed_within(bodies[1][0], 0.05)


PIPELINED = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.mark.parametrize("parser", PARSERS)
async def test_pipelined_requests_are_parsed_only_as_answers_are_read(parser: str) -> None:
    async with server(parser) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        count = 20_000
        writer.write(PIPELINED * count)  # 560 KB of requests; no answer read yet
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.drain(), 1.0)  # the server stops reading: this may never finish
        await asyncio.sleep(0.5)
        # Parsed but unanswered requests on the server: at most one parse slice of them (uvicorn alone
        # queued every request it read, thousands per read).
        from service.api.http.server import PARSE_SLICE

        queued = [len(getattr(c, "pipeline", ())) for c in _connections()]
        print(f"{parser}: {count} pipelined requests, none read: {max(queued, default=0)} queued on the server")
        assert max(queued, default=0) <= PARSE_SLICE // len(PIPELINED) + 1, queued
        # Reading the answers lets the rest through: every request is answered, in order.
        received = bytearray()
        while received.count(b"HTTP/1.1 200") < count:
            chunk = await asyncio.wait_for(reader.read(1 << 16), 10)
            assert chunk, f"closed after {received.count(b'HTTP/1.1 200')} answers"
            received += chunk
        assert received.count(b"HTTP/1.1 200") == count and received.endswith(b"ok")
        writer.close()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_huge_header_is_a_431_after_a_bounded_read(parser: str) -> None:
    async with server(parser, max_head_bytes=16384) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024 and not reader.at_eof():
                writer.write(b"a" * 65536)  # a 64 MB header value, sent until the server answers
                sent += 65536
                await asyncio.wait_for(writer.drain(), 5)
                if reader._buffer:  # type: ignore[attr-defined]  # the answer has arrived
                    break
        head = await asyncio.wait_for(reader.read(1 << 16), 5)
        print(f"{parser}: a 64 MB header answered {head[:12]!r} after {sent / 2**20:.2f} MiB sent")
        assert head.startswith(b"HTTP/1.1 431"), head[:80]
        assert sent < 8 * 1024 * 1024  # refused long before the whole header was sent


@pytest.mark.parametrize("parser", PARSERS)
async def test_unfinished_huge_heads_cost_little_memory(parser: str) -> None:
    # A request deadline long enough to send it all: only the head limit can stop it.
    async with server(parser, max_connections=64, max_head_bytes=16384, request_timeout_s=60) as port:
        before = rss_bytes()
        peers = []
        for _ in range(8):  # each sends 16 MB of one header and never finishes it
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: ")
            with contextlib.suppress(ConnectionError, TimeoutError):
                for _ in range(256):
                    writer.write(b"a" * 65536)
                    await asyncio.wait_for(writer.drain(), 2)
            peers.append((reader, writer))
        grown = rss_bytes() - before
        print(f"{parser}: 8 connections x 16 MB of an unfinished header: server RSS +{grown / 2**20:.1f} MiB")
        for reader, _writer in peers:
            assert await closed_within(reader, 2)  # each was refused and closed
        assert grown < 48 * 1024 * 1024, f"{grown / 2**20:.0f} MiB"
