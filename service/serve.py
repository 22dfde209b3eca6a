"""`qwen3-embed serve`: one facade process (service/server.py), or with settings.workers other than 1
(default: one per usable CPU, service/process/cpus.py) a parent and N worker processes
(service/workers.py). The exit codes are the process floor's (service/process/exits.py)."""

from __future__ import annotations

from service.process.cpus import resolve_workers, triton_shares_cpus
from service.server import serve_forever
from service.settings import Settings
from service.workers import serve_workers


async def serve(settings: Settings) -> None:
    """Serves until SIGTERM/SIGINT; exits non-zero (SystemExit) when it cannot go on."""
    count = resolve_workers(settings.workers, triton_local=triton_shares_cpus(settings.triton_url))
    if count > 1:
        await serve_workers(settings, count)
    else:
        await serve_forever(settings)
