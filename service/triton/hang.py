"""Is a model of the local Triton hung? Pure bookkeeping, fed by the supervisor (service/triton/supervisor.py).

A stub that is alive but stuck keeps its model "ready" in Triton while the calls routed to it wait for
their deadline. One slow call proves nothing (a long batch can take many seconds on a CPU, and Triton's
dynamic batcher queues anything else behind it), so a model is judged on progress, never on latency:

- progress = Triton completed an execution of the model (its statistics' execution_count grew), or the
  model's stub processes used PROGRESS_CPU_S of CPU (a long batch at work) since the last progress;
- a model without progress for hang_s / 3 gets one tiny probe inference (a model that is busy, or that
  serves traffic, never does: it progresses), so that work is known to be waiting;
- no progress at all for hang_s after that probe was sent: hung.

Separately, a stub stopped (SIGSTOP, a debugger: /proc state T or t) for STOPPED_GRACE_S (hang_s if
shorter) is hung whatever its model does: with several instances the others keep the model progressing,
while the calls Triton routes to the stopped one fail at once ("Stub process ... is not healthy": INTERNAL
for half of the calls, measured), as a dead stub's do; hence a short grace, not hang_s. A debugger that
only samples (py-spy dump) stops it for well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# CPU time of a model's stubs that counts as progress: a working stub uses this in a fraction of a second;
# an idle one (its health thread wakes every 300 ms for microseconds) takes many minutes to.
PROGRESS_CPU_S = 0.1
STOPPED_GRACE_S = 5.0


@dataclass
class _Model:
    executions: int
    cpu_s: float
    progress_at: float
    probe_sent_at: float | None = None


@dataclass
class HangWatch:
    """One per Triton run: observe() on each poll, then probe what wants_probe() names and ask hung()."""

    hang_s: float
    models: dict[str, _Model] = field(default_factory=dict)
    stopped_since: dict[int, float] = field(default_factory=dict)  # stub pid -> first seen stopped

    @property
    def probe_after_s(self) -> float:
        return self.hang_s / 3

    @property
    def stopped_grace_s(self) -> float:
        return min(self.hang_s, STOPPED_GRACE_S)

    def observe(self, now: float, executions: dict[str, int], cpu_s: dict[str, float]) -> None:
        """Triton's execution counts per model and the CPU time of each model's stubs, as of `now`."""
        for name, count in executions.items():
            cpu = cpu_s.get(name, 0.0)
            model = self.models.get(name)
            if model is None:
                self.models[name] = _Model(count, cpu, now)
                continue
            if count != model.executions or cpu - model.cpu_s >= PROGRESS_CPU_S:
                model.progress_at, model.probe_sent_at, model.cpu_s = now, None, cpu
            model.cpu_s = min(model.cpu_s, cpu)  # a stub that died took its CPU time with it
            model.executions = count

    def answered(self, now: float, name: str) -> None:
        """A probe of `name` got the model's answer: progress."""
        model = self.models.get(name)
        if model is not None:
            model.progress_at, model.probe_sent_at = now, None

    def wants_probe(self, now: float) -> list[str]:
        """Models idle for probe_after_s with no probe sent since their last progress; marked as probed."""
        due = []
        for name, model in self.models.items():
            if model.probe_sent_at is None and now - model.progress_at >= self.probe_after_s:
                model.probe_sent_at = now
                due.append(name)
        return due

    def hung_models(self, now: float) -> list[str]:
        """Models whose probe has waited hang_s without any progress of theirs."""
        return [
            f"{name} (no progress for {now - m.progress_at:.0f} s, a probe waiting {now - m.probe_sent_at:.0f} s)"
            for name, m in sorted(self.models.items())
            if m.probe_sent_at is not None and now - m.probe_sent_at >= self.hang_s
        ]

    def stopped_stubs(self, now: float, stopped: dict[int, str]) -> list[str]:
        """`stopped`: pid -> model of each stub stopped now. Returns those stopped for stopped_grace_s."""
        self.stopped_since = {pid: self.stopped_since.get(pid, now) for pid in stopped}
        return [
            f"{stopped[pid]} (pid {pid} stopped for {now - since:.0f} s)"
            for pid, since in sorted(self.stopped_since.items())
            if now - since >= self.stopped_grace_s
        ]
