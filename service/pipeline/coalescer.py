"""Concurrent requests' rows in fewer backend calls, per model and padded width, shared fairly between requests.

A request's chunk (its token sequences of one padded width) goes out at once while fewer than
`max_in_flight` calls to the model are in flight: no added latency at low load. Once the limit is reached,
chunks wait; when a call returns, the next chunk goes out together with other waiting chunks of its width,
as many as fit the token budget and the model's batch size. Every call costs the facade (a gRPC client call)
and Triton (a request) a fixed amount, so under load fewer, fuller calls mean less CPU per request on both
sides, the same total rows.

Which chunk is next is a fair share by padded tokens between requests (start-time fair queueing): every
chunk gets a start tag, its request's previous chunk's finish tag (or the current virtual time, for a
request with nothing waiting), and a finish tag = start + its padded tokens; the smallest start tag goes next
(ties: arrival order), and the virtual time moves to it. A request split into many chunks therefore takes
turns with the others instead of holding the model until all of its chunks are done: a chunk that arrives
waits for at most the calls already in flight and one chunk of each other request waiting (each at most the
token budget, or one row of the model's longest input), whatever those requests' sizes
(docs/reliability.md, "Fair share between requests").

Each request awaits only its own rows. A request that goes away (cancelled, or past its deadline, which
the lifecycle turns into a cancellation) takes its rows out if they were not sent yet; a chunk whose
deadline passed while it waited is dropped, never sent; a call whose every request went away is cancelled;
a failed call fails only the requests whose rows it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from bisect import insort
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from service import tracing
from service.errors import ErrorKind, ServiceError

# (width, sequences, seconds left) -> [len(sequences), out] rows
Call = Callable[[int, list[Sequence[int]], float], Awaitable[np.ndarray]]


@dataclass(eq=False)
class _Chunk:
    width: int
    rows: Sequence[Sequence[int]]
    deadline: float
    future: asyncio.Future[np.ndarray]
    owner: Hashable
    start: float = 0.0  # fair-queueing start tag (padded tokens of virtual time)
    seq: int = 0  # arrival order: breaks ties between equal start tags
    sent: _Sent | None = None
    # time.time_ns() when queued and when its call went out: the trace's queue and inference spans
    queued_ns: int = 0
    sent_ns: int = 0

    @property
    def key(self) -> tuple[float, int]:
        return (self.start, self.seq)


@dataclass(eq=False)
class _Sent:
    """One backend call and the chunks it carries."""

    chunks: list[_Chunk]
    task: asyncio.Task[None] | None = None
    rows: int = 0  # of all its chunks


@dataclass
class _Owner:
    """A request's place in the fair share: the finish tag of its last chunk and how many of its chunks are
    waiting or in flight (while any is, its next chunk starts where its last one finishes)."""

    finish: float = 0.0
    active: int = 0


@dataclass
class _Queue:
    """Waiting chunks by (start tag, arrival)."""

    chunks: list[_Chunk] = field(default_factory=list)

    def add(self, chunk: _Chunk) -> None:
        insort(self.chunks, chunk, key=lambda c: c.key)

    def remove(self, chunk: _Chunk) -> None:
        with contextlib.suppress(ValueError):
            self.chunks.remove(chunk)

    def __len__(self) -> int:
        return len(self.chunks)


class Coalescer:
    """One per served model. `call` runs one backend call of padded width `width` over `sequences`."""

    def __init__(self, call: Call, *, max_in_flight: int, token_budget: int, max_rows: int) -> None:
        self._call = call
        self.max_in_flight = max_in_flight  # 0: no limit, every chunk goes out alone at once
        self.token_budget = token_budget
        self.max_rows = max_rows
        self._waiting = _Queue()
        self._owners: dict[Hashable, _Owner] = {}
        self._virtual = 0.0  # the start tag of the chunk sent last
        self._seq = itertools.count()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # backend calls made (tests, benchmarks)
        self.dropped = 0  # chunks whose deadline passed while they waited: never sent

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(
        self, width: int, rows: Sequence[Sequence[int]], deadline: float, owner: Hashable | None = None
    ) -> np.ndarray:
        """The backend's rows for `rows` (padded to `width`), in order. `deadline` is time.monotonic().
        `owner` names the request the chunk belongs to (the fair share is between owners; a request's
        chunks should share one, e.g. a fresh object()); None: the chunk is its own owner."""
        if time.monotonic() >= deadline:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        chunk = _Chunk(width, rows, deadline, future, owner if owner is not None else object())
        chunk.queued_ns = time.time_ns()
        self._enqueue(chunk)
        self._pump()
        error: str | None = "cancelled"
        try:
            out = await chunk.future
            error = None
            return out
        except asyncio.CancelledError:
            self._abandon(chunk)
            raise
        except Exception as exc:
            error = exc.message if isinstance(exc, ServiceError) else type(exc).__name__
            raise
        finally:
            self._done(chunk)
            if tracing.enabled():
                sent = chunk.sent
                tracing.model_call(
                    width, len(rows), sent.rows if sent else 0, chunk.queued_ns, chunk.sent_ns, time.time_ns(), error
                )

    def _enqueue(self, chunk: _Chunk) -> None:
        state = self._owners.get(chunk.owner)
        if state is None:
            state = self._owners[chunk.owner] = _Owner(finish=self._virtual)
        chunk.start = max(self._virtual, state.finish)
        chunk.seq = next(self._seq)
        state.finish = chunk.start + len(chunk.rows) * chunk.width
        state.active += 1
        self._waiting.add(chunk)

    def _done(self, chunk: _Chunk) -> None:
        """`chunk` has its answer (rows, error or cancellation): an owner with nothing left waiting or in
        flight is forgotten, so its next chunk would start at the current virtual time."""
        state = self._owners.get(chunk.owner)
        if state is not None:
            state.active -= 1
            if state.active <= 0:
                del self._owners[chunk.owner]

    def _abandon(self, chunk: _Chunk) -> None:
        chunk.future.cancel()
        sent = chunk.sent
        if sent is None:
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
        """The waiting chunk with the smallest start tag and, behind it in tag order, the waiting chunks of its
        width that fit with it; chunks past their deadline are dropped on the way."""
        now = time.monotonic()
        queue = self._waiting.chunks
        first = queue.pop(0)
        if first.deadline <= now:
            self._expire(first)
            return []
        self._virtual = max(self._virtual, first.start)
        batch, rows = [first], len(first.rows)
        width = first.width
        if queue and self.max_in_flight > 0:
            kept: list[_Chunk] = []
            for chunk in queue:
                n = len(chunk.rows)
                if chunk.deadline <= now:
                    self._expire(chunk)
                elif chunk.width == width and rows + n <= self.max_rows and (rows + n) * width <= self.token_budget:
                    batch.append(chunk)
                    rows += n
                else:
                    kept.append(chunk)
            self._waiting.chunks = kept
        return batch

    def _expire(self, chunk: _Chunk) -> None:
        if not chunk.future.done():
            self.dropped += 1
            chunk.future.set_exception(
                ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
            )

    def _start(self, batch: list[_Chunk]) -> None:
        self._in_flight += 1
        self.calls += 1
        sent = _Sent(batch, rows=sum(len(chunk.rows) for chunk in batch))
        now = time.time_ns()
        for chunk in batch:
            chunk.sent = sent
            chunk.sent_ns = now
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
