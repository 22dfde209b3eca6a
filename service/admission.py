"""Admission: how many requests a facade process works on at once, shared fairly by unary calls and streams.

Unary calls (Embed, Tokenize, HTTP) are refused at once when the process is full, so clients back off.
Stream messages wait for a slot instead (backpressure), but all streams together may hold at most
`capacity - reserve` slots: a few busy streams can never starve unary traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.errors import ErrorKind, ServiceError
from service.metrics import Metrics


def unary_reserve(capacity: int) -> int:
    """Slots streams cannot take: a quarter of the capacity, at least one (none when capacity is 1)."""
    return 0 if capacity <= 1 else max(1, capacity // 4)


class Admission:
    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.stream_capacity = max(1, capacity - unary_reserve(capacity))
        self.metrics = metrics
        self.in_use = 0
        self.stream_in_use = 0
        self._changed = asyncio.Condition()

    def _take(self, stream: bool) -> None:
        self.in_use += 1
        self.stream_in_use += stream
        self.metrics.in_flight.inc()

    async def _give(self, stream: bool) -> None:
        self.in_use -= 1
        self.stream_in_use -= stream
        self.metrics.in_flight.dec()
        async with self._changed:
            self._changed.notify_all()

    @asynccontextmanager
    async def unary(self) -> AsyncIterator[None]:
        """One slot now, or RESOURCE_EXHAUSTED."""
        if self.in_use >= self.capacity:
            raise ServiceError(
                ErrorKind.RESOURCE_EXHAUSTED,
                f"server overloaded: {self.capacity} requests in flight; retry after a short backoff",
            )
        self._take(stream=False)
        try:
            yield
        finally:
            await self._give(stream=False)

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[None]:
        """One slot for a stream message, waiting (cancellably) until the streams' share has room."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.in_use < self.capacity and self.stream_in_use < self.stream_capacity
            )
            self._take(stream=True)
        try:
            yield
        finally:
            await self._give(stream=True)
