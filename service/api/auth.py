"""API keys: `authorization: Bearer <key>`, compared in constant time, for gRPC and HTTP alike."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc


class KeyChecker:
    def __init__(self, keys: Sequence[str], exempt_prefixes: Sequence[str]) -> None:
        self._keys = [k.encode() for k in keys if k]
        self.exempt_prefixes = tuple(exempt_prefixes)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def is_exempt(self, path: str) -> bool:
        return path.startswith(self.exempt_prefixes)

    def check(self, authorization: str | None) -> bool:
        """True for a known key. Every key is compared (no early exit) so timing says nothing."""
        if not self._keys:
            return True
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        given = authorization[7:].strip().encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched


def _deny(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key (authorization: Bearer <key>)")

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(request, context)
        yield  # pragma: no cover - makes this an async generator for streaming handlers

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    # No deserializer: an unauthenticated message is refused as raw bytes, never parsed.
    return grpc.unary_unary_rpc_method_handler(abort)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, checker: KeyChecker, on_denied: Callable[[str], None] | None = None) -> None:
        self.checker = checker
        self.on_denied = on_denied

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or self.checker.is_exempt(method):
            return handler
        metadata = dict(details.invocation_metadata or ())
        if self.checker.check(metadata.get("authorization")):  # type: ignore[arg-type]
            return handler
        if self.on_denied:
            self.on_denied(method)
        return _deny(handler)
