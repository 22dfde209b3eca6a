"""service/triton/hang.py: when a model of the local Triton counts as hung (pure bookkeeping, no processes)."""

from __future__ import annotations

from service.triton.hang import PROGRESS_CPU_S, STOPPED_GRACE_S, HangWatch

M = "qwen3_embedding"


def run(watch: HangWatch, until: float, executions: int = 0, cpu: float = 0.0, step: float = 1.0) -> list[str]:
    """Polls every `step` s up to `until` with constant counters; returns the first hung report (or [])."""
    now = 0.0
    while now <= until:
        watch.observe(now, {M: executions}, {M: cpu})
        watch.wants_probe(now)
        if hung := watch.hung_models(now):
            return [f"{now:.0f}", *hung]
        now += step
    return []


def test_an_idle_model_is_probed_and_hung_only_after_hang_s_without_progress() -> None:
    watch = HangWatch(hang_s=30)
    watch.observe(0, {M: 5}, {M: 1.0})
    assert watch.wants_probe(9) == []
    assert watch.wants_probe(10) == [M]  # idle a third of hang_s
    assert watch.wants_probe(11) == []  # one probe until the model progresses
    watch.observe(39, {M: 5}, {M: 1.0})
    assert watch.hung_models(39) == []
    assert watch.hung_models(40) and watch.hung_models(40)[0].startswith(M)


def test_any_completed_execution_or_a_probe_answer_is_progress() -> None:
    watch = HangWatch(hang_s=30)
    watch.observe(0, {M: 5}, {M: 0.0})
    assert watch.wants_probe(10) == [M]
    watch.observe(20, {M: 6}, {M: 0.0})  # the probe ran
    assert watch.hung_models(45) == []
    assert watch.wants_probe(29) == [] and watch.wants_probe(30) == [M]
    watch.answered(31, M)
    assert watch.hung_models(60) == []


def test_a_long_batch_that_uses_cpu_is_never_hung() -> None:
    """No execution completes for 10 x hang_s, but the stubs use CPU: busy, not hung."""
    watch = HangWatch(hang_s=30)
    now, cpu = 0.0, 0.0
    while now < 300:
        watch.observe(now, {M: 5}, {M: cpu})
        watch.wants_probe(now)
        assert watch.hung_models(now) == [], now
        now, cpu = now + 1, cpu + 0.9  # about one core
    watch.observe(now, {M: 5}, {M: cpu})
    assert watch.hung_models(now) == []


def test_cpu_below_the_threshold_is_not_progress_and_a_dead_stub_resets_the_baseline() -> None:
    assert run(HangWatch(hang_s=30), 100, cpu=0.0)[0] == "40"
    watch = HangWatch(hang_s=30)
    watch.observe(0, {M: 5}, {M: 10.0})
    watch.observe(1, {M: 5}, {M: 2.0})  # a stub died: its CPU time left the sum
    watch.observe(2, {M: 5}, {M: 2.0 + PROGRESS_CPU_S})
    assert watch.wants_probe(11) == []  # progress at 2 s (from the lower baseline), else due at 10
    assert watch.wants_probe(12) == [M]


def test_a_stopped_stub_is_hung_after_its_grace_and_forgiven_when_it_runs_again() -> None:
    watch = HangWatch(hang_s=30)
    assert watch.stopped_grace_s == STOPPED_GRACE_S < 30
    assert watch.stopped_stubs(0, {101: M}) == []
    assert watch.stopped_stubs(STOPPED_GRACE_S - 0.1, {101: M}) == []
    assert watch.stopped_stubs(STOPPED_GRACE_S, {101: M}) == [f"{M} (pid 101 stopped for {STOPPED_GRACE_S:.0f} s)"]
    assert watch.stopped_stubs(6, {}) == []  # SIGCONT: the count starts again
    assert watch.stopped_stubs(10, {101: M}) == []
    assert HangWatch(hang_s=3).stopped_grace_s == 3  # never longer than hang_s
