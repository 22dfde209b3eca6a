"""Concurrent requests' rows in fewer backend calls, per model and padded width.

A request's chunk (its token sequences of one padded width) goes out at once while fewer than
`max_in_flight` calls to the model are in flight: no added latency at low load. Once the limit is reached,
chunks wait; when a call returns, the oldest waiting chunk goes out together with the other waiting chunks of
its width, in arrival order, as many as fit the token budget and the model's batch size. Every call costs
the facade (a gRPC client call) and Triton (a request) a fixed amount, so under load fewer, fuller calls
mean less CPU per request on both sides, the same total rows.

Each request awaits only its own rows. A request that goes away (cancelled, or past its deadline, which
the lifecycle turns into a cancellation) takes its rows out if they were not sent yet; a call whose every
request went away is cancelled; a failed call fails only the requests whose rows it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import ErrorKind, ServiceError

# (width, sequences, seconds left) -> [len(sequences), out] rows
Call = Callable[[int, list[Sequence[int]], float], Awaitable[np.ndarray]]


@dataclass(eq=False)
class _Chunk:
    width: int
    rows: Sequence[Sequence[int]]
    deadline: float
    future: asyncio.Future[np.ndarray]
    sent: _Sent | None = None


@dataclass(eq=False)
class _Sent:
    """One backend call and the chunks it carries."""

    chunks: list[_Chunk]
    task: asyncio.Task[None] | None = None


class Coalescer:
    """One per served model. `call` runs one backend call of padded width `width` over `sequences`."""

    def __init__(self, call: Call, *, max_in_flight: int, token_budget: int, max_rows: int) -> None:
        self._call = call
        self.max_in_flight = max_in_flight  # 0: no limit, every chunk goes out alone at once
        self.token_budget = token_budget
        self.max_rows = max_rows
        self._waiting: deque[_Chunk] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # backend calls made (tests, benchmarks)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self, width: int, rows: Sequence[Sequence[int]], deadline: float) -> np.ndarray:
        """The backend's rows for `rows` (padded to `width`), in order. `deadline` is time.monotonic()."""
        if time.monotonic() >= deadline:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
        chunk = _Chunk(width, rows, deadline, asyncio.get_running_loop().create_future())
        self._waiting.append(chunk)
        self._pump()
        try:
            return await chunk.future
        except asyncio.CancelledError:
            self._abandon(chunk)
            raise

    def _abandon(self, chunk: _Chunk) -> None:
        chunk.future.cancel()
        sent = chunk.sent
        if sent is None:
            with contextlib.suppress(ValueError):
                self._waiting.remove(chunk)
            return
        # Sent: the call goes on for the other requests it carries, if any.
        if sent.task is not None and all(c.future.done() for c in sent.chunks):
            sent.task.cancel()

    def _pump(self) -> None:
        while self._waiting and (self.max_in_flight <= 0 or self._in_flight < self.max_in_flight):
            batch = self._take()
            if batch:
                self._start(batch)

    def _take(self) -> list[_Chunk]:
        """The oldest waiting chunk and, behind it, the waiting chunks of its width that fit with it."""
        now = time.monotonic()
        first = self._waiting.popleft()
        if first.deadline <= now:
            self._expire(first)
            return []
        batch, rows = [first], len(first.rows)
        width = first.width
        if len(self._waiting) and self.max_in_flight > 0:
            kept: deque[_Chunk] = deque()
            for chunk in self._waiting:
                n = len(chunk.rows)
                if chunk.width == width and rows + n <= self.max_rows and (rows + n) * width <= self.token_budget:
                    if chunk.deadline <= now:
                        self._expire(chunk)
                        continue
                    batch.append(chunk)
                    rows += n
                else:
                    kept.append(chunk)
            self._waiting = kept
        return batch

    @staticmethod
    def _expire(chunk: _Chunk) -> None:
        if not chunk.future.done():
            chunk.future.set_exception(
                ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
            )

    def _start(self, batch: list[_Chunk]) -> None:
        self._in_flight += 1
        self.calls += 1
        sent = _Sent(batch)
        for chunk in batch:
            chunk.sent = sent
        task = asyncio.get_running_loop().create_task(self._send(batch))
        sent.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Chunk]) -> None:
        try:
            rows: list[Sequence[int]] = [r for chunk in batch for r in chunk.rows]
            timeout = max(chunk.deadline for chunk in batch) - time.monotonic()
            try:
                out = await self._call(batch[0].width, rows, timeout)
            except asyncio.CancelledError:
                for chunk in batch:
                    chunk.future.cancel()
                raise
            except ServiceError as exc:
                for chunk in batch:
                    if not chunk.future.done():
                        chunk.future.set_exception(ServiceError(exc.kind, exc.message, exc.param))
                return
            except Exception as exc:
                for chunk in batch:
                    if not chunk.future.done():
                        chunk.future.set_exception(exc)
                return
            start = 0
            for chunk in batch:
                n = len(chunk.rows)
                if not chunk.future.done():
                    chunk.future.set_result(out[start : start + n])
                start += n
        finally:
            self._in_flight -= 1
            self._pump()
