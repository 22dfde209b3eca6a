"""Background tasks of a serving process (readiness watch, Triton supervisor, worker watchers): one that ends
by raising ends the process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.errors import StartupFailure

log = logging.getLogger("qwen3_embed")


def failure_of(task: asyncio.Task[Any]) -> BaseException | None:
    """Why a finished background task ended the process (None: it returned or was cancelled). A failure that
    is not a StartupFailure (whose one line comes with its exit code) is a bug: logged with its traceback."""
    if task.cancelled() or task.exception() is None:
        return None
    exc = task.exception()
    if not isinstance(exc, StartupFailure):
        log.error("%s failed", task.get_name(), exc_info=exc)
    return exc
