"""Admission: how many requests a facade process works on at once, shared between unary calls and streams and
between priority classes (service/priority.py).

Interactive unary calls (Embed, Tokenize, Rerank, HTTP) are refused at once when the process is full, so
clients back off. Stream messages wait for a slot instead (backpressure), but all streams together may hold
at most `capacity - reserve` slots: a few busy streams can never starve unary traffic. Bulk requests, unary
or not, also wait for a slot (a backfill is slowed, never failed, by search traffic) and all of them together
hold at most `capacity - reserve` slots too: interactive requests always find the reserve free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from service.errors import ErrorKind, ServiceError
from service.metrics import Metrics
from service.priority import Priority


def unary_reserve(capacity: int) -> int:
    """Slots streams (and bulk requests) cannot take: a quarter of the capacity, at least one (none when
    capacity is 1)."""
    return 0 if capacity <= 1 else max(1, capacity // 4)


class Admission:
    def __init__(self, capacity: int, metrics: Metrics) -> None:
        self.capacity = capacity
        self.stream_capacity = max(1, capacity - unary_reserve(capacity))
        self.bulk_capacity = max(1, capacity - unary_reserve(capacity))
        self.metrics = metrics
        self.in_use = 0
        self.stream_in_use = 0
        self.bulk_in_use = 0
        self._changed = asyncio.Condition()
        # Per-class metric children, looked up once (labels() takes a lock and walks a dict).
        self._children: dict[Priority, tuple[Any, Any, Any, Any]] = {
            p: (
                metrics.admission_wait_seconds.labels(p.value),
                metrics.priority_in_flight.labels(p.value),
                metrics.priority_requests.labels(p.value),
                metrics.priority_request_seconds.labels(p.value),
            )
            for p in Priority
        }

    def _has_room(self, stream: bool, bulk: bool) -> bool:
        return (
            self.in_use < self.capacity
            and (not stream or self.stream_in_use < self.stream_capacity)
            and (not bulk or self.bulk_in_use < self.bulk_capacity)
        )

    def _take(self, stream: bool, bulk: bool) -> None:
        self.in_use += 1
        self.stream_in_use += stream
        self.bulk_in_use += bulk
        self.metrics.in_flight.inc()

    async def idle(self) -> None:
        """Returns once no slot is held (the drain's wait for the admitted work)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_use == 0)

    async def _give(self, stream: bool, bulk: bool) -> None:
        self.in_use -= 1
        self.stream_in_use -= stream
        self.bulk_in_use -= bulk
        self.metrics.in_flight.dec()
        async with self._changed:
            self._changed.notify_all()

    @asynccontextmanager
    async def slot(self, priority: Priority = Priority.INTERACTIVE, stream: bool = False) -> AsyncIterator[None]:
        """One slot: an interactive unary call's now or RESOURCE_EXHAUSTED; a stream message's or a bulk
        request's once its share has room (a cancellable wait: the lifecycle's deadline bounds it)."""
        bulk = priority is Priority.BULK
        wait_s, in_flight, requests, seconds = self._children[priority]
        started = time.perf_counter()
        if not stream and not bulk:
            if not self._has_room(False, False):
                raise ServiceError(
                    ErrorKind.RESOURCE_EXHAUSTED,
                    f"server overloaded: {self.capacity} requests in flight; retry after a short backoff",
                )
            self._take(False, False)
        else:
            async with self._changed:
                await self._changed.wait_for(lambda: self._has_room(stream, bulk))
                self._take(stream, bulk)
        wait_s.observe(time.perf_counter() - started)
        in_flight.inc()
        requests.inc()
        try:
            yield
        finally:
            in_flight.dec()
            seconds.observe(time.perf_counter() - started)
            await self._give(stream, bulk)

    def unary(self) -> Any:
        """An interactive unary call's slot (slot())."""
        return self.slot(Priority.INTERACTIVE, stream=False)

    def stream(self) -> Any:
        """An interactive stream message's slot (slot())."""
        return self.slot(Priority.INTERACTIVE, stream=True)
