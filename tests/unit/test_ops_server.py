"""The operations listener (service/api/ops_server.py) on real sockets: idle connections cannot lock probes
out (the cap evicts the oldest one still waiting for its head), and a scrape flood renders /metrics at most
once per METRICS_MAX_AGE_S."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from service.api.ops_server import MAX_CONNECTIONS, METRICS_MAX_AGE_S, OpsServer


class Rendering:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
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


async def test_a_scrape_flood_renders_metrics_at_most_once_per_interval() -> None:
    render = Rendering()
    async with ops(render) as port:
        start = time.monotonic()
        answers = []
        for _ in range(20):  # 320 scrapes, 16 at a time (within the connection cap)
            answers += await asyncio.gather(*(get(port, "/metrics") for _ in range(16)))
        elapsed = time.monotonic() - start
        assert all(status == 200 and body.startswith(b"# metrics") for status, body in answers)
        assert render.calls <= 2 + elapsed / METRICS_MAX_AGE_S, (render.calls, elapsed)
        await asyncio.sleep(METRICS_MAX_AGE_S + 0.05)
        calls = render.calls
        await get(port, "/metrics")
        assert render.calls == calls + 1  # fresh again once the interval has passed
