"""The facade process: (local Triton) + gRPC server + HTTP server in one event loop, with health
tracking and graceful shutdown on SIGTERM/SIGINT.

Exit codes of `qwen3-embed serve`: 0 after SIGTERM/SIGINT, 2 on a permanent misconfiguration (one
message, at start-up), 4 when the local Triton cannot be kept up (an orchestrator then restarts the pod),
5 when worker processes (`--workers N`) keep dying. Whatever the path, the local tritonserver does not
outlive the facade (see service/triton/runtime.py).

With more than one worker (settings.workers, default: one per usable CPU) serve_forever hands over to
service/workers.py: a parent that owns the ports and the local Triton, and N processes each running
start_service below with a WorkerBinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import uvicorn

from service.api.grpc_server import build_grpc_server, set_serving
from service.api.ops_server import OpsServer
from service.lifecycle import Lifecycle
from service.metrics import Metrics
from service.settings import ApiKeysError, Settings
from service.state import ServiceState
from service.triton.client import TritonBackend
from service.triton.supervisor import Misconfiguration, TritonGaveUp, TritonSupervisor, read_model_configs

log = logging.getLogger("qwen3_embed")

T = TypeVar("T")

EXIT_MISCONFIGURED = 2
EXIT_TRITON_GAVE_UP = 4  # not 3: uvicorn exits 3 when it cannot start


@dataclass(frozen=True)
class WorkerBinding:
    """How a worker of `serve --workers N` listens: on the gRPC and HTTP ports its parent holds, shared with
    its siblings (SO_REUSEPORT); `http_socket` is its own HTTP listener there (None: HTTP off).
    The parent serves the metrics/health port; a worker answers only once its first readiness check ran."""

    http_socket: socket.socket | None


@dataclass
class RunningService:
    """Handles to a started facade, for the CLI and for tests."""

    settings: Settings
    state: ServiceState
    grpc_port: int
    http_port: int
    supervisor: TritonSupervisor | None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    fatal: BaseException | None = None  # why a background task ended the facade
    metrics_port: int = 0  # the plaintext metrics/health listener, 0 when off


async def start_service(
    settings: Settings, stop_event: asyncio.Event | None = None, worker: WorkerBinding | None = None
) -> tuple[RunningService, Callable[[], Awaitable[None]]]:
    """Starts everything and returns (handles, shutdown coroutine function). Raises Misconfiguration or
    TritonGaveUp when start-up cannot succeed; what was started is stopped first, Triton included (also
    when cancelled). `worker`: one process of `serve --workers N` (see WorkerBinding)."""
    metrics = Metrics()
    supervisor = None if settings.triton_url else TritonSupervisor(settings, metrics)
    url = supervisor.grpc_url if supervisor is not None else settings.triton_url
    backend = TritonBackend(url, settings.model_name, settings.max_message_bytes)
    state = ServiceState(settings, backend, metrics)
    lifecycle = Lifecycle(state)
    server = None
    http_server: uvicorn.Server | None = None
    http_task: asyncio.Task[None] | None = None
    http_port = 0
    ops: OpsServer | None = None
    metrics_port = 0
    try:
        check_api_keys(settings)
        try:
            server, health_servicer, grpc_port = build_grpc_server(lifecycle, settings, worker=worker is not None)
        except (OSError, RuntimeError) as exc:  # TLS files unreadable, port taken
            if "Failed to bind" in str(exc):  # grpc's own text points at debug logs; say what happened
                raise Misconfiguration(
                    f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}: address in use or not available"
                ) from None
            raise Misconfiguration(f"cannot set up the gRPC server: {exc}") from None
        if supervisor is not None:
            # Before Triton starts: a broken export or tokenizer fails start-up at once, with one message.
            state.install(read_model_configs(settings))
        # Listeners first (NOT_SERVING, liveness SERVING): a taken port fails before Triton's long start.
        await set_serving(health_servicer, False)
        if worker is not None:  # joining siblings that serve: take connections only once ready
            await state.refresh()
        await server.start()
        if settings.metrics_port:  # before Triton's start, so that liveness probes answer meanwhile
            ops = OpsServer.for_state(state, settings.metrics_host or settings.host, settings.metrics_port)
            metrics_port = await start_ops(ops)
        if settings.http_port:
            from service.api.http_server import start_http

            if worker is None:
                check_port_free(settings.host, settings.http_port)
            sock = worker.http_socket if worker is not None else None
            http_server, http_task, http_port = await start_http(lifecycle, settings, sock)
        if supervisor is not None:
            await supervisor.start()
        await state.refresh()
        await set_serving(health_servicer, state.ready)
        metrics.worker_processes.set(1)
    except BaseException:
        await _abort(supervisor, server, http_server, http_task, state, ops)
        raise

    running = RunningService(
        settings,
        state,
        grpc_port,
        http_port,
        supervisor,
        stop_event=stop_event or asyncio.Event(),
        metrics_port=metrics_port,
    )

    async def on_change(ready: bool) -> None:
        await set_serving(health_servicer, ready)

    def end_on_failure(task: asyncio.Task[Any]) -> None:
        """A background task that ends by raising ends the facade (with a non-zero exit code)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        if not isinstance(exc, Misconfiguration | TritonGaveUp):
            log.error("%s failed", task.get_name(), exc_info=exc)
        running.fatal = running.fatal or exc
        running.stop_event.set()

    background = [asyncio.create_task(state.watch(on_change), name="readiness watch")]
    if supervisor is not None:
        background.append(asyncio.create_task(supervisor.run(), name="Triton supervisor"))
    for task in background:
        task.add_done_callback(end_on_failure)
    running.tasks += background
    if http_task is not None:
        running.tasks.append(http_task)

    async def shutdown() -> None:
        log.info("shutting down: NOT_SERVING, draining for up to %.0f s", settings.drain_seconds)
        state.draining = True
        metrics.worker_processes.set(0)
        await health_servicer.enter_graceful_shutdown()
        # Let load balancers see NOT_SERVING before the listener closes.
        await asyncio.sleep(min(1.0, settings.drain_seconds))
        if http_server is not None:
            http_server.should_exit = True
        await server.stop(settings.drain_seconds)
        if http_task is not None:  # uvicorn finishes its accepted requests (bounded by its graceful timeout)
            await asyncio.wait({http_task}, timeout=settings.drain_seconds)
        for task in running.tasks:  # the supervisor first of all: no restart from here on
            task.cancel()
        for task in running.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await backend.close()
        state.close()
        if supervisor is not None:
            await supervisor.stop()
        if ops is not None:  # last: readiness probes saw 503 throughout the drain
            await ops.stop()
        log.info("stopped")

    return running, shutdown


