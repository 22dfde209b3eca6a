"""The exit codes of `qwen3-embed serve`, in one table: 0 after SIGTERM/SIGINT, otherwise the code of the
StartupFailure that ended the process (an orchestrator restarts the pod on 4 and 5). Not 3: uvicorn exits 3
when it cannot start."""

from __future__ import annotations

import logging
from typing import NoReturn

from service.errors import Misconfiguration, StartupFailure, TritonGaveUp, WorkerMisconfigured, WorkersGaveUp

log = logging.getLogger("qwen3_embed")

EXIT_MISCONFIGURED = 2
EXIT_TRITON_GAVE_UP = 4
EXIT_WORKERS_GAVE_UP = 5
EXIT_UNEXPECTED = 1

# Failure -> (exit code, the one line logged before it).
EXITS: dict[type[StartupFailure], tuple[int, str]] = {
    Misconfiguration: (EXIT_MISCONFIGURED, "cannot serve: %s"),
    WorkerMisconfigured: (EXIT_MISCONFIGURED, "stopped: %s (its reason is above)"),
    TritonGaveUp: (EXIT_TRITON_GAVE_UP, "giving up, exiting so that the pod is restarted: %s"),
    WorkersGaveUp: (EXIT_WORKERS_GAVE_UP, "giving up, exiting so that the pod is restarted: %s"),
}


def exit_for(exc: BaseException) -> NoReturn:
    """One clear line, then the exit code that tells an orchestrator what happened."""
    for kind, (code, line) in EXITS.items():
        if isinstance(exc, kind):
            log.error(line, exc)
            raise SystemExit(code)
    raise SystemExit(EXIT_UNEXPECTED)  # an unexpected error, logged with its traceback where it happened
