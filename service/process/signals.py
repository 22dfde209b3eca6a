"""Signals: SIGTERM/SIGINT stop a serving process (a drain); a worker process dies with its parent."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set, handled from the very start: a stop during start-up still stops
    Triton (and the workers)."""
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    return stop_event


def leave_sigint_to_parent() -> None:
    """Ctrl-C in a terminal reaches the whole process group: until a worker handles SIGINT itself (a drain),
    it leaves it to the parent, which stops every worker with SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def die_with_parent(parent: int) -> None:
    """SIGTERM (a drain) when the parent dies, whatever killed it (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl
        raise SystemExit(1)
