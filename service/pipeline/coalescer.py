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

Priority classes (service/priority.py): each class has its own queue and fair share, and interactive chunks
always go first. Interactive calls have `max_in_flight` to themselves, so bulk calls in flight never hold an
interactive chunk back in the facade. While interactive work is around (waiting, in flight, or seen within
`bulk_window_s`), bulk calls are held to `bulk_in_flight` at once and `bulk_token_budget` padded tokens each:
an execution at Triton cannot be preempted (on CPU), so what bounds an interactive request's wait there is
how much bulk work runs when it arrives (with fewer bulk calls than Triton has instances, an instance stays
free for it). Otherwise bulk has the same limits as interactive work (a backfill alone runs flat out). A call
carries rows of one class and is sent with it, for Triton's priority queue.

Each request awaits only its own rows. A request that goes away (cancelled, or past its deadline, which
the lifecycle turns into a cancellation) takes its rows out if they were not sent yet; a chunk whose
deadline passed while it waited is dropped, never sent; a call whose every request went away is cancelled;
a failed call fails only the requests whose rows it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
from bisect import insort
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import tracing
from service.errors import ErrorKind, ServiceError
from service.priority import Priority

# (width, sequences, seconds left, class) -> [len(sequences), out] rows
Call = Callable[[int, list[Sequence[int]], float, Priority], Awaitable[np.ndarray]]


@dataclass(eq=False)
class _Chunk:
    width: int
    rows: Sequence[Sequence[int]]
    deadline: float
    future: asyncio.Future[np.ndarray]
    owner: Hashable
    priority: Priority = Priority.INTERACTIVE
    start: float = 0.0  # fair-queueing start tag (padded tokens of virtual time)
    seq: int = 0  # arrival order: breaks ties between equal start tags
    sent: _Sent | None = None
    # time.time_ns() when queued and when its call went out: the trace's queue and inference spans
    queued_ns: int = 0
    sent_ns: int = 0
    # Tracing only: the request's context (tracing.snapshot) and its inference span, started when sent.
    trace: contextvars.Context | None = None
    inference: Any = None

    @property
    def key(self) -> tuple[float, int]:
        return (self.start, self.seq)


@dataclass(eq=False)
class _Sent:
    """One backend call and the chunks it carries."""

    chunks: list[_Chunk]
    priority: Priority = Priority.INTERACTIVE
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
    """One class's waiting chunks by (start tag, arrival), and its fair share's virtual time."""

    chunks: list[_Chunk] = field(default_factory=list)
    virtual: float = 0.0  # the start tag of this class's chunk sent last

    def add(self, chunk: _Chunk) -> None:
        insort(self.chunks, chunk, key=lambda c: c.key)

    def remove(self, chunk: _Chunk) -> None:
        with contextlib.suppress(ValueError):
            self.chunks.remove(chunk)

    def __len__(self) -> int:
        return len(self.chunks)


