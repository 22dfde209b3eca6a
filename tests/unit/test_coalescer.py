"""The coalescer: requests' chunks gathered into fewer backend calls while the model's calls in flight are
at their limit, each request getting only its own rows, in order; failures, cancellations and deadlines
touch only the requests they belong to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest

from service.errors import ErrorKind, ServiceError
from service.pipeline.coalescer import Coalescer


class Backend:
    """Rows echo their sequences' first token; each call waits for the test to release it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[list[int]]]] = []
        self.gates: list[asyncio.Future[None]] = []
        self.cancelled = 0

    async def __call__(self, width: int, sequences: list[Sequence[int]], timeout_s: float) -> np.ndarray:
        self.calls.append((width, [list(s) for s in sequences]))
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        try:
            await gate
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return np.array([[s[0], len(s)] for s in sequences], dtype=np.float32)

    def release(self, index: int, error: BaseException | None = None) -> None:
        if error is None:
            self.gates[index].set_result(None)
        else:
            self.gates[index].set_exception(error)


def rows(tag: int, n: int, length: int = 3) -> list[list[int]]:
    return [[tag * 100 + i] * length for i in range(n)]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def far() -> float:
    return time.monotonic() + 60


async def test_below_the_limit_every_chunk_goes_out_at_once() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=2, token_budget=1024, max_rows=32)
    a = asyncio.create_task(co.run(16, rows(1, 2), far()))
    b = asyncio.create_task(co.run(16, rows(2, 1), far()))
    await settle()
    assert len(backend.calls) == 2 and co.in_flight == 2
    backend.release(0)
    backend.release(1)
    assert (await a)[:, 0].tolist() == [100, 101]
    assert (await b)[:, 0].tolist() == [200]


async def test_at_the_limit_waiting_chunks_of_a_width_share_the_next_call_in_order() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=1024, max_rows=32)
    first = asyncio.create_task(co.run(16, rows(1, 1), far()))
    await settle()
    waiting = [
        asyncio.create_task(co.run(16, rows(2, 2), far())),
        asyncio.create_task(co.run(32, rows(3, 1), far())),
        asyncio.create_task(co.run(16, rows(4, 3), far())),
    ]
    await settle()
    assert len(backend.calls) == 1 and co.waiting == 3
    backend.release(0)
    await settle()
    # The oldest waiting chunk's width (16) goes next, with the other chunk of width 16; 32 waits.
    assert backend.calls[1] == (16, rows(2, 2) + rows(4, 3))
    backend.release(1)
    await settle()
    assert backend.calls[2] == (32, rows(3, 1))
    backend.release(2)
    assert (await first)[:, 0].tolist() == [100]
    got = [(await t)[:, 0].tolist() for t in waiting]
    assert got == [[200, 201], [300], [400, 401, 402]]
    assert co.calls == 3


async def test_a_call_holds_at_most_the_budget_and_the_batch_size() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=16 * 4, max_rows=3)
    blocker = asyncio.create_task(co.run(16, rows(9, 1), far()))
    await settle()
    tasks = [asyncio.create_task(co.run(16, rows(i, 2), far())) for i in range(1, 4)]
    await settle()
    backend.release(0)
    await settle()
    assert [len(seqs) for _, seqs in backend.calls[1:]] == [2]  # 2 + 2 rows > max_rows 3
    for i in range(1, 4):
        backend.release(i)
        await settle()
    await blocker
    assert [(await t)[:, 0].tolist() for t in tasks] == [[100, 101], [200, 201], [300, 301]]


async def test_a_failed_call_fails_only_its_own_requests() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=1024, max_rows=32)
    first = asyncio.create_task(co.run(16, rows(1, 1), far()))
    await settle()
    second = asyncio.create_task(co.run(16, rows(2, 1), far()))
    third = asyncio.create_task(co.run(16, rows(3, 1), far()))
    await settle()
    backend.release(0, ServiceError(ErrorKind.UNAVAILABLE, "down"))
    with pytest.raises(ServiceError) as failed:
        await first
    assert failed.value.kind is ErrorKind.UNAVAILABLE
    await settle()
    backend.release(1)
    assert (await second)[:, 0].tolist() == [200]
    assert (await third)[:, 0].tolist() == [300]


