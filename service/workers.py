"""`qwen3-embed serve --workers N`: N facade processes on the same ports, sharing nothing but Triton.

Process tree: the parent (WorkerPool) owns the ports, the metrics/health port and the local Triton when
there is one (its supervisor, service/triton/supervisor.py); each worker (`python -m service.workers`) is
the single-process facade of service/server.py against that Triton's URL, with its own event loop,
admission, tokenizer threads and connections, so every request limit applies per worker.

Ports. The parent proves each port free with a bind that does not share (no SO_REUSEPORT), as a lone
facade does, so any process already there makes start-up fail with one message (exit 2), then keeps it
for its whole life:
- gRPC and HTTP alike: each worker binds the port itself with SO_REUSEPORT and listens, so the kernel spreads
  new connections evenly over the workers. The parent's socket stays bound, never listening (it gets no
  connections), with SO_REUSEPORT switched on after its bind and SO_REUSEADDR off: a facade that does not
  share, or any socket with SO_REUSEADDR, fails to bind beside it, even while no worker listens. (HTTP was
  once one listening socket that every worker accepted from. The worker that woke first took the whole
  burst: 16 connections opened together all went to one of 2 workers in 2 of 3 tries.) Connections
  still queued on a worker that dies are reset; new ones go to the workers that listen.
- metrics/health (metrics_port): served by the parent. /metrics is the sum over all workers (prometheus
  multiprocess mode, a fresh directory per parent, removed at exit); /health/ready says ready while at least
  one worker is ready (a dead worker takes no connections: its listener is gone) and the parent is not
  draining; /health/live while the parent runs.

Workers that die are started again (at once, then 1, 2, 4 ... 30 s apart); more than MAX_RESTARTS deaths
in a row of one worker (each within STABLE_S of its start) end the parent with exit code 5; a worker that
exits 2 (a misconfiguration it reported) ends it with 2. SIGTERM/SIGINT: every worker closes its listeners and
drains (NOT_SERVING, in-flight work finishes within drain_seconds) and exits, then Triton stops.
Workers die with the parent (PR_SET_PDEATHSIG), whatever ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from service.api.http.server import http_backlog, max_http_connections
from service.api.ops_server import OpsServer
from service.errors import WorkerMisconfigured, WorkersGaveUp
from service.logs import configure_logging
from service.metrics import Metrics, enable_multiprocess
from service.process.banner import log_settings, print_endpoints
from service.process.exits import EXIT_MISCONFIGURED, exit_for
from service.process.ports import address_family, hold_port
from service.process.preflight import preflight_without_state
from service.process.signals import die_with_parent, leave_sigint_to_parent, stop_on_signals
from service.process.startup import check_settings, start_ops, start_unless_stopped
from service.process.tasks import failure_of
from service.server import WorkerBinding, serve_forever
from service.settings import Settings
from service.triton.runtime import describe_exit
from service.triton.supervisor import TritonSupervisor

log = logging.getLogger("qwen3_embed")

# A worker up this long has recovered: its failure series (and backoff) ends.
STABLE_S = 60.0
MAX_RESTARTS = 5
BACKOFF_S = 1.0
BACKOFF_MAX_S = 30.0
# Beyond the workers' own drain bound (about 1 + 2 x drain_seconds) before they are killed.
STOP_MARGIN_S = 10.0
READY_METRIC = "qwen3_embed_triton_up"
# Each worker's event loop touches its heartbeat file this often; one that has not for HUNG_S is hung (a
# blocked loop, SIGSTOP): it would keep its share of new connections while readiness (the other workers'
# gauges) stays 200, so the parent kills it and it is replaced like a dead one.
HEARTBEAT_S = 1.0
HUNG_S = 15.0


def listen_shared_http(settings: Settings) -> socket.socket:
    """A worker's own HTTP listener on the port its parent holds, beside its siblings' (SO_REUSEPORT)."""
    host, port = settings.host, settings.http_port
    backlog = http_backlog(max_http_connections(settings))
    return socket.create_server((host, port), family=address_family(host), backlog=backlog, reuse_port=True)


METRICS_DIR_PREFIX = "qwen3-embed-metrics-"


def remove_stale_metrics_dirs(tmp: Path | None = None) -> None:
    """Metrics directories of parents that are gone (SIGKILL, OOM: no clean-up ran). They are named after their
    parent's pid; one that names this process is stale too (a container restarted with the same pids)."""
    for path in Path(tmp or tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            alive = int(pid) != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:  # another user's process
            alive = True
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    failures: int = 0  # deaths since it last stayed up STABLE_S
    spawned_wall: float = 0.0  # time.time() at the spawn: heartbeats (file mtimes) before it are not its own


class WorkerPool:
    """The parent: start() (ports, Triton, workers), run() in the background, shutdown(), close()."""

    def __init__(self, settings: Settings, count: int, stop_event: asyncio.Event) -> None:
        self.settings = settings
        self.stop_event = stop_event
        remove_stale_metrics_dirs()
        self.metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        enable_multiprocess(self.metrics_dir)  # before any metric of this process exists
        self.metrics = Metrics()
        self.supervisor = None if settings.triton_url else TritonSupervisor(settings, self.metrics)
        self.workers = [Worker(i) for i in range(count)]
        self.grpc_holder: socket.socket | None = None
        self.http_holder: socket.socket | None = None
        self.ops: Any = None
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self.models: list[str] = list(settings.models)
        self.stopping = False
        self.stopped = False  # shutdown() finished: nothing left to kill
        self.fatal: BaseException | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    # -------------------------------------------------------------------------------------------- start

    async def start(self) -> None:
        """The floor's start-up order (service/process/__init__.py), then the workers. Raises Misconfiguration
        or TritonGaveUp; whatever was started is stopped first (also when cancelled)."""
        s = self.settings
        try:
            check_settings(s)
            self.grpc_holder = hold_port(s.host, s.grpc_port, "gRPC")
            self.grpc_port = int(self.grpc_holder.getsockname()[1])
            if self.supervisor is not None:
                self.models = preflight_without_state(s, self.metrics)
            if s.metrics_port:
                self.ops = OpsServer(self.metrics.render, self.ready, s.metrics_host or s.host, s.metrics_port)
                self.metrics_port = await start_ops(self.ops)
            if s.http_port:
                self.http_holder = hold_port(s.host, s.http_port, "HTTP")
                self.http_port = s.http_port
            if self.supervisor is not None:
                await self.supervisor.start()
            for worker in self.workers:
                await self._spawn(worker)
        except BaseException:
            self._kill_all()
            if self.ops is not None:
                with contextlib.suppress(Exception):
                    await self.ops.stop()
            raise

    def _heartbeat(self, worker: Worker) -> Path:
        return Path(self.metrics_dir) / f"heartbeat-{worker.index}"  # not *.db: no metrics file

    def _worker_payload(self, worker: Worker) -> bytes:
        """Sent on the worker's stdin (not its environment: it holds the API keys)."""
        values = self.settings.model_dump(mode="json")
        values.update(workers=1, metrics_port=0, grpc_port=self.grpc_port, http_port=self.http_port)
        if self.supervisor is not None:
            values.update(triton_url=self.supervisor.grpc_url, models=self.models)
        return json.dumps(
            {"settings": values, "parent": os.getpid(), "heartbeat": str(self._heartbeat(worker))}
        ).encode()

    async def _spawn(self, worker: Worker) -> None:
        env = dict(os.environ)
        # The workers import this very package, wherever the parent found it.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.workers", stdin=asyncio.subprocess.PIPE, env=env
        )
        assert process.stdin is not None
        worker.spawned_wall = time.time()
        process.stdin.write(self._worker_payload(worker))
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()
        process.stdin.close()
        worker.process = process
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, process.pid)

    # ---------------------------------------------------------------------------------------------- run

    def run(self) -> None:
        """Background tasks: one watcher per worker, the Triton supervisor, the readiness log. One that
        ends by raising ends the parent (stop_event; see fatal)."""
        tasks = [asyncio.create_task(self._watch(w), name=f"worker {w.index}") for w in self.workers]
        if self.supervisor is not None:
            tasks.append(asyncio.create_task(self.supervisor.run(), name="Triton supervisor"))
        tasks.append(asyncio.create_task(self._log_readiness(), name="readiness log"))
        tasks.append(asyncio.create_task(self._kill_hung(), name="hung worker watch"))
        for task in tasks:
            task.add_done_callback(self._end_on_failure)
        self.tasks += tasks

    def _end_on_failure(self, task: asyncio.Task[Any]) -> None:
        if (exc := failure_of(task)) is not None:
            self.fatal = self.fatal or exc
            self.stop_event.set()

    async def _watch(self, worker: Worker) -> None:
        while True:
            process = worker.process
            assert process is not None
            code = await process.wait()
            multiprocess.mark_process_dead(process.pid, self.metrics_dir)
            if self.stopping:
                return
            why = f"worker {worker.index} (pid {process.pid}) ended: {describe_exit(code)}"
            if code == EXIT_MISCONFIGURED:
                raise WorkerMisconfigured(why)
            if time.monotonic() - worker.started_at >= STABLE_S:
                worker.failures = 0
            worker.failures += 1
            if worker.failures > MAX_RESTARTS:
                raise WorkersGaveUp(f"{why}, {worker.failures} times in a row (at most {MAX_RESTARTS} restarts)")
            delay = 0.0 if worker.failures <= 1 else min(BACKOFF_S * 2 ** (worker.failures - 2), BACKOFF_MAX_S)
            log.error("%s; starting it again%s", why, f" in {delay:.0f} s" if delay else "")
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self.metrics.worker_restarts.inc()
            await self._spawn(worker)

    async def _kill_hung(self) -> None:
        """Kills a worker whose heartbeat stopped (judged only once it has beaten since its spawn: imports
        before its event loop runs take a while); _watch then replaces it."""
        while not self.stopping:
            await asyncio.sleep(HEARTBEAT_S)
            for worker in self.workers:
                process = worker.process
                if process is None or process.returncode is not None or self.stopping:
                    continue
                try:
                    beat = self._heartbeat(worker).stat().st_mtime
                except OSError:
                    continue
                silent = time.time() - beat
                if beat > worker.spawned_wall and silent > HUNG_S:
                    log.error(
                        "worker %d (pid %d) has not answered for %.0f s (hung): killing it, it will be replaced",
                        worker.index,
                        process.pid,
                        silent,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()

    async def _log_readiness(self) -> None:
        last: bool | None = None
        while True:
            ready = self.ready()
            if ready != last:
                log.log(logging.INFO if ready else logging.WARNING, "service %s", "ready" if ready else "NOT ready")
            last = ready
            await asyncio.sleep(self.settings.health_poll_s)

    def gauge(self, name: str) -> float:
        """A gauge as /metrics shows it: the workers' values combined by its multiprocess mode."""
        for metric in multiprocess.MultiProcessCollector(None, self.metrics_dir).collect():
            if metric.name == name:
                return max((sample.value for sample in metric.samples), default=0.0)
        return 0.0

    def ready(self) -> bool:
        return not self.stopping and self.gauge(READY_METRIC) >= 1

    # ------------------------------------------------------------------------------------------ shutdown

    async def shutdown(self) -> None:
        """Every worker drains and exits (killed past its bound), then Triton stops, the ops port last."""
        s = self.settings
        self.stopping = True
        processes = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        log.info("shutting down: %d workers draining for up to %.0f s", len(processes), s.drain_seconds)
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if processes:
            waits = [asyncio.create_task(p.wait()) for p in processes]
            _, pending = await asyncio.wait(waits, timeout=1 + 2 * s.drain_seconds + STOP_MARGIN_S)
            if pending:
                log.error("%d workers still running after the drain: killing them", len(pending))
                for process in processes:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                await asyncio.wait(waits)
        for process in processes:
            multiprocess.mark_process_dead(process.pid, self.metrics_dir)
        for task in self.tasks:  # the supervisor among them: no Triton restart from here on
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.ops is not None:  # last: readiness probes saw 503 throughout the drain
            await self.ops.stop()
        self.stopped = True
        log.info("stopped")

    def _kill_all(self) -> None:
        """Immediate stop (failed or cancelled start-up, or after shutdown): no await, nothing left."""
        self.stopping = True
        if self.supervisor is not None:
            self.supervisor.kill()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()

    def close(self) -> None:
        if not self.stopped:
            self._kill_all()
        for sock in (self.grpc_holder, self.http_holder):
            if sock is not None:
                sock.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


async def serve_workers(settings: Settings, count: int) -> None:
    """`count` worker processes until SIGTERM/SIGINT; the exit codes of service/process/exits.py."""
    stop_event = stop_on_signals()
    pool = WorkerPool(settings, count, stop_event)

    async def start() -> bool:
        await pool.start()
        return True

    try:
        if await start_unless_stopped(start(), stop_event) is None:
            return
        log_settings(settings)
        log.info("%d worker processes (max_in_flight and the other request limits apply to each)", count)
        print_endpoints(settings, pool.grpc_port, pool.http_port, pool.metrics_port)
        pool.run()
        await stop_event.wait()
        await pool.shutdown()
    finally:
        pool.close()
    if pool.fatal is not None:
        exit_for(pool.fatal)


def worker_main() -> None:
    """One worker: settings from the parent (stdin), its own HTTP listener on the shared port, then a facade."""
    leave_sigint_to_parent()
    payload = json.loads(sys.stdin.buffer.read())
    die_with_parent(int(payload["parent"]))
    settings = Settings(**payload["settings"])
    configure_logging(settings.log_level, settings.log_format)
    try:
        sock = listen_shared_http(settings) if settings.http_port else None
    except OSError as exc:
        log.error("cannot listen for HTTP on %s:%d: %s", settings.host, settings.http_port, exc.strerror or exc)
        raise SystemExit(EXIT_MISCONFIGURED) from None
    asyncio.run(_beating(serve_forever(settings, WorkerBinding(sock)), Path(payload["heartbeat"])))


async def _beating(main: Coroutine[Any, Any, None], heartbeat: Path) -> None:
    """Runs `main` while touching `heartbeat` from the same event loop: it stops when the loop is stuck."""

    async def beat() -> None:
        while True:
            with contextlib.suppress(OSError):
                heartbeat.touch()
            await asyncio.sleep(HEARTBEAT_S)

    beating = asyncio.create_task(beat())
    try:
        await main
    finally:
        beating.cancel()


if __name__ == "__main__":
    worker_main()
