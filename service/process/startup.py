"""Start-up steps every serving process shares: the settings checks run before any port is taken, the
metrics/health listener, and a start-up that a stop signal may cancel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from service.api.grpc.server import server_credentials
from service.api.ops_server import OpsServer
from service.errors import Misconfiguration, StartupFailure
from service.process.exits import exit_for
from service.settings import ApiKeysError, Settings

log = logging.getLogger("qwen3_embed")

T = TypeVar("T")


def check_settings(settings: Settings) -> None:
    """The first checks, in this order: the API keys (a keys file that is unreadable or holds no key stops
    start-up: never serve without auth), then the TLS files. Raises Misconfiguration."""
    try:
        settings.all_api_keys()
    except ApiKeysError as exc:
        raise Misconfiguration(str(exc)) from None
    try:
        server_credentials(settings)
    except OSError as exc:
        raise Misconfiguration(f"cannot set up the gRPC server: {exc}") from None


async def start_ops(ops: OpsServer) -> int:
    """Starts the metrics/health listener; a port it cannot take is a Misconfiguration. Returns its port."""
    try:
        return await ops.start()
    except OSError as exc:
        raise Misconfiguration(f"cannot listen for metrics on {ops.host}:{ops.port}: {exc.strerror or exc}") from None


async def start_unless_stopped(start: Coroutine[Any, Any, T], stop_event: asyncio.Event) -> T | None:
    """Runs start-up until it is done, or cancels it (it undoes itself) when a stop comes first: None then.
    A start-up that cannot succeed exits with its code (exit_for)."""
    starting = asyncio.create_task(start)
    stopped = asyncio.create_task(stop_event.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not starting.done():
        log.info("stop requested during start-up")
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        return None
    try:
        return starting.result()
    except StartupFailure as exc:
        exit_for(exc)
