"""Priority classes (service/priority.py): how a request's class is chosen, and that admission and the
coalescer put interactive work first and bound the bulk work that can stand in its way."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from service import keys_file, priority
from service.admission import Admission
from service.api.auth import KeyChecker
from service.api.grpc.servicer import TOKENIZE_PRIORITY_FIELD, GrpcApi, asked_priority
from service.api.grpc.wire import last_varint
from service.errors import ErrorKind, ServiceError
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.metrics import Metrics
from service.pipeline.coalescer import Coalescer
from service.priority import Priority
from service.settings import ApiKeys, Settings
from tests.unit.test_coalescer import Backend, far, rows, settle

BULK, INTERACTIVE = Priority.BULK, Priority.INTERACTIVE


# -- choosing the class --


def test_a_pin_wins_then_the_request_then_interactive() -> None:
    assert priority.resolve(None, None) is INTERACTIVE
    assert priority.resolve(BULK, None) is BULK
    assert priority.resolve(INTERACTIVE, BULK) is BULK  # a bulk-pinned key cannot ask for interactive
    assert priority.resolve(BULK, INTERACTIVE) is INTERACTIVE
    assert priority.resolve(BULK, BULK, enabled=False) is INTERACTIVE  # classes off: one class


def test_vllm_priorities_map_lower_to_interactive() -> None:
    assert priority.from_vllm(0) is INTERACTIVE  # vLLM's default
    assert priority.from_vllm(-5) is INTERACTIVE
    assert priority.from_vllm(1) is BULK
    assert priority.from_vllm(2**63 - 1) is BULK
    for bad in (2**63, -(2**63) - 1):
        with pytest.raises(ServiceError) as err:
            priority.from_vllm(bad)
        assert err.value.kind is ErrorKind.INVALID_ARGUMENT and err.value.param == "priority"


def test_class_names_are_case_insensitive_and_unknown_ones_refused() -> None:
    assert priority.parse_name(" Bulk ") is BULK
    assert priority.parse_name("INTERACTIVE") is INTERACTIVE
    with pytest.raises(ServiceError) as err:
        priority.parse_name("urgent" * 20)
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and "interactive" in err.value.message
    assert len(err.value.message) < 200  # the client's value is cut


def test_the_context_variable_is_scoped() -> None:
    assert priority.current() is INTERACTIVE
    with priority.applied(BULK):
        assert priority.current() is BULK
    assert priority.current() is INTERACTIVE


def test_the_priority_field_is_read_on_the_wire() -> None:
    raw = pb.EmbedRequest(inputs=["a", "b"], model="m", priority=pb.PRIORITY_BULK).SerializeToString()
    assert last_varint(raw, 10, 100) == pb.PRIORITY_BULK
    assert last_varint(pb.EmbedRequest(inputs=["x"]).SerializeToString(), 10, 100) is None
    raw = pb.RerankRequest(query="q", documents=["d"], priority=pb.PRIORITY_INTERACTIVE).SerializeToString()
    assert last_varint(raw, 10, 100) == pb.PRIORITY_INTERACTIVE
    # The last occurrence wins, as in the parser.
    twice = raw + pb.RerankRequest(priority=pb.PRIORITY_BULK).SerializeToString()
    assert last_varint(twice, 10, 100) == pb.RerankRequest.FromString(twice).priority == pb.PRIORITY_BULK
    assert last_varint(b"\x0a\xff", 10, 100) is None  # malformed: the parser reports it
    # Past max_fields the walk stops: a million tiny inputs cost max_fields steps, not a million.
    flood = pb.EmbedRequest(inputs=["x"] * 1_000_000, priority=pb.PRIORITY_BULK).SerializeToString()
    started = time.perf_counter()
    assert last_varint(flood, 10, 100) is None
    assert time.perf_counter() - started < 0.5  # wide: the whole walk would take seconds


def test_tokenize_reads_its_own_field_number() -> None:
    """TokenizeRequest's priority is field 7 (its next free number); the same walk reads it, and a bad
    number is refused naming the values that exist."""
    assert pb.TokenizeRequest.DESCRIPTOR.fields_by_name["priority"].number == TOKENIZE_PRIORITY_FIELD == 7
    raw = pb.TokenizeRequest(inputs=["a"], model="m", priority=pb.PRIORITY_BULK).SerializeToString()
    assert asked_priority(raw, {}, 100, TOKENIZE_PRIORITY_FIELD) is BULK
    # Unset: the metadata decides; nothing at all: no ask (the caller resolves to interactive).
    bare = pb.TokenizeRequest(inputs=["a"]).SerializeToString()
    assert asked_priority(bare, {"x-priority": "Bulk"}, 100, TOKENIZE_PRIORITY_FIELD) is BULK
    assert asked_priority(bare, {}, 100, TOKENIZE_PRIORITY_FIELD) is None
    # The field wins over the metadata, as for Embed.
    ask = pb.TokenizeRequest(inputs=["a"], priority=pb.PRIORITY_INTERACTIVE).SerializeToString()
    assert asked_priority(ask, {"x-priority": "bulk"}, 100, TOKENIZE_PRIORITY_FIELD) is INTERACTIVE
    bad = pb.TokenizeRequest(inputs=["a"], priority=9).SerializeToString()  # type: ignore[arg-type]
    with pytest.raises(ServiceError) as err:
        asked_priority(bad, {}, 100, TOKENIZE_PRIORITY_FIELD)
    assert err.value.param == "priority"
    assert "PRIORITY_INTERACTIVE (1)" in err.value.message and "PRIORITY_BULK (2)" in err.value.message


def test_keys_file_pins_a_key_to_bulk() -> None:
    parsed = keys_file.parse("sk-a\nsk-b priority=bulk\n  sk-c   priority=interactive\n", "keys")
    assert parsed.keys == ["sk-a", "sk-b", "sk-c"] and not parsed.problems
    assert parsed.pins == {"sk-b": "bulk", "sk-c": "interactive"}
    # Anything else after a key is still never a key.
    for line in ("sk-d sk-e", "sk-d priority=urgent", "sk-d note=x", "sk-d priority=bulk extra"):
        bad = keys_file.parse(line + "\n", "keys")
        assert bad.keys == [] and bad.problems, line


def test_the_key_checker_names_a_pin_and_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-search\nsk-backfill priority=bulk\n")
    now = [0.0]
    checker = KeyChecker(ApiKeys([], path, 1.0), (), clock=lambda: now[0])
    assert checker.check("Bearer sk-backfill") and checker.pinned("Bearer sk-backfill") is BULK
    assert checker.check("Bearer sk-search") and checker.pinned("Bearer sk-search") is None
    assert checker.pinned(None) is None and checker.pinned("Basic sk-backfill") is None
    # Unpinned by rewriting the file (a new inode, as `mv` gives).
    new = tmp_path / "keys.new"
    new.write_text("sk-search\nsk-backfill\n")
    new.replace(path)
    now[0] = 5.0
    assert checker.check("Bearer sk-backfill") and checker.pinned("Bearer sk-backfill") is None


# -- admission --


async def test_bulk_waits_for_its_share_and_interactive_keeps_the_reserve() -> None:
    admission = Admission(4, Metrics())  # bulk may hold 3 slots, the 4th stays interactive
    release = asyncio.Event()
    admitted = 0

    async def bulk() -> None:
        nonlocal admitted
        async with admission.slot(BULK):
            admitted += 1
            await release.wait()

    tasks = [asyncio.create_task(bulk()) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert admitted == 3 and admission.bulk_in_use == 3  # the other two wait: not refused
    async with admission.slot(INTERACTIVE):  # the reserve
        with pytest.raises(ServiceError) as err:
            async with admission.slot(INTERACTIVE):
                pass
        assert err.value.kind is ErrorKind.RESOURCE_EXHAUSTED
    release.set()
    await asyncio.gather(*tasks)
    assert admitted == 5 and admission.in_use == admission.bulk_in_use == 0
    text = admission.metrics.render().decode()
    assert 'qwen3_embed_priority_requests_total{priority="bulk"} 5.0' in text
    assert 'qwen3_embed_priority_requests_total{priority="interactive"} 1.0' in text
    assert 'qwen3_embed_admission_wait_seconds_count{priority="bulk"} 5.0' in text


async def test_a_bulk_wait_is_cancellable() -> None:
    admission = Admission(2, Metrics())  # bulk share: 1
    release = asyncio.Event()

    async def hold() -> None:
        async with admission.slot(BULK):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            async with admission.slot(BULK):
                pass
    release.set()
    await holder
    assert admission.in_use == 0


# -- the coalescer --


def coalescer(backend: Backend, clock: list[float] | None = None, **kwargs: int | float) -> Coalescer:
    times = clock if clock is not None else [0.0]
    options: dict[str, int | float] = {"max_in_flight": 1, "token_budget": 1024, "max_rows": 32}
    options.update(kwargs)
    return Coalescer(backend, clock=lambda: times[0], **options)  # type: ignore[arg-type]


async def test_interactive_calls_never_wait_for_bulk_calls_in_flight() -> None:
    backend = Backend()
    co = coalescer(backend)
    bulk = asyncio.create_task(co.run(16, rows(1, 2), far(), priority=BULK))
    await settle()
    assert len(backend.calls) == 1 and backend.priorities == [BULK]
    # max_in_flight is 1 and a bulk call holds it: the interactive chunk still goes out at once.
    query = asyncio.create_task(co.run(16, rows(2, 1), far(), priority=INTERACTIVE))
    await settle()
    assert len(backend.calls) == 2 and backend.priorities == [BULK, INTERACTIVE]
    backend.release(1)
    assert (await query)[:, 0].tolist() == [200]
    backend.release(0)
    assert (await bulk)[:, 0].tolist() == [100, 101]


async def test_waiting_interactive_chunks_go_first_and_alone() -> None:
    backend = Backend()
    co = coalescer(backend, max_in_flight=1, bulk_in_flight=1)
    first = asyncio.create_task(co.run(16, rows(1, 1), far(), priority=INTERACTIVE))
    bulk1 = asyncio.create_task(co.run(16, rows(2, 1), far(), owner=2, priority=BULK))
    await settle()
    assert backend.priorities == [INTERACTIVE, BULK]  # each class on its own limit
    bulk2 = asyncio.create_task(co.run(16, rows(3, 1), far(), owner=3, priority=BULK))
    await settle()
    late = asyncio.create_task(co.run(16, rows(4, 1), far(), owner=4, priority=INTERACTIVE))
    await settle()
    assert co.waiting == 2
    # The bulk call returns, but an interactive chunk waits: no bulk call starts before it has gone.
    backend.release(1)
    await bulk1
    await settle()
    assert len(backend.calls) == 2
    backend.release(0)
    await first
    await settle()
    # The interactive chunk goes out alone (a call carries one class), then the bulk one.
    assert backend.priorities == [INTERACTIVE, BULK, INTERACTIVE, BULK]
    assert backend.calls[2][1] == rows(4, 1) and backend.calls[3][1] == rows(3, 1)
    backend.release(2)
    backend.release(3)
    assert (await late)[:, 0].tolist() == [400] and (await bulk2)[:, 0].tolist() == [300]


async def test_bulk_is_held_to_its_bounds_while_interactive_work_is_around() -> None:
    backend = Backend()
    clock = [0.0]
    co = coalescer(backend, clock, max_in_flight=3, bulk_in_flight=1, bulk_token_budget=64, bulk_window_s=2.0)
    query = asyncio.create_task(co.run(16, rows(9, 1), far(), priority=INTERACTIVE))
    await settle()
    backend.release(0)
    await query
    # Interactive was seen just now: one bulk call at a time, of at most 64 padded tokens (4 rows of 16).
    tasks = [asyncio.create_task(co.run(16, rows(i, 3), far(), owner=i, priority=BULK)) for i in range(1, 5)]
    await settle()
    assert len(backend.calls) == 2 and len(backend.calls[1][1]) == 3
    backend.release(1)
    await settle()
    assert len(backend.calls) == 3 and len(backend.calls[2][1]) * 16 <= 64
    # No interactive work for longer than the window: bulk gets the full limits again.
    clock[0] = 10.0
    backend.release(2)
    await settle()
    assert len(backend.calls) == 4 and len(backend.calls[3][1]) == 6  # the last two chunks in one call
    backend.release(3)
    results = await asyncio.gather(*tasks)
    assert [r[:, 0].tolist() for r in results] == [[100 * i, 100 * i + 1, 100 * i + 2] for i in range(1, 5)]
    assert set(backend.priorities) == {INTERACTIVE, BULK} and backend.priorities.count(INTERACTIVE) == 1


async def test_alone_bulk_runs_as_wide_as_interactive_would() -> None:
    backend = Backend()
    co = coalescer(backend, max_in_flight=2, bulk_in_flight=1, bulk_window_s=2.0)
    tasks = [asyncio.create_task(co.run(16, rows(i, 1), far(), owner=i, priority=BULK)) for i in range(1, 4)]
    await settle()
    assert len(backend.calls) == 2  # max_in_flight, not bulk_in_flight
    for i in range(3):
        await settle()
        if i < len(backend.gates) and not backend.gates[i].done():
            backend.release(i)
    await asyncio.gather(*tasks)


async def test_a_call_cancelled_before_it_runs_frees_its_place() -> None:
    """Every request of a call went away in the loop turn the call was started in: its task is cancelled
    before it first runs. Its place in flight must come back, or the class would stall at its limit."""
    backend = Backend()
    co = coalescer(backend, max_in_flight=1)
    for cls in (INTERACTIVE, BULK):
        request = asyncio.create_task(co.run(16, rows(1, 1), far(), priority=cls))
        await asyncio.sleep(0)  # the request ran up to its wait; its call's task has not started
        (call,) = co._tasks
        request.cancel()
        call.cancel()  # what _abandon does once every request of the call has gone
        await settle()
        assert co.in_flight == 0 and backend.calls == []
    after = asyncio.create_task(co.run(16, rows(2, 1), far(), priority=BULK))
    await settle()
    backend.release(0)
    assert (await after)[:, 0].tolist() == [200]


class FakeContext:
    """The parts of a grpc.aio.ServicerContext the servicer uses; abort raises as gRPC's does."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.aborted: tuple[Any, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.trailing

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise RuntimeError("aborted")