def check_api_keys(settings: Settings) -> None:
    """A keys file that is unreadable or holds no key stops start-up: never serve without auth."""
    try:
        settings.all_api_keys()
    except ApiKeysError as exc:
        raise Misconfiguration(str(exc)) from None


async def start_ops(ops: OpsServer) -> int:
    """Starts the metrics/health listener; a port it cannot take is a Misconfiguration. Returns its port."""
    try:
        return await ops.start()
    except OSError as exc:
        raise Misconfiguration(f"cannot listen for metrics on {ops.host}:{ops.port}: {exc.strerror or exc}") from None


def check_port_free(host: str, port: int) -> None:
    """uvicorn reports a taken port by sys.exit inside its task, which escapes the event loop and this
    module's clean-up: find out first, and say it in one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise Misconfiguration(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None


async def _abort(
    supervisor: TritonSupervisor | None,
    server: Any,
    http_server: uvicorn.Server | None,
    http_task: asyncio.Task[None] | None,
    state: ServiceState,
    ops: OpsServer | None = None,
) -> None:
    """Undoes a failed or cancelled start-up: Triton first, synchronously, so nothing can skip it."""
    if supervisor is not None:
        supervisor.kill()
    if http_server is not None:
        http_server.should_exit = True
    if http_task is not None:
        http_task.cancel()
    with contextlib.suppress(Exception):
        if server is not None:
            await server.stop(0)
        if ops is not None:
            await ops.stop()
        await state.backend.close()
    state.close()


async def serve_forever(settings: Settings, worker: WorkerBinding | None = None) -> None:
    """Serves until SIGTERM/SIGINT. Exits non-zero (SystemExit) on a permanent misconfiguration or when the
    local Triton cannot be kept up; see the module docstring for the codes. With settings.workers other
    than 1, the worker processes of service/workers.py do the serving."""
    if worker is None:
        from service.workers import resolve_workers, triton_shares_cpus

        count = resolve_workers(settings.workers, triton_local=triton_shares_cpus(settings.triton_url))
        if count > 1:
            from service.workers import serve_workers

            await serve_workers(settings, count)
            return
    stop_event = stop_on_signals()
    started = await start_unless_stopped(start_service(settings, stop_event, worker), stop_event)
    if started is None:
        return
    running, shutdown = started
    if worker is None:
        log.info("settings %s", json.dumps(settings.describe(), default=str))
        print_endpoints(settings, running.grpc_port, running.http_port, running.metrics_port)
    else:
        log.info("worker pid %d serving (%s)", os.getpid(), "ready" if running.state.ready else "not ready yet")
    await stop_event.wait()
    await shutdown()
    if running.fatal is not None:
        exit_for(running.fatal)


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set, handled from the very start: a stop during start-up still stops
    Triton (and the workers)."""
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    return stop_event


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
    except (Misconfiguration, TritonGaveUp) as exc:
        exit_for(exc)