class Coalescer:
    """One per served model. `call` runs one backend call of padded width `width` over `sequences`."""

    def __init__(
        self,
        call: Call,
        *,
        max_in_flight: int,
        token_budget: int,
        max_rows: int,
        bulk_in_flight: int = 1,
        bulk_token_budget: int = 0,
        bulk_window_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call = call
        self.max_in_flight = max_in_flight  # 0: no limit, every chunk goes out alone at once
        self.token_budget = token_budget
        self.max_rows = max_rows
        # Bulk's bounds while interactive work is around (0 budget: the token budget).
        self.bulk_in_flight = max(1, bulk_in_flight)
        self.bulk_token_budget = min(bulk_token_budget or token_budget, token_budget)
        self.bulk_window_s = bulk_window_s
        self._clock = clock
        self._waiting = {p: _Queue() for p in Priority}
        self._owners: dict[Hashable, _Owner] = {}
        self._seq = itertools.count()
        self._in_flight = dict.fromkeys(Priority, 0)  # calls by the class they were sent with
        self._interactive_seen = -float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # backend calls made (tests, benchmarks)
        self.dropped = 0  # chunks whose deadline passed while they waited: never sent

    @property
    def in_flight(self) -> int:
        return sum(self._in_flight.values())

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def interactive_active(self) -> bool:
        """Interactive work waits, is in flight, or was seen within bulk_window_s: bulk is held back."""
        return (
            bool(self._waiting[Priority.INTERACTIVE])
            or self._in_flight[Priority.INTERACTIVE] > 0
            or self._clock() - self._interactive_seen < self.bulk_window_s
        )

    async def run(
        self,
        width: int,
        rows: Sequence[Sequence[int]],
        deadline: float,
        owner: Hashable | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """The backend's rows for `rows` (padded to `width`), in order. `deadline` is time.monotonic().
        `owner` names the request the chunk belongs to (the fair share is between owners; a request's
        chunks should share one, e.g. a fresh object()); None: the chunk is its own owner."""
        if time.monotonic() >= deadline:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        chunk = _Chunk(width, rows, deadline, future, owner if owner is not None else object(), priority)
        chunk.queued_ns = time.time_ns()
        chunk.trace = tracing.snapshot()
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
                    width,
                    len(rows),
                    sent.rows if sent else 0,
                    chunk.queued_ns,
                    chunk.sent_ns,
                    time.time_ns(),
                    error,
                    chunk.inference,
                )

    def _enqueue(self, chunk: _Chunk) -> None:
        queue = self._waiting[chunk.priority]
        if chunk.priority is Priority.INTERACTIVE:
            self._interactive_seen = self._clock()
        state = self._owners.get(chunk.owner)
        if state is None:
            state = self._owners[chunk.owner] = _Owner(finish=queue.virtual)
        chunk.start = max(queue.virtual, state.finish)
        chunk.seq = next(self._seq)
        state.finish = chunk.start + len(chunk.rows) * chunk.width
        state.active += 1
        queue.add(chunk)

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
            self._waiting[chunk.priority].remove(chunk)
            return
        # Sent: the call goes on for the other requests it carries, if any.
        if sent.task is not None and all(c.future.done() for c in sent.chunks):
            sent.task.cancel()

    def _limit(self, priority: Priority) -> int:
        """Calls of `priority` allowed in flight now (0: no limit)."""
        if priority is Priority.BULK and self.interactive_active():
            return self.bulk_in_flight
        return self.max_in_flight

    def _has_room(self, priority: Priority) -> bool:
        limit = self._limit(priority)
        return limit <= 0 or self._in_flight[priority] < limit

    def _pump(self) -> None:
        interactive, bulk = self._waiting[Priority.INTERACTIVE], self._waiting[Priority.BULK]
        while interactive and self._has_room(Priority.INTERACTIVE):
            if batch := self._take(Priority.INTERACTIVE):
                self._start(batch, Priority.INTERACTIVE)
        # Bulk never starts a call while an interactive chunk waits for one.
        while bulk and not interactive and self._has_room(Priority.BULK):
            if batch := self._take(Priority.BULK):
                self._start(batch, Priority.BULK)

    def _take(self, priority: Priority) -> list[_Chunk]:
        """The waiting chunk of `priority` with the smallest start tag and, behind it in tag order, the waiting
        chunks of its class and width that fit with it; chunks past their deadline are dropped on the way.
        A call carries one class: a bulk row in an interactive call would make that call's execution longer."""
        now = time.monotonic()
        queue = self._waiting[priority]
        first = queue.chunks.pop(0)
        if first.deadline <= now:
            self._expire(first)
            return []
        queue.virtual = max(queue.virtual, first.start)
        batch, rows = [first], len(first.rows)
        width = first.width
        budget = self.token_budget
        if priority is Priority.BULK and self.interactive_active():
            budget = self.bulk_token_budget
        if self._limit(priority) <= 0:
            return batch  # no limit: every chunk goes out alone at once
        kept: list[_Chunk] = []
        for chunk in queue.chunks:
            n = len(chunk.rows)
            if chunk.deadline <= now:
                self._expire(chunk)
            elif chunk.width == width and rows + n <= self.max_rows and (rows + n) * width <= budget:
                batch.append(chunk)
                rows += n
            else:
                kept.append(chunk)
        queue.chunks = kept
        return batch

    def _expire(self, chunk: _Chunk) -> None:
        if not chunk.future.done():
            self.dropped += 1
            chunk.future.set_exception(
                ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
            )

    def _start(self, batch: list[_Chunk], priority: Priority) -> None:
        self._in_flight[priority] += 1
        self.calls += 1
        sent = _Sent(batch, priority, rows=sum(len(chunk.rows) for chunk in batch))
        now = time.time_ns()
        for chunk in batch:
            chunk.sent = sent
            chunk.sent_ns = now
        context = None  # traced: the call runs in its first traced chunk's context (tracing.start_calls)
        if tracing.enabled():
            snapshots, counts = [c.trace for c in batch], [len(c.rows) for c in batch]
            spans, context = tracing.start_calls(snapshots, counts, batch[0].width, sent.rows, now)
            for chunk, span in zip(batch, spans, strict=True):
                chunk.inference = span
        task = asyncio.get_running_loop().create_task(self._send(sent), context=context)
        sent.task = task
        self._tasks.add(task)
        # The call's end is counted when the task ends, not in _send: a task cancelled before it first runs
        # (its requests all went away at once) never runs _send's code, and its place in flight must not leak.
        task.add_done_callback(lambda done: self._finished(done, sent))

    def _finished(self, task: asyncio.Task[None], sent: _Sent) -> None:
        self._tasks.discard(task)
        self._in_flight[sent.priority] -= 1
        if sent.priority is Priority.INTERACTIVE:
            self._interactive_seen = self._clock()
        self._pump()

    async def _send(self, sent: _Sent) -> None:
        batch = sent.chunks
        rows: list[Sequence[int]] = [r for chunk in batch for r in chunk.rows]
        timeout = max(chunk.deadline for chunk in batch) - time.monotonic()
        try:
            out = await self._call(batch[0].width, rows, timeout, sent.priority)
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