def test_a_refused_tokenize_call_answers_its_id_class_and_retry_hint() -> None:
    """A call refused by admission (RESOURCE_EXHAUSTED) still says, in its trailing metadata, its request id,
    the class it was refused as (known by then), and the retry hint; the class is the one the call asked for
    in its field, which the lifecycle saw as priority.current()."""
    seen: list[Priority] = []

    async def refuse(parse: Any, deadline: float) -> Any:
        seen.append(priority.current())
        raise ServiceError(ErrorKind.RESOURCE_EXHAUSTED, "server overloaded")

    state = SimpleNamespace(settings=Settings(), metrics=Metrics())
    lifecycle = SimpleNamespace(state=state, deadline=lambda timeout: time.monotonic() + 10, tokenize=refuse)
    api = GrpcApi(lifecycle, stream_window=4)  # type: ignore[arg-type]
    context = FakeContext((("x-request-id", "tok-1"),))
    raw = pb.TokenizeRequest(inputs=["a"], priority=pb.PRIORITY_BULK).SerializeToString()
    with pytest.raises(RuntimeError, match="aborted"):
        asyncio.run(api.Tokenize(raw, context))  # type: ignore[arg-type]
    assert seen == [BULK]
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(context.trailing) == {"x-request-id": "tok-1", "x-priority": "bulk", "retry-after-ms": "200"}
