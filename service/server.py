"""One facade process: (local Triton) + gRPC server + HTTP server in one event loop, with health tracking
and graceful shutdown on SIGTERM/SIGINT. It serves alone (`qwen3-embed serve --workers 1`, see
service/serve.py) or as one worker of service/workers.py (a WorkerBinding). Start-up order, signals, exit
codes and the banner are the process floor's (service/process/); whatever the path, the local tritonserver
does not outlive the facade (see service/triton/runtime.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn
from grpc_health.v1 import health

from service import tracing
from service.api.grpc.server import build_grpc_server, set_serving
from service.api.ops_server import OpsServer
from service.errors import Misconfiguration
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.process.banner import log_settings, print_endpoints
from service.process.exits import exit_for
from service.process.ports import check_port_free
from service.process.preflight import preflight_repository
from service.process.signals import stop_on_signals
from service.process.startup import check_settings, start_ops, start_unless_stopped
from service.process.tasks import failure_of
from service.settings import Settings
from service.state import ServiceState
from service.triton.client import TritonBackend
from service.triton.supervisor import TritonSupervisor

# After the admitted work ends on SIGTERM, how long its last responses get to leave the kernel's send buffers before
# the gRPC server closes its connections (RunningService._drain_grpc); within the drain bound.
FLUSH_S = 1.0

log = logging.getLogger("qwen3_embed")


@dataclass(frozen=True)
class WorkerBinding:
    """How a worker of `serve --workers N` listens: on the gRPC and HTTP ports its parent holds, shared with
    its siblings (SO_REUSEPORT); `http_socket` is its own HTTP listener there (None: HTTP off).
    The parent serves the metrics/health port; a worker answers only once its first readiness check ran."""

    http_socket: socket.socket | None


@dataclass
class RunningService:
    """A facade process's handles: start() (via start_service), then background tasks, then shutdown()."""

    settings: Settings
    state: ServiceState
    supervisor: TritonSupervisor | None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    grpc_server: grpc.aio.Server | None = None
    health: health.aio.HealthServicer | None = None
    http_server: uvicorn.Server | None = None
    http_task: asyncio.Task[None] | None = None
    ops: OpsServer | None = None
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0  # the plaintext metrics/health listener, 0 when off
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    fatal: BaseException | None = None  # why a background task ended the facade
    lifecycle: Lifecycle | None = None

    async def start(self, worker: WorkerBinding | None) -> None:
        """The floor's start-up order (service/process/__init__.py) for one process."""
        s, state = self.settings, self.state
        lifecycle = self.lifecycle = Lifecycle(state)
        check_settings(s)
        self._build_grpc(lifecycle, worker is not None)
        if self.supervisor is not None:
            preflight_repository(s, state)
        # Listeners first (NOT_SERVING, liveness SERVING): a taken port fails before Triton's long start.
        assert self.grpc_server is not None and self.health is not None
        await set_serving(self.health, False)
        if worker is not None:  # joining siblings that serve: take connections only once ready
            await state.refresh()
        await self.grpc_server.start()
        if s.metrics_port:  # before Triton's start, so that liveness probes answer meanwhile
            self.ops = OpsServer.for_state(state, s.metrics_host or s.host, s.metrics_port)
            self.metrics_port = await start_ops(self.ops)
        if s.http_port:
            await self._start_http(lifecycle, worker)
        if self.supervisor is not None:
            await self.supervisor.start()
        await state.refresh()
        await set_serving(self.health, state.ready)
        state.metrics.worker_processes.set(1)

    def _build_grpc(self, lifecycle: Lifecycle, worker: bool) -> None:
        s = self.settings
        try:
            self.grpc_server, self.health, self.grpc_port = build_grpc_server(lifecycle, s, worker=worker)
        except (OSError, RuntimeError) as exc:  # TLS files unreadable, port taken
            if "Failed to bind" in str(exc):  # grpc's own text points at debug logs; say what happened
                raise Misconfiguration(
                    f"cannot listen for gRPC on {s.host}:{s.grpc_port}: address in use or not available"
                ) from None
            raise Misconfiguration(f"cannot set up the gRPC server: {exc}") from None

    async def _start_http(self, lifecycle: Lifecycle, worker: WorkerBinding | None) -> None:
        from service.api.http.server import start_http

        s = self.settings
        if worker is None:
            check_port_free(s.host, s.http_port, "HTTP")
        sock = worker.http_socket if worker is not None else None
        self.http_server, self.http_task, self.http_port = await start_http(lifecycle, s, sock)

    def run_background(self) -> None:
        """The readiness watch and the Triton supervisor; one that ends by raising ends the facade."""
        background = [asyncio.create_task(self.state.watch(self._on_readiness), name="readiness watch")]
        if self.supervisor is not None:
            background.append(asyncio.create_task(self.supervisor.run(), name="Triton supervisor"))
        for task in background:
            task.add_done_callback(self._end_on_failure)
        self.tasks += background
        if self.http_task is not None:
            self.tasks.append(self.http_task)

    async def _on_readiness(self, ready: bool) -> None:
        assert self.health is not None
        await set_serving(self.health, ready)

    def _end_on_failure(self, task: asyncio.Task[Any]) -> None:
        """A background task that ends by raising ends the facade (with a non-zero exit code)."""
        if (exc := failure_of(task)) is not None:
            self.fatal = self.fatal or exc
            self.stop_event.set()

    async def shutdown(self) -> None:
        s, state = self.settings, self.state
        assert self.grpc_server is not None and self.health is not None
        log.info("shutting down: NOT_SERVING, draining for up to %.0f s", s.drain_seconds)
        state.draining = True
        state.metrics.worker_processes.set(0)
        await self.health.enter_graceful_shutdown()
        # Let load balancers see NOT_SERVING before the listener closes.
        await asyncio.sleep(min(1.0, s.drain_seconds))
        if self.http_server is not None:
            self.http_server.should_exit = True
        await self._drain_grpc(s.drain_seconds)
        if self.http_task is not None:  # uvicorn finishes its accepted requests (bounded by its graceful timeout)
            await asyncio.wait({self.http_task}, timeout=s.drain_seconds)
        for task in self.tasks:  # the supervisor first of all: no restart from here on
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await state.backend.close()
        state.close()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.ops is not None:  # last: readiness probes saw 503 throughout the drain
            await self.ops.stop()
        # The drained requests' spans, flushed within the export timeout (a dead collector cannot hold the exit).
        await asyncio.to_thread(tracing.shutdown, s.tracing_export_timeout_s)
        log.info("stopped")

    async def _drain_grpc(self, drain_s: float) -> None:
        """The admitted work ends (new calls get UNAVAILABLE meanwhile), its responses get a moment to be read,
        then the server stops, all within `drain_s`. Why not stop() at once: gRPC destroys the server, closing every
        connection, as soon as its calls are done, and a response a handler has returned may still sit in the
        kernel's send buffer then; a connection closed with unread input is reset, and the client loses it
        (seen: UNAVAILABLE "Stream removed ... Connection reset by peer ... Server shutdown" for a call that
        had completed). Calls still running at the bound are cut (UNAVAILABLE "Cancelling all calls")."""
        assert self.grpc_server is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        if self.lifecycle is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lifecycle.admission.idle(), drain_s)
            await asyncio.sleep(max(0.0, min(FLUSH_S, deadline - loop.time())))
        await self.grpc_server.stop(max(0.0, deadline - loop.time()))

    async def abort(self) -> None:
        """Undoes a failed or cancelled start-up: Triton first, synchronously, so nothing can skip it."""
        if self.supervisor is not None:
            self.supervisor.kill()
        if self.http_server is not None:
            self.http_server.should_exit = True
        if self.http_task is not None:
            self.http_task.cancel()
        with contextlib.suppress(Exception):
            if self.grpc_server is not None:
                await self.grpc_server.stop(0)
            if self.ops is not None:
                await self.ops.stop()
            await self.state.backend.close()
        self.state.close()
        tracing.shutdown(0.5)


