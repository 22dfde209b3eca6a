"""gRPC call admission by kind, counted from each call's start, so calls that carry no work cannot take
what working calls and health checks need.

grpc's own `maximum_concurrent_rpcs` counts every call in one pool: 160 streams that never send a message
filled it, and health checks failed with everything else. Here each kind has a pool of its own:
- unary calls of the API (Embed, Tokenize, Rerank, GetInfo), from their start, while their message is still
  arriving, so the memory of messages being received stays bounded;
- API streams (EmbedStream);
- everything else (health, reflection): probes answer whatever the API calls hold;
and long-lived calls (streams of any service) are capped per client connection. Over a bound a call gets
RESOURCE_EXHAUSTED at once. A call whose request message does not come within the idle timeout ends with
DEADLINE_EXCEEDED; request streams are timed the same way between messages, except the methods that time
themselves (EmbedStream: a stream waiting for its own work is not idle, service/api/grpc/servicer.py).

Unary handlers are served as client-streaming ones (the wire is the same: one message, then half-close), so
the call is admitted, or refused, before its message is read.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc


class CallKind(enum.Enum):
    UNARY = "unary calls"
    STREAM = "streams"
    PROBE = "health and reflection calls"


@dataclass(frozen=True)
class CallLimits:
    unary: int
    streams: int
    per_connection: int
    probes: int
    idle_s: float

    def cap(self, kind: CallKind) -> int:
        return {CallKind.UNARY: self.unary, CallKind.STREAM: self.streams, CallKind.PROBE: self.probes}[kind]


class Refused(Exception):
    """A call over one of the bounds; the message says which."""


class CallCounts:
    """Calls held per kind and long-lived calls per connection (the peer address: one per connection)."""

    def __init__(self, limits: CallLimits) -> None:
        self.limits = limits
        self.held = dict.fromkeys(CallKind, 0)
        self.per_connection: dict[str, int] = {}

    def take(self, kind: CallKind, peer: str, long_lived: bool) -> None:
        """Holds one place of `kind` (and of the peer's connection for a long-lived call), or raises Refused."""
        limits = self.limits
        if long_lived and self.per_connection.get(peer, 0) >= limits.per_connection:
            raise Refused(
                f"more than {limits.per_connection} open streams per connection; close one or open another "
                "connection (grpc_max_streams_per_connection)"
            )
        if self.held[kind] >= limits.cap(kind):
            raise Refused(f"server busy: {limits.cap(kind)} {kind.value} open; retry after a short backoff")
        self.held[kind] += 1
        if long_lived:
            self.per_connection[peer] = self.per_connection.get(peer, 0) + 1

    def release(self, kind: CallKind, peer: str, long_lived: bool) -> None:
        self.held[kind] -= 1
        if long_lived:
            left = self.per_connection[peer] - 1
            if left:
                self.per_connection[peer] = left
            else:
                del self.per_connection[peer]  # the map holds only connections with open streams


def idle_message(idle_s: float, what: str) -> str:
    return f"{what} for {idle_s:g} s: closed (idle timeout, grpc_idle_timeout_s)"


class CallLimiter(grpc.aio.ServerInterceptor):
    """Wraps every handler: admission per kind (CallCounts) at the call's start, and the idle timeout.
    `service` is the API's full service name; `self_timed` the API methods that time their idleness."""

    def __init__(
        self,
        limits: CallLimits,
        service: str,
        self_timed: Collection[str] = (),
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.counts = CallCounts(limits)
        self.idle_s = limits.idle_s
        self.prefix = f"/{service}/"
        self.self_timed = {self.prefix + name for name in self_timed}
        self.on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method or ""
        streaming = handler.request_streaming or handler.response_streaming
        if not method.startswith(self.prefix):
            kind = CallKind.PROBE
        else:
            kind = CallKind.STREAM if streaming else CallKind.UNARY
        return self._wrap(handler, method, kind, long_lived=streaming)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str, kind: CallKind, long_lived: bool) -> Any:
        limiter = self
        timed_here = method not in self.self_timed

        async def first(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                return await asyncio.wait_for(anext(requests), limiter.idle_s)
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, idle_message(limiter.idle_s, "no request message")
                )
            except StopAsyncIteration:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message")

        async def paced(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            while True:
                try:
                    message = await asyncio.wait_for(anext(requests), limiter.idle_s)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, idle_message(limiter.idle_s, "no message"))
                yield message

        @contextmanager
        def admitted(context: grpc.aio.ServicerContext) -> Iterator[None]:
            peer = context.peer()
            limiter.counts.take(kind, peer, long_lived)
            try:
                yield
            finally:
                limiter.counts.release(kind, peer, long_lived)

        async def refuse(context: grpc.aio.ServicerContext, exc: Refused) -> None:
            if limiter.on_refused:
                limiter.on_refused(method)
            context.set_trailing_metadata((("retry-after-ms", "200"),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

        if not handler.request_streaming:
            # Unary request: served as a request stream, admitted before its one message is read.
            behavior = handler.unary_stream if handler.response_streaming else handler.unary_unary

            async def get_request(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await first(requests, context)

        else:
            behavior = handler.stream_stream if handler.response_streaming else handler.stream_unary

            async def get_request(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return paced(requests, context) if timed_here else requests

        if handler.response_streaming and inspect.isasyncgenfunction(behavior):

            async def streamed(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    with admitted(context):
                        async for response in behavior(await get_request(requests, context), context):
                            yield response
                except Refused as exc:
                    await refuse(context, exc)

            wrapped: Callable[..., Any] = streamed
        else:
            # A unary response, or a streaming handler that writes with context.write (health's Watch).
            async def answered(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                try:
                    with admitted(context):
                        return await behavior(await get_request(requests, context), context)
                except Refused as exc:
                    await refuse(context, exc)

            wrapped = answered
        return handler._replace(  # type: ignore[attr-defined]
            request_streaming=True,
            unary_unary=None,
            unary_stream=None,
            stream_unary=None if handler.response_streaming else wrapped,
            stream_stream=wrapped if handler.response_streaming else None,
        )
