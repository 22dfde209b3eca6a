"""CallLimiter on a real grpc.aio server over loopback, with a toy service and the real health servicer:
pools per kind, the per-connection cap, the idle timeout, and no place leaked whatever way a call ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.api.grpc.limits import CallKind, CallLimiter, CallLimits
from tests.helpers import health_name

SERVICE = "toy.Svc"
# Channels to one target share one connection unless each has its own subchannel pool.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
LIMITS = CallLimits(unary=2, streams=3, per_connection=2, probes=4, idle_s=1.0)


async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b"echo:" + request


async def echo_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    async for request in requests:
        yield b"echo:" + request


async def start(limits: CallLimits = LIMITS) -> tuple[grpc.aio.Server, CallLimiter, str]:
    limiter = CallLimiter(limits, SERVICE)
    server = grpc.aio.server(interceptors=[limiter])
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "EchoStream": grpc.stream_stream_rpc_method_handler(echo_stream),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, limiter, f"127.0.0.1:{port}"


async def holding(limiter: CallLimiter, kind: CallKind, count: int) -> None:
    """Until `count` calls of `kind` hold places (calls started together reach the server in any order)."""
    for _ in range(200):
        if limiter.counts.held[kind] == count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{limiter.counts.held[kind]} {kind} places held, not {count}")


async def settle(limiter: CallLimiter) -> None:
    for _ in range(100):
        if not any(limiter.counts.held.values()) and not limiter.counts.per_connection:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"places leaked: {limiter.counts.held} {limiter.counts.per_connection}")


def test_idle_streams_fill_their_pool_only_and_end_after_the_idle_timeout() -> None:
    async def scenario() -> None:
        server, limiter, target = await start()
        channels = [grpc.aio.insecure_channel(target, options=OWN_CONNECTION) for _ in range(3)]
        try:
            calls = [ch.stream_stream(f"/{SERVICE}/EchoStream")() for ch in channels for _ in range(2)]
            ends = [asyncio.ensure_future(c.code()) for c in calls]
            await asyncio.sleep(0.5)
            refused = [e.result() for e in ends if e.done()]
            assert refused == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3  # 6 asked, 3 streams at most
            assert limiter.counts.held[CallKind.STREAM] == 3
            # Health and unary calls have pools of their own.
            assert await health_name(channels[0], timeout=3) == "SERVING"
            assert await channels[0].unary_unary(f"/{SERVICE}/Echo")(b"x", timeout=3) == b"echo:x"
            codes = await asyncio.wait_for(asyncio.gather(*ends), timeout=10)
            assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 3
            idle = [await c.details() for c in calls if await c.code() is grpc.StatusCode.DEADLINE_EXCEEDED]
            assert all("idle" in d for d in idle), idle
            await settle(limiter)
        finally:
            for ch in channels:
                await ch.close()
            await server.stop(None)

    asyncio.run(scenario())


def test_per_connection_cap_and_a_busy_stream() -> None:
    async def scenario() -> None:
        # A wider idle timeout than the other tests': the busy stream's pauses must stay clearly below it on
        # a loaded machine.
        server, limiter, target = await start(CallLimits(unary=2, streams=3, per_connection=2, probes=4, idle_s=3.0))
        try:
            async with grpc.aio.insecure_channel(target) as ch:
                busy = ch.stream_stream(f"/{SERVICE}/EchoStream")()
                idle = ch.stream_stream(f"/{SERVICE}/EchoStream")()
                await holding(limiter, CallKind.STREAM, 2)
                over = ch.stream_stream(f"/{SERVICE}/EchoStream")()
                assert await asyncio.wait_for(over.code(), 3) is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "per connection" in await over.details()
                # Messages closer together than the idle timeout keep a stream open past it.
                for i in range(6):
                    await busy.write(str(i).encode())
                    assert await busy.read() == f"echo:{i}".encode()
                    await asyncio.sleep(1.2)
                await busy.done_writing()
                assert await busy.code() is grpc.StatusCode.OK
                assert await idle.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            await settle(limiter)
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def test_unary_calls_are_counted_before_their_message_and_health_watch_works() -> None:
    async def scenario() -> None:
        server, limiter, target = await start()
        try:
            async with grpc.aio.insecure_channel(target) as ch:
                # Headers only, no message: each holds a unary place until the idle timeout.
                waiting = [ch.stream_unary(f"/{SERVICE}/Echo")() for _ in range(3)]
                ends = [asyncio.ensure_future(c.code()) for c in waiting]
                await asyncio.sleep(0.5)
                assert [e.result() for e in ends if e.done()] == [grpc.StatusCode.RESOURCE_EXHAUSTED]
                assert await health_name(ch, timeout=3) == "SERVING"
                watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=5)
                first = await watch.read()
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
                codes = await asyncio.wait_for(asyncio.gather(*ends), timeout=10)
                assert sorted(c.name for c in codes) == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"]
                # A unary call that ends without its message is refused clearly.
                empty = ch.stream_unary(f"/{SERVICE}/Echo")()
                await empty.done_writing()
                assert await empty.code() is grpc.StatusCode.INVALID_ARGUMENT
            await settle(limiter)
        finally:
            await server.stop(None)

    asyncio.run(scenario())
