"""Supervision of the local Triton (no --triton-url).

The facade starts tritonserver on ports chosen once, restarts it on the same ports when it dies or stops
answering (its Triton client keeps the URL), and gives up after `triton_max_restarts` failures in a row:
the facade then exits non-zero, so that an orchestrator restarts the pod instead of leaving it unready.
Errors that no restart can fix (a broken export or tokenizer) fail start-up at once instead.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import urllib.error
from collections import Counter

from service.errors import TritonGaveUp
from service.metrics import Metrics
from service.settings import Settings
from service.triton.hang import HangWatch
from service.triton.runtime import StubProcess, TritonProcess, TritonStartError, describe_exit, free_port, start_triton

log = logging.getLogger(__name__)

# Up this long after a failure, Triton counts as recovered: the failure series (and its backoff) ends.
STABLE_S = 60.0
# How often a slow start says so: a start-up must never wait silently.
PROGRESS_S = 15.0
# How often a starting Triton is asked whether it is ready.
START_POLL_S = 0.25
# A Python-backend stub missing this long (Triton does not replace a dead one; its calls fail with
# "Stub process ... is not healthy" while Triton reports the model ready) restarts Triton.
STUB_GRACE_S = 3.0
# What a probe's HTTP error says when the model never got to it: not an answer from the model.
_QUEUE_REFUSALS = ("Request timeout expired", "Exceeds maximum queue size")


class TritonSupervisor:
    """Owns the local tritonserver: start(), then run() until cancelled, then stop()."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # gRPC, HTTP, metrics on 127.0.0.1 (start_triton binds loopback only); kept across restarts.
        self.ports = (
            settings.triton_grpc_port or free_port(),
            settings.triton_http_port or free_port(),
            settings.triton_metrics_port or free_port(),
        )
        self.triton: TritonProcess | None = None
        self.failures = 0  # deaths and failed starts since Triton last stayed up STABLE_S
        self.up_since = 0.0
        self.stubs: Counter[str] = Counter()  # Python-backend stubs per model once this run was ready
        self.watch = HangWatch(settings.triton_hang_s)  # a fresh one per run
        self._answered: queue.SimpleQueue[str] = queue.SimpleQueue()  # models whose probe got an answer

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    async def start(self) -> None:
        """The first start. Failures are retried like restarts: a start can fail for passing reasons
        (a Python-backend stub that died under CPU pressure). Raises TritonGaveUp."""
        log.info("starting Triton on %s (log: %s)", self.settings.model_repository, self.settings.triton_log)
        await self._bring_up(restart=False)

    async def run(self) -> None:
        """Watches Triton until cancelled: restarts it when it dies, or when it has been alive but not
        ready for triton_start_timeout_s (hung), or when a Python-backend stub of a model has died or hung
        (service/triton/hang.py). Raises TritonGaveUp."""
        s = self.settings
        unready_since: float | None = None
        stubs_lost_since: float | None = None
        while True:
            await asyncio.sleep(s.health_poll_s)
            triton = self.triton
            assert triton is not None, "run() before start()"
            code = triton.poll()
            if code is not None:
                self._failed(_with_errors(f"Triton died ({describe_exit(code)})", triton))
                unready_since = None
                await self._bring_up(restart=True)
                continue
            now = time.monotonic()
            if self.failures and now - self.up_since >= STABLE_S:
                log.info("Triton has been up %.0f s: failure count reset", now - self.up_since)
                self.failures = 0
                self.metrics.triton_failures.set(0)
            if await asyncio.to_thread(triton.is_ready):
                unready_since = None
                stubs = await asyncio.to_thread(triton.stub_processes)
                lost = self._lost_stubs(stubs)
                stubs_lost_since = (stubs_lost_since or now) if lost else None
                if stubs_lost_since is not None and now - stubs_lost_since >= STUB_GRACE_S:
                    triton.kill()
                    self._failed(f"Triton's Python-backend stub died ({lost}): calls routed to it would fail")
                    stubs_lost_since = None
                    await self._bring_up(restart=True)
                    continue
                hung = await self._hung(triton, stubs, now)
                if hung:
                    triton.kill()
                    self._failed(f"Triton's model is hung ({hung}): calls routed to it fail or wait for their deadline")
                    stubs_lost_since = None
                    await self._bring_up(restart=True)
                continue
            unready_since = unready_since or now
            if now - unready_since >= s.triton_start_timeout_s:
                triton.kill()
                self._failed(f"Triton was alive but not ready for {now - unready_since:.0f} s")
                unready_since = None
                await self._bring_up(restart=True)

    async def stop(self) -> None:
        """Graceful stop (SIGTERM, SIGKILL after 15 s). Cancel run() first, or it restarts Triton."""
        if self.triton is not None:
            await asyncio.to_thread(self.triton.stop)

    def kill(self) -> None:
        """Immediate stop for failure paths (no await, safe while being cancelled)."""
        if self.triton is not None:
            self.triton.kill()

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.metrics.triton_failures.set(self.failures)
        limit = self.settings.triton_max_restarts
        if self.failures > limit:
            raise TritonGaveUp(
                f"the local Triton failed {self.failures} times in a row (triton_max_restarts={limit}); last: {why}"
            )
        log.error("%s; restarting it on the same ports (failure %d of %d allowed)", why, self.failures, limit)

    def _lost_stubs(self, stubs: list[StubProcess]) -> str:
        """Models with fewer live stubs than when this run became ready, e.g. 'qwen3_embedding 1 of 2'."""
        alive = Counter(stub.model for stub in stubs)
        return ", ".join(f"{m} {alive[m]} of {n} alive" for m, n in sorted(self.stubs.items()) if alive[m] < n)

    async def _hung(self, triton: TritonProcess, stubs: list[StubProcess], now: float) -> str:
        """What is hung in this run, '' when nothing (see service/triton/hang.py); sends the probes due."""
        watch = self.watch
        hung = watch.stopped_stubs(now, {stub.pid: stub.model for stub in stubs if stub.stopped})
        try:
            executions = await asyncio.to_thread(triton.executions)
        except (OSError, ValueError, KeyError) as exc:  # a passing failure: judged again on the next poll
            log.debug("cannot read Triton's model statistics: %s", exc)
            return ", ".join(hung)
        cpu: dict[str, float] = {}
        for stub in stubs:
            cpu[stub.model] = cpu.get(stub.model, 0.0) + stub.cpu_s
        while not self._answered.empty():
            watch.answered(now, self._answered.get())
        watch.observe(now, executions, cpu)
        for model in watch.wants_probe(now):
            self._send_probe(triton, model)
        return ", ".join(hung + watch.hung_models(now))

    def _send_probe(self, triton: TritonProcess, model: str) -> None:
        """A probe in a daemon thread: it may wait up to hang_s behind a stuck stub, and must never delay
        the facade's exit (the event loop's executor would wait for it)."""
        timeout = self.settings.triton_hang_s + 10.0

        def probe() -> None:
            try:
                triton.probe(model, timeout)
            except urllib.error.HTTPError as exc:  # Triton answered: from the model unless its queue refused it
                body = exc.read().decode(errors="replace")
                if not any(refusal in body for refusal in _QUEUE_REFUSALS):
                    log.warning("liveness probe of model %s refused: %s %s", model, exc.code, body[:200])
                    self._answered.put(model)
                return
            except OSError as exc:  # timed out, or Triton went away: progress (or its absence) decides
                log.debug("liveness probe of model %s: %s", model, exc)
                return
            self._answered.put(model)

        log.debug("model %s made no progress for %.0f s: probing it", model, self.watch.probe_after_s)
        threading.Thread(target=probe, name=f"probe {model}", daemon=True).start()

    def _backoff(self) -> float:
        """None before the first restart of a series (a one-off crash costs nothing), then doubling."""
        if self.failures <= 1:
            return 0.0
        s = self.settings
        return float(min(s.triton_restart_backoff_s * 2 ** (self.failures - 2), s.triton_restart_backoff_max_s))

    async def _bring_up(self, restart: bool) -> None:
        while True:
            if restart:
                delay = self._backoff()
                if delay:
                    log.info("restarting Triton in %.1f s", delay)
                    await asyncio.sleep(delay)
                self.metrics.triton_restarts.inc()
            failure = await self._start_once()
            if failure is None:
                self.up_since = time.monotonic()
                return
            self._failed(failure)
            restart = True

    async def _start_once(self) -> str | None:
        """Starts tritonserver and waits until it is ready. Returns None, or why it failed (it is gone then)."""
        s = self.settings
        started = time.monotonic()
        try:
            triton = await asyncio.to_thread(start_triton, s.model_repository, s.triton_log, *self.ports, wait=False)
        except (OSError, TritonStartError) as exc:
            return f"cannot start tritonserver: {exc}"
        self.triton = triton
        ready = False
        try:
            next_note = started + PROGRESS_S
            while True:
                code = triton.poll()
                if code is not None:
                    return _with_errors(f"tritonserver exited at start ({describe_exit(code)})", triton)
                if await asyncio.to_thread(triton.is_ready):
                    ready = True
                    # Strict readiness: every instance (stub) is up once the server says ready.
                    self.stubs = Counter(await asyncio.to_thread(triton.stub_models))
                    self.watch = HangWatch(s.triton_hang_s)
                    log.info("Triton ready at %s in %.1f s", self.grpc_url, time.monotonic() - started)
                    return None
                waited = time.monotonic() - started
                if waited >= s.triton_start_timeout_s:
                    return _with_errors(f"tritonserver not ready after {waited:.0f} s", triton)
                if started + waited >= next_note:
                    log.info("Triton still starting after %.0f s (log: %s)", waited, s.triton_log)
                    next_note += PROGRESS_S
                await asyncio.sleep(START_POLL_S)
        finally:
            if not ready:  # failed, timed out or cancelled: never leave a half-started server behind
                triton.kill()


def _with_errors(what: str, triton: TritonProcess) -> str:
    errors = triton.errors()
    return f"{what}; its log says: {errors}" if errors else what