async def test_a_failure_shared_by_two_requests_reaches_both() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=1024, max_rows=32)
    first = asyncio.create_task(co.run(16, rows(1, 1), far()))
    await settle()
    shared = [asyncio.create_task(co.run(16, rows(i, 1), far())) for i in (2, 3)]
    await settle()
    backend.release(0)
    await first
    await settle()
    backend.release(1, ServiceError(ErrorKind.INTERNAL, "bad response"))
    for task in shared:
        with pytest.raises(ServiceError, match="bad response"):
            await task


async def test_a_cancelled_request_takes_its_unsent_rows_out() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=1024, max_rows=32)
    first = asyncio.create_task(co.run(16, rows(1, 1), far()))
    await settle()
    gone = asyncio.create_task(co.run(16, rows(2, 1), far()))
    stays = asyncio.create_task(co.run(16, rows(3, 1), far()))
    await settle()
    gone.cancel()
    await settle()
    assert co.waiting == 1
    backend.release(0)
    await first
    await settle()
    assert backend.calls[1] == (16, rows(3, 1))
    backend.release(1)
    assert (await stays)[:, 0].tolist() == [300]


async def test_a_sent_call_is_cancelled_only_when_all_its_requests_went_away() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=1024, max_rows=32)
    first = asyncio.create_task(co.run(16, rows(1, 1), far()))
    await settle()
    pair = [asyncio.create_task(co.run(16, rows(i, 1), far())) for i in (2, 3)]
    await settle()
    backend.release(0)
    await first
    await settle()
    assert len(backend.calls) == 2
    pair[0].cancel()
    await settle()
    assert backend.cancelled == 0  # the other request still wants it
    pair[1].cancel()
    await settle()
    assert backend.cancelled == 1 and co.in_flight == 0


async def test_a_lone_cancelled_request_cancels_its_call() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=4, token_budget=1024, max_rows=32)
    task = asyncio.create_task(co.run(16, rows(1, 1), far()))
    await settle()
    task.cancel()
    await settle()
    assert backend.cancelled == 1 and co.in_flight == 0


async def test_the_deadline_is_checked_before_sending() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=1024, max_rows=32)
    with pytest.raises(ServiceError) as past:
        await co.run(16, rows(1, 1), time.monotonic() - 1)
    assert past.value.kind is ErrorKind.DEADLINE_EXCEEDED
    first = asyncio.create_task(co.run(16, rows(1, 1), far()))
    await settle()
    late = asyncio.create_task(co.run(16, rows(2, 1), time.monotonic() + 0.05))
    await settle()
    await asyncio.sleep(0.1)
    backend.release(0)
    await first
    with pytest.raises(ServiceError) as expired:
        await late
    assert expired.value.kind is ErrorKind.DEADLINE_EXCEEDED
    assert len(backend.calls) == 1  # its rows were never sent


async def test_the_call_gets_the_latest_deadline_of_its_requests() -> None:
    seen: list[float] = []

    async def call(width: int, sequences: list[Sequence[int]], timeout_s: float) -> np.ndarray:
        seen.append(timeout_s)
        await asyncio.sleep(0.01)
        return np.zeros((len(sequences), 2), dtype=np.float32)

    co = Coalescer(call, max_in_flight=1, token_budget=1024, max_rows=32)
    now = time.monotonic()
    first = asyncio.create_task(co.run(16, rows(1, 1), now + 5))
    await settle()
    others = [asyncio.create_task(co.run(16, rows(i, 1), now + d)) for i, d in ((2, 10), (3, 20))]
    await asyncio.gather(first, *others)
    assert seen[0] <= 5 and 10 < seen[1] <= 20


async def test_no_limit_means_one_call_per_chunk() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=0, token_budget=1024, max_rows=32)
    tasks = [asyncio.create_task(co.run(16, rows(i, 1), far())) for i in range(5)]
    await settle()
    assert len(backend.calls) == 5
    for i in range(5):
        backend.release(i)
    assert [(await t)[:, 0].tolist() for t in tasks] == [[i * 100] for i in range(5)]
