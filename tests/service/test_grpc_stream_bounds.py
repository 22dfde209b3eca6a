"""gRPC calls that carry no work hold nothing that working calls or health need: idle EmbedStream calls
beside health and Embed, the idle timeout, the per-connection stream cap, a busy stream. Real facade
process (default limits except a short idle timeout), the session's real Triton. Figures: docs/reliability.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests.helpers import Facade, cosine, embed, health_name, run_facade, vectors

IDLE_S = 15.0  # long enough that the idle streams are surely still open while health and Embed are checked
PER_CONNECTION = 8  # the defaults, stated here so a changed default shows up as a failing test
MAX_STREAMS = 64
# Channels to one target share one connection unless each has its own subchannel pool.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture(scope="module")
def facade(model_repository: Path, triton: Any, logs_dir: Path) -> Iterator[Facade]:
    with run_facade(
        model_repository, triton.grpc_url, logs_dir, env={"QWEN3_EMBED_GRPC_IDLE_TIMEOUT_S": str(IDLE_S)}
    ) as f:
        yield f


async def _embed(channel: grpc.aio.Channel, text: str) -> tuple[str, list[float]]:
    try:
        reply = await pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=[text]), timeout=5)
        return "OK", list(reply.embeddings[0].values)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, []


def test_160_idle_streams_leave_health_and_embed_answering(facade: Facade) -> None:
    """The issue's attack: 160 EmbedStream calls that send nothing (16 connections x 10). Before: the server's
    concurrent-call limit (160 at the default MAX_IN_FLIGHT) was full, and health and Embed failed 40/40."""

    async def scenario() -> dict[str, Any]:
        attackers = [grpc.aio.insecure_channel(facade.target, options=OWN_CONNECTION) for _ in range(16)]
        calls = [pb_grpc.EmbeddingServiceStub(ch).EmbedStream() for ch in attackers for _ in range(10)]
        ends = [asyncio.ensure_future(c.code()) for c in calls]
        await asyncio.sleep(3)  # every refusal is immediate; the accepted streams wait for a message
        refused = [calls[i] for i, e in enumerate(ends) if e.done()]
        open_before = sum(not e.done() for e in ends)
        async with grpc.aio.insecure_channel(facade.target) as ch:
            health = await asyncio.gather(*(health_name(ch) for _ in range(40)))
            embeds = await asyncio.gather(*(_embed(ch, f"beside idle streams {i}") for i in range(40)))
        open_after = sum(not e.done() for e in ends)
        print(
            f"beside 160 idle streams: {open_after} open, health {sorted(set(health))} "
            f"SERVING {health.count('SERVING')}/40, Embed {sorted({c for c, _ in embeds})} "
            f"OK {sum(c == 'OK' for c, _ in embeds)}/40"
        )
        start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*ends), timeout=IDLE_S + 60)
        ended_in = time.monotonic() - start
        codes = [e.result().name for e in ends]
        refusals = [await c.details() for c in refused]
        idle_details = {
            await c.details() for c, e in zip(calls, ends, strict=True) if e.result().name != "RESOURCE_EXHAUSTED"
        }
        for ch in attackers:
            await ch.close()
        return {
            "health": health,
            "embeds": embeds,
            "open_before": open_before,
            "open_after": open_after,
            "codes": codes,
            "refusals": refusals,
            "idle_details": idle_details,
            "ended_in": ended_in,
        }

    out = asyncio.run(scenario())
    health_ok = out["health"].count("SERVING")
    embed_ok = sum(code == "OK" for code, _ in out["embeds"])
    print(
        f"160 idle EmbedStream calls (16 connections x 10): {out['open_before']} open, "
        f"{len(out['refusals'])} refused at once; health SERVING {health_ok}/40, Embed OK {embed_ok}/40; "
        f"the open ones ended {out['ended_in']:.1f} s later: {sorted(set(out['codes']))} {sorted(out['idle_details'])}"
    )
    assert health_ok == 40, out["health"]
    assert embed_ok == 40, [code for code, _ in out["embeds"]]
    # The streams were still open while health and Embed answered: the bound, not a timeout, made room.
    assert out["open_before"] == out["open_after"] == MAX_STREAMS
    assert len(out["refusals"]) == 160 - MAX_STREAMS
    assert all("stream" in d for d in out["refusals"]), out["refusals"][:3]
    assert out["codes"].count("RESOURCE_EXHAUSTED") == 160 - MAX_STREAMS
    assert out["codes"].count("DEADLINE_EXCEEDED") == MAX_STREAMS
    assert all("idle" in d for d in out["idle_details"]), out["idle_details"]
    # The Embed answers beside the attack are the right vectors (each input alone, after the attack).
    with grpc.insecure_channel(facade.target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        for i in (0, 17, 39):
            alone = vectors(embed(stub, [f"beside idle streams {i}"]))[0]
            assert cosine(alone, out["embeds"][i][1]) >= 0.99999


def test_streams_over_the_per_connection_cap_are_refused_at_once(facade: Facade) -> None:
    async def scenario() -> tuple[list[str], list[str], float]:
        async with grpc.aio.insecure_channel(facade.target) as ch:
            stub = pb_grpc.EmbeddingServiceStub(ch)
            calls = [stub.EmbedStream() for _ in range(PER_CONNECTION + 3)]
            ends = [asyncio.ensure_future(c.code()) for c in calls]
            start = time.monotonic()
            done, _ = await asyncio.wait(ends, timeout=3)  # "at once": well inside the idle timeout
            refused_in = time.monotonic() - start
            refused = [ends.index(e) for e in done]
            details = [await calls[i].details() for i in refused]
            codes = [ends[i].result().name for i in refused]
            for c in calls:
                c.cancel()
            return codes, details, refused_in

    codes, details, refused_in = asyncio.run(scenario())
    print(f"{PER_CONNECTION + 3} streams on one connection: refused {codes} within {refused_in:.0f} s: {details[:1]}")
    assert codes == ["RESOURCE_EXHAUSTED"] * 3
    assert all("per connection" in d for d in details), details


def test_idle_stream_ends_after_the_idle_timeout(facade: Facade) -> None:
    """A stream that sent one message, got its answer and then sends nothing ends with DEADLINE_EXCEEDED."""

    async def scenario() -> tuple[list[pb.EmbedResponse], grpc.StatusCode, str, float]:
        async with grpc.aio.insecure_channel(facade.target) as ch:
            call = pb_grpc.EmbeddingServiceStub(ch).EmbedStream()
            await call.write(pb.EmbedRequest(inputs=["one message, then silence"], request_id="only"))
            first = await call.read()
            answered = time.monotonic()
            replies = [first]
            try:
                while (reply := await call.read()) is not grpc.aio.EOF:
                    replies.append(reply)
            except grpc.aio.AioRpcError:
                pass  # the status, read below
            return replies, await call.code(), await call.details(), time.monotonic() - answered

    replies, code, details, idle_for = asyncio.run(scenario())
    print(f"idle stream after one answer: {code.name} after {idle_for:.1f} s ({details!r})")
    assert [r.request_id for r in replies] == ["only"] and not replies[0].HasField("error")
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in details
    assert IDLE_S - 1 <= idle_for <= IDLE_S + 30


def test_unary_call_without_its_message_ends_after_the_idle_timeout(facade: Facade) -> None:
    """A unary call whose message never comes (headers only) is counted and ended like an idle stream."""

    async def scenario() -> tuple[grpc.StatusCode, str, float]:
        async with grpc.aio.insecure_channel(facade.target) as ch:
            call = ch.stream_unary("/embedding.v1.EmbeddingService/Embed")()
            start = time.monotonic()
            return await call.code(), await call.details(), time.monotonic() - start

    code, details, waited = asyncio.run(scenario())
    print(f"unary Embed without a message: {code.name} after {waited:.1f} s ({details!r})")
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in details
    assert IDLE_S - 1 <= waited <= IDLE_S + 30


def test_busy_stream_with_pauses_gets_the_right_vectors(facade: Facade) -> None:
    """A stream that keeps sending (pauses shorter than the idle timeout) is never cut, and each answer is
    the vector unary Embed gives for the same input (unary vectors are checked against the reference in
    test_grpc_api.py)."""
    texts = [f"busy stream message {i}" for i in range(30)]

    async def scenario() -> list[pb.EmbedResponse]:
        async with grpc.aio.insecure_channel(facade.target) as ch:
            call = pb_grpc.EmbeddingServiceStub(ch).EmbedStream(timeout=IDLE_S * 4)
            replies = []
            for i, text in enumerate(texts):
                await call.write(pb.EmbedRequest(inputs=[text], request_id=str(i)))
                if i % 10 == 9:
                    await asyncio.sleep(IDLE_S * 0.6)  # a pause, shorter than the idle timeout
                replies.append(await call.read())
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            assert await call.code() is grpc.StatusCode.OK
            return replies

    replies = asyncio.run(scenario())
    assert sorted(int(r.request_id) for r in replies) == list(range(30))
    with grpc.insecure_channel(facade.target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        unary = vectors(embed(stub, texts))
    for reply in replies:
        assert not reply.HasField("error")
        assert cosine(vectors(reply)[0], unary[int(reply.request_id)]) >= 0.99999
