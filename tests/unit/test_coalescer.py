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
from service.priority import Priority


class Backend:
    """Rows echo their sequences' first token; each call waits for the test to release it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[list[int]]]] = []
        self.priorities: list[Priority] = []
        self.gates: list[asyncio.Future[None]] = []
        self.cancelled = 0

    async def __call__(
        self, width: int, sequences: list[Sequence[int]], timeout_s: float, priority: Priority
    ) -> np.ndarray:
        self.calls.append((width, [list(s) for s in sequences]))
        self.priorities.append(priority)
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

    async def call(width: int, sequences: list[Sequence[int]], timeout_s: float, priority: Priority) -> np.ndarray:
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


# -- fair share between requests (start-time fair queueing by padded tokens) --


def request(co: Coalescer, tag: int, chunks: int, width: int = 16, n: int = 2, deadline: float = 0.0) -> asyncio.Task:
    """A request of `chunks` chunks of `n` rows each (one owner), as ServedModel.run_model sends it; its rows'
    first tokens are tag * 100 + chunk * 10 + row."""
    owner = object()
    when = deadline or far()

    async def go() -> list[list[float]]:
        parts = [co.run(width, [[tag * 100 + c * 10 + i] * 3 for i in range(n)], when, owner) for c in range(chunks)]
        return [r[:, 0].tolist() for r in await asyncio.gather(*parts)]

    return asyncio.create_task(go())


def owners_in_order(backend: Backend) -> list[int]:
    """The request tag of each call, in call order (tests send one request per call here)."""
    tags = []
    for _, seqs in backend.calls:
        found = {s[0] // 100 for s in seqs}
        assert len(found) == 1, f"a call mixed requests {found}"
        tags.append(found.pop())
    return tags


async def release_all(backend: Backend, until: int) -> None:
    """Releases the oldest unreleased call, one at a time, until `until` calls were made and released."""
    while True:
        await settle()
        open_gates = [g for g in backend.gates if not g.done()]
        if not open_gates:
            break
        open_gates[0].set_result(None)
    assert len(backend.calls) == until, f"{len(backend.calls)} calls were made, {until} expected"


async def test_a_short_request_goes_next_not_behind_a_big_one() -> None:
    """The monopoly case: a big request's chunks all wait; a short request that comes after them goes out
    with the next free call, not after the big request's last chunk."""
    backend = Backend()
    # max_rows 2: chunks of one request never merge, each call is one chunk.
    co = Coalescer(backend, max_in_flight=1, token_budget=32, max_rows=2)
    big = request(co, 1, chunks=8)
    await settle()
    assert len(backend.calls) == 1 and co.waiting == 7
    short = request(co, 2, chunks=1)
    await settle()
    backend.release(0)
    await settle()
    assert owners_in_order(backend) == [1, 2]  # the short one is the next call
    await release_all(backend, 9)
    assert await short == [[200, 201]]
    assert await big == [[100 + c * 10, 101 + c * 10] for c in range(8)]


async def test_big_requests_take_turns_by_padded_tokens() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=64, max_rows=2)
    blocker = request(co, 9, chunks=1)
    await settle()
    a = request(co, 1, chunks=4, width=16)  # 32 padded tokens a chunk
    await settle()
    b = request(co, 2, chunks=4, width=32)  # 64 padded tokens a chunk: twice a's
    await settle()
    await release_all(backend, 9)
    # After the blocker: a's chunks start at 0, 32, 64, 96; b's at 0, 64, 128, 192 (ties: arrival order).
    assert owners_in_order(backend) == [9, 1, 2, 1, 1, 2, 1, 2, 2]
    assert len(await a) == 4 and len(await b) == 4
    await blocker


async def test_a_request_that_arrives_late_does_not_pay_for_others_past() -> None:
    """Virtual time moves with the calls sent: a request arriving after a big one has run a while starts
    level with the big one's next chunk, not at zero (which would starve the big one) nor behind all of it."""
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=32, max_rows=2)
    big = request(co, 1, chunks=6)
    await settle()
    backend.release(0)
    await settle()
    backend.release(1)
    await settle()
    late = [request(co, 2, chunks=2), request(co, 3, chunks=2)]
    await settle()
    await release_all(backend, 10)
    order = owners_in_order(backend)
    assert order[:3] == [1, 1, 1]  # two released, the third was sent when the second returned
    assert order[3:] == [2, 3, 1, 2, 3, 1, 1]
    await asyncio.gather(big, *late)


async def test_cancelling_a_request_drops_all_its_waiting_chunks() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=32, max_rows=2)
    big = request(co, 1, chunks=5)
    await settle()
    short = request(co, 2, chunks=1)
    await settle()
    assert co.waiting == 5
    big.cancel()
    await settle()
    # The sent call had only the big request's rows: cancelled too; its 4 waiting chunks are gone.
    assert co.waiting == 0 and backend.cancelled == 1
    assert owners_in_order(backend) == [1, 2]
    backend.release(1)
    assert await short == [[200, 201]]
    assert len(backend.calls) == 2


async def test_chunks_past_their_deadline_are_dropped_unsent_whatever_their_width() -> None:
    backend = Backend()
    co = Coalescer(backend, max_in_flight=1, token_budget=1024, max_rows=32)
    first = request(co, 1, chunks=1)
    await settle()
    late = request(co, 2, chunks=3, width=32, deadline=time.monotonic() + 0.05)
    stays = request(co, 3, chunks=1, width=16)
    await settle()
    await asyncio.sleep(0.1)
    backend.release(0)
    with pytest.raises(ServiceError) as expired:
        await late
    assert expired.value.kind is ErrorKind.DEADLINE_EXCEEDED
    await settle()
    assert owners_in_order(backend) == [1, 3] and co.waiting == 0 and co.dropped >= 1
    backend.release(1)
    assert await stays == [[300, 301]]
    await first


async def test_every_request_gets_exactly_its_own_rows_under_random_load() -> None:
    """Many requests of random sizes and widths, calls merging chunks across requests, random release
    order: every result row is its own request's (tags), in order; no call mixes widths or passes the
    budget or the batch size."""
    import random

    rng = random.Random(24)
    for _ in range(20):
        backend = Backend()
        budget, max_rows = 128, 6
        co = Coalescer(backend, max_in_flight=rng.randint(1, 3), token_budget=budget, max_rows=max_rows)
        expected: dict[int, list[list[int]]] = {}
        tasks: dict[int, asyncio.Task] = {}
        for tag in range(1, 9):
            width = rng.choice([8, 16, 32])
            chunks, n = rng.randint(1, 4), rng.randint(1, min(max_rows, budget // width))
            expected[tag] = [[tag * 100 + c * 10 + i for i in range(n)] for c in range(chunks)]
            tasks[tag] = request(co, tag, chunks=chunks, width=width, n=n)
            if rng.random() < 0.5:
                await settle()
        while True:
            await settle()
            if all(t.done() for t in tasks.values()):
                break
            open_gates = [g for g in backend.gates if not g.done()]
            assert open_gates, "work waits but no call is in flight"
            rng.choice(open_gates).set_result(None)
        for width, seqs in backend.calls:
            assert all(len(s) == 3 for s in seqs)
            assert len(seqs) <= max_rows and len(seqs) * width <= budget
        for tag, task in tasks.items():
            assert await task == expected[tag]