def exit_for(exc: BaseException) -> NoReturn:
    """One clear line, then the exit code that tells an orchestrator what happened."""
    if isinstance(exc, Misconfiguration):
        log.error("cannot serve: %s", exc)
        raise SystemExit(EXIT_MISCONFIGURED)
    if isinstance(exc, TritonGaveUp):
        log.error("giving up, exiting so that the pod is restarted: %s", exc)
        raise SystemExit(EXIT_TRITON_GAVE_UP)
    raise SystemExit(1)  # an unexpected error, logged with its traceback where it happened


def print_endpoints(settings: Settings, grpc_port: int, http_port: int, metrics_port: int) -> None:
    """The banner: what a user can paste, true to the listeners (TLS, keys, bind address)."""
    host = "localhost" if settings.host in ("0.0.0.0", "::", "127.0.0.1") else settings.host
    tls = settings.tls_cert is not None
    scheme = "https" if tls else "http"
    extras = "health, reflection, TLS" if tls else "health, reflection"
    lines = [f"gRPC  {host}:{grpc_port}  (embedding.v1.EmbeddingService, {extras})"]
    if http_port:
        lines.append(f"HTTP  {scheme}://{host}:{http_port}/v1/embeddings  (OpenAI API; /metrics, /openapi.json)")
    if metrics_port:
        lines.append(f"ops   http://{host}:{metrics_port}/metrics  (plaintext, no key; /health/*)")
    transport = "-cacert <ca.pem>" if tls else "-plaintext"
    if settings.tls_client_ca is not None:
        transport += " -cert <client.pem> -key <client-key.pem>"
    auth = " -H 'authorization: Bearer <key>'" if settings.api_keys or settings.api_keys_file else ""
    lines.append(
        f'try:  grpcurl {transport}{auth} -d \'{{"inputs": ["How are you today?"], "prompt_name": "query"}}\' '
        f"{host}:{grpc_port} embedding.v1.EmbeddingService/Embed"
    )
    for line in lines:
        log.info(line)
