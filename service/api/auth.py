"""API keys: `authorization: Bearer <key>`, compared in constant time, for gRPC and HTTP alike.

Keys from a file follow the file: it is checked at most every `api_keys_reload_s` (by mtime, size and inode,
so a Kubernetes Secret's atomic swap counts) and re-read when it changed; a removed key stops working and a
new one starts, without a restart. Auth configured with a file never turns itself off: a file that loses all
its keys refuses every call until it has one again.

The file is read only when it is a regular file, never blocking, and only lines ending with a newline count
(service/keys_file.py). A changed file that is not usable as a whole - unreadable, missing, a FIFO, a line that
is not a single key, an unterminated (perhaps half-written) last line - is a *bad* file, and a bad file must
never leave a revoked key valid. So:
- if every key in force from the file is still on one of its well-formed lines (the bad file removes
  nothing), the keys in force stay: a typo in a line being added, or a half-written new key, locks nobody
  out and lets no truncated key in;
- otherwise (a key in force is gone or sits on the bad line, so it may have been revoked) every key from the
  file is refused until the file is good again (fail closed). Keys from QWEN3_EMBED_API_KEYS are not the
  file's and stay.
Writers should write a new file and rename it over the old one (`mv`; Kubernetes does this for a Secret).

A key of the file may be pinned to a priority class (`<key> priority=bulk`): `pinned` names it for a request
that passed `check`, and follows the file as the keys do.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from service import keys_file
from service.priority import Priority, parse_name
from service.settings import ApiKeys

log = logging.getLogger(__name__)

FileSignature = tuple[int, int, int, int] | None


def _signature(path: Path) -> FileSignature:
    try:
        st = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class KeyChecker:
    """`keys` from Settings.all_api_keys() carry their file: the checker then follows its changes."""

    def __init__(
        self, keys: Sequence[str], exempt_prefixes: Sequence[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.exempt_prefixes = tuple(exempt_prefixes)
        self._clock = clock
        self._file = keys.file if isinstance(keys, ApiKeys) else None
        self._fixed = [k for k in (keys.fixed if isinstance(keys, ApiKeys) else keys) if k]
        self._reload_s = keys.reload_s if isinstance(keys, ApiKeys) else 1.0
        self._keys = [k.encode() for k in keys if k]
        # The keys in force that came from the file: what a bad file is compared against.
        self._from_file = list(keys)[len(keys.fixed) :] if isinstance(keys, ApiKeys) else []
        self._pins = _pins(keys.pins if isinstance(keys, ApiKeys) else {})
        self._signature = _signature(self._file) if self._file is not None else None
        self._checked = clock()

    @property
    def enabled(self) -> bool:
        return bool(self._fixed) or self._file is not None

    def is_exempt(self, path: str) -> bool:
        return path.startswith(self.exempt_prefixes)

    def _reload_if_changed(self) -> None:
        if self._file is None or self._clock() - self._checked < self._reload_s:
            return
        self._checked = self._clock()
        signature = _signature(self._file)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            parsed = keys_file.parse(keys_file.read_text(self._file), str(self._file))
        except keys_file.KeysFileUnreadable as exc:
            self._bad_file(str(exc), keys_file.Parsed())
            return
        if parsed.problems:
            self._bad_file("; ".join(parsed.problems[:3]), parsed)
            return
        if not parsed.keys:
            log.error("the API keys file %s now holds no key: calls that need one are refused", self._file)
        self._apply(parsed.keys, parsed.pins)
        log.info("API keys file %s changed: %d keys in force", self._file, len(self._keys))

    def _apply(self, from_file: list[str], pins: dict[str, str] | None = None) -> None:
        self._from_file = list(from_file)
        self._keys = [k.encode() for k in (*self._fixed, *from_file)]
        self._pins = _pins(pins or {})

    def _bad_file(self, problem: str, parsed: keys_file.Parsed) -> None:
        """Keeps the keys in force only if the bad file removes none of them; otherwise refuses the file's keys."""
        removed = set(self._from_file) - set(parsed.keys)
        if not removed:
            log.error("%s; it removes no key in force, so the %d keys in force stay", problem, len(self._keys))
            return
        self._apply([])
        log.error(
            "%s; %d key(s) in force are not on its good lines (perhaps revoked), so every key from the file is "
            "refused until it is fixed",
            problem,
            len(removed),
        )

    def check(self, authorization: str | None) -> bool:
        """True for a known key. Every key is compared (no early exit) so timing says nothing."""
        if not self.enabled:
            return True
        self._reload_if_changed()
        if not authorization or authorization[:7].lower() != "bearer ":
            return False
        given = authorization[7:].strip().encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    def pinned(self, authorization: str | None) -> Priority | None:
        """The priority class the request's key is pinned to, if any. Call it after `check` passed: the key
        is then known to be in force, so looking it up leaks nothing."""
        if not self._pins or not authorization or authorization[:7].lower() != "bearer ":
            return None
        return self._pins.get(authorization[7:].strip())


def _pins(names: dict[str, str]) -> dict[str, Priority]:
    return {key: parse_name(name) for key, name in names.items()}


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