async def start_service(
    settings: Settings, stop_event: asyncio.Event | None = None, worker: WorkerBinding | None = None
) -> RunningService:
    """Starts everything and returns the running facade (its shutdown() stops it). Raises Misconfiguration
    or TritonGaveUp when start-up cannot succeed; what was started is stopped first, Triton included (also
    when cancelled). `worker`: one process of `serve --workers N` (see WorkerBinding)."""
    metrics = Metrics()
    tracing.setup(settings)  # per process: each worker of `serve --workers N` exports its own spans
    supervisor = None if settings.triton_url else TritonSupervisor(settings, metrics)
    url = supervisor.grpc_url if supervisor is not None else settings.triton_url
    backend = TritonBackend(url, settings.model_name, settings.max_message_bytes)
    running = RunningService(settings, ServiceState(settings, backend, metrics), supervisor)
    if stop_event is not None:
        running.stop_event = stop_event
    try:
        await running.start(worker)
    except BaseException:
        await running.abort()
        raise
    running.run_background()
    return running


async def serve_forever(settings: Settings, worker: WorkerBinding | None = None) -> None:
    """One facade process until SIGTERM/SIGINT. Exits non-zero (SystemExit, service/process/exits.py) on a
    permanent misconfiguration or when the local Triton cannot be kept up."""
    stop_event = stop_on_signals()
    running = await start_unless_stopped(start_service(settings, stop_event, worker), stop_event)
    if running is None:
        return
    if worker is None:
        log_settings(settings)
        print_endpoints(settings, running.grpc_port, running.http_port, running.metrics_port)
    else:
        log.info("worker pid %d serving (%s)", os.getpid(), "ready" if running.state.ready else "not ready yet")
    await stop_event.wait()
    await running.shutdown()
    if running.fatal is not None:
        exit_for(running.fatal)
