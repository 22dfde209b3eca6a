"""The operations listener (service/api/ops_server.py) on real sockets: idle connections cannot lock probes
out (the cap evicts the oldest one still waiting for its head), and a scrape flood spends at most
MAX_RENDER_SHARE of the event loop rendering /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from service.api.ops_server import MAX_CONNECTIONS, MAX_RENDER_SHARE, OpsServer

RENDER_S = 0.005  # a render blocking the event loop 5 ms, as a large registry's does


class Rendering:
    def __init__(self, seconds: float = 0.0) -> None:
        self.calls = 0
        self.seconds = seconds

    def __call__(self) -> bytes:
        self.calls += 1
        time.sleep(self.seconds)  # blocks the event loop, as rendering does
        return b"# metrics\nqwen3_embed_up 1\n"


@contextlib.asynccontextmanager
async def ops(render: Rendering) -> AsyncIterator[int]:
    server = OpsServer(render, lambda: True, "127.0.0.1", 0)
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop()


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_probes_are_answered_beside_100_idle_connections() -> None:
    async with ops(Rendering()) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(100)]
        for _, writer in idle[::2]:
            writer.write(b"GET /health/live HTTP/1.1\r\n")  # half of them a head never finished
        await asyncio.sleep(0.2)
        statuses = [(await get(port, "/health/live"))[0] for _ in range(40)]
        statuses += [(await get(port, "/health/ready"))[0] for _ in range(40)]
        assert statuses == [200] * 80
        # The idle ones were evicted, oldest first, as probes came: at most the cap is left open.
        open_now = 0
        for reader, writer in idle:
            with contextlib.suppress(TimeoutError, ConnectionError):
                open_now += await asyncio.wait_for(reader.read(1), 0.01) != b""
            writer.close()
        assert open_now <= MAX_CONNECTIONS


async def test_a_scrape_flood_spends_a_bounded_share_of_the_loop_rendering() -> None:
    render = Rendering(RENDER_S)
    async with ops(render) as port:
        start = time.monotonic()
        answers = []
        for _ in range(20):  # 320 scrapes, 16 at a time (within the connection cap)
            answers += await asyncio.gather(*(get(port, "/metrics") for _ in range(16)))
        elapsed = time.monotonic() - start
        assert all(status == 200 and body.startswith(b"# metrics") for status, body in answers)
        print(f"320 scrapes in {elapsed:.2f} s: {render.calls} renders of {RENDER_S * 1000:.0f} ms")
        assert render.calls * RENDER_S <= MAX_RENDER_SHARE * elapsed * 1.5 + 2 * RENDER_S, (render.calls, elapsed)
        # Scrapes spaced by more than 10 renders' time are always fresh.
        for _ in range(3):
            await asyncio.sleep(0.3)  # 60 renders long: a slow render under load still fits
            calls = render.calls
            await get(port, "/metrics")
            assert render.calls == calls + 1
