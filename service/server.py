"""The facade process: (local Triton) + gRPC server + HTTP server in one event loop, with health
tracking and graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

from service.api.grpc_server import build_grpc_server, set_serving
from service.metrics import Metrics
from service.settings import Settings
from service.state import ServiceState
from service.triton.client import TritonBackend
from service.triton.runtime import TritonProcess, start_triton

log = logging.getLogger("qwen3_embed")


@dataclass
class RunningService:
    """Handles to a started facade, for the CLI and for tests."""

    settings: Settings
    state: ServiceState
    grpc_port: int
    http_port: int
    triton: TritonProcess | None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


async def start_service(settings: Settings) -> tuple[RunningService, Any]:
    """Starts everything and returns (handles, shutdown coroutine function)."""
    triton: TritonProcess | None = None
    url = settings.triton_url
    if not url:
        log.info("starting Triton on %s", settings.model_repository)
        triton = await asyncio.to_thread(
            start_triton,
            settings.model_repository,
            settings.triton_log,
            timeout=settings.triton_start_timeout_s,
        )
        url = triton.grpc_url
        log.info("Triton ready at %s (log: %s)", url, settings.triton_log)
    metrics = Metrics()
    backend = TritonBackend(url, settings.model_name, settings.max_message_bytes)
    state = ServiceState(settings, backend, metrics)
    server, health_servicer, grpc_port = build_grpc_server(state, settings)
    await set_serving(health_servicer, False)
    await state.refresh()
    await server.start()
    await set_serving(health_servicer, state.ready)

    async def on_change(ready: bool) -> None:
        await set_serving(health_servicer, ready)

    running = RunningService(settings, state, grpc_port, 0, triton)
    running.tasks.append(asyncio.create_task(state.watch(on_change)))

    http_server = None
    http_task: asyncio.Task[None] | None = None
    if settings.http_port:
        from service.api.http_server import start_http

        http_server, http_task, running.http_port = await start_http(state, settings)
        running.tasks.append(http_task)

    async def shutdown() -> None:
        log.info("shutting down: NOT_SERVING, draining for up to %.0f s", settings.drain_seconds)
        state.draining = True
        await health_servicer.enter_graceful_shutdown()
        # Let load balancers see NOT_SERVING before the listener closes.
        await asyncio.sleep(min(1.0, settings.drain_seconds))
        if http_server is not None:
            http_server.should_exit = True
        await server.stop(settings.drain_seconds)
        if http_task is not None:  # uvicorn finishes its accepted requests (bounded by its graceful timeout)
            await asyncio.wait({http_task}, timeout=settings.drain_seconds)
        for task in running.tasks:
            task.cancel()
        for task in running.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await backend.close()
        if state.embedder is not None:
            state.embedder.close()
        if triton is not None:
            await asyncio.to_thread(triton.stop)
        log.info("stopped")

    return running, shutdown


async def serve_forever(settings: Settings) -> None:
    running, shutdown = await start_service(settings)
    log.info("settings %s", json.dumps(settings.describe(), default=str))
    print_endpoints(running)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, running.stop_event.set)
    await running.stop_event.wait()
    await shutdown()


def print_endpoints(running: RunningService) -> None:
    host = "localhost"
    lines = [
        f"gRPC  {host}:{running.grpc_port}  (embedding.v1.EmbeddingService, health, reflection)",
    ]
    if running.http_port:
        lines.append(f"HTTP  http://{host}:{running.http_port}/v1/embeddings  (OpenAI API; /metrics, /docs)")
    lines.append(
        f'try:  grpcurl -plaintext -d \'{{"inputs": ["How are you today?"], "prompt_name": "query"}}\' '
        f"{host}:{running.grpc_port} embedding.v1.EmbeddingService/Embed"
    )
    for line in lines:
        log.info(line)
