"""A hung Python-backend stub of the local Triton (service/triton/hang.py), with real processes.

Before: a stub stopped with SIGSTOP kept its model "ready", the calls routed to it waited for their deadline,
and health stayed SERVING. The faults are injected into the test's own copy of the model code (model.py):
while a fault file names a tritonserver's pid, that server's stubs hang (sleep, no CPU) or spin (a long
batch at work, CPU) in execute(); the replacement server has another pid and runs normally.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import cosine, health_status, wait_for
from tests.service.test_supervision import (
    NOT_SERVING,
    SERVING,
    copy_repository,
    local_facade,
    metric,
    python_stubs_of,
    tritonserver,
)

HANG_S = 4  # the tests' triton_hang_s; the default is 30


@pytest.fixture
def repo(model_repository: Path, tmp_path: Path) -> Path:
    return copy_repository(model_repository, tmp_path / "model_repository")


FAULT = '''

def _fault():
    """Test fault (tests/service/test_hung_stub.py): 'hang|spin <server pid> <seconds>' in the fault file."""
    import os
    import time

    try:
        with open(os.environ["QWEN3_TEST_FAULT_FILE"]) as f:
            mode, server, seconds = f.read().split()
    except (KeyError, OSError, ValueError):
        return
    if int(server) != os.getppid():
        return
    if mode == "hang":
        time.sleep(float(seconds))
    end = time.monotonic() + float(seconds)
    while mode == "spin" and time.monotonic() < end:
        pass
'''


def with_faults(repository: Path) -> Path:
    """The repository's model code with the fault hook at the start of execute(); returns the fault file."""
    code = repository / "qwen3_embedding" / "1" / "model.py"
    text = code.read_text()
    hook = "    def execute(self, requests):\n"
    assert text.count(hook) == 1
    code.write_text(text.replace(hook, hook + "        _fault()\n") + FAULT)
    return repository / "fault"


def embed_equals_reference(facade: Any, texts: list[str], reference: Any, timeout: float = 30) -> None:
    with grpc.insecure_channel(facade.target) as channel:
        stub = facade.stub(channel)
        got = [
            np.array(stub.Embed(pb.EmbedRequest(inputs=[t]), timeout=timeout).embeddings[0].values, dtype=np.float32)
            for t in texts  # one call per text: each instance gets its share
        ]
    for ours, ref in zip(got, reference.encode(texts), strict=True):
        assert cosine(ours, ref) >= 0.99999


def replaced_and_serving(facade: Any, repository: Path, server_pid: int, since: float) -> tuple[float, float]:
    """Waits for NOT_SERVING then SERVING again with another tritonserver; returns both times from `since`."""
    wait_for(lambda: health_status(facade.target) == NOT_SERVING, 60, "NOT_SERVING after the hang")
    unready_after = time.monotonic() - since
    assert health_status(facade.target, "liveness") == SERVING  # the pod is not restarted for this
    wait_for(lambda: health_status(facade.target) == SERVING, 240, "SERVING again")
    back_after = time.monotonic() - since
    assert tritonserver(repository).pid != server_pid
    assert metric(facade, "qwen3_embed_triton_restarts_total") == 1
    return unready_after, back_after


def test_sigstopped_stub_makes_health_false_and_triton_is_replaced(repo: Path, tmp_path: Path, reference: Any) -> None:
    with local_facade(repo, tmp_path, {"QWEN3_EMBED_TRITON_HANG_S": str(HANG_S)}) as facade:
        embed_equals_reference(facade, ["before the stop"], reference)
        server = tritonserver(repo)
        stubs = python_stubs_of(repo, "qwen3_embedding")
        assert stubs, "no Python-backend stub"
        stopped_at = time.monotonic()
        stubs[0].send_signal(signal.SIGSTOP)
        unready_after, back_after = replaced_and_serving(facade, repo, server.pid, stopped_at)
        assert len(python_stubs_of(repo, "qwen3_embedding")) == len(stubs)
        embed_equals_reference(facade, [f"after the stopped stub {i}" for i in range(8)], reference)
        assert "Triton's model is hung (qwen3_embedding (pid" in facade.log()
    print(
        f"\nSIGSTOPped stub (hang_s {HANG_S}): NOT_SERVING after {unready_after:.1f} s, "
        f"SERVING after {back_after:.1f} s"
    )


def test_stub_stuck_without_cpu_is_found_by_the_probe_and_triton_is_replaced(
    repo: Path, tmp_path: Path, reference: Any
) -> None:
    """Every stub of the model blocks in its next execute(), as a deadlock would: the process state says
    nothing (sleeping, as an idle stub), so only the liveness probe, which never completes, finds it."""
    fault = with_faults(repo)
    env = {"QWEN3_EMBED_TRITON_HANG_S": str(HANG_S), "QWEN3_TEST_FAULT_FILE": str(fault)}
    with local_facade(repo, tmp_path, env) as facade:
        embed_equals_reference(facade, ["before the hang"], reference)
        server = tritonserver(repo)
        stuck_at = time.monotonic()
        fault.write_text(f"hang {server.pid} 3600")  # no request sent: the idle model's probe is the work
        unready_after, back_after = replaced_and_serving(facade, repo, server.pid, stuck_at)
        embed_equals_reference(facade, [f"after the stuck stub {i}" for i in range(8)], reference)
        log = facade.log()
        assert "Triton's model is hung (qwen3_embedding (no progress for" in log, log[-3000:]
    # Bound: the probe is sent within hang_s / 3 (+ a poll) of the last progress, judged hang_s later.
    print(f"\nstub stuck (hang_s {HANG_S}): NOT_SERVING after {unready_after:.1f} s, SERVING after {back_after:.1f} s")


def test_busy_model_is_not_restarted(repo: Path, tmp_path: Path, reference: Any) -> None:
    """A batch that runs 4 x hang_s with no execution completing, as a long batch on a CPU does: its stubs
    use CPU, so it is progress; the probe queued meanwhile is never judged. Nothing restarts."""
    fault = with_faults(repo)
    env = {"QWEN3_EMBED_TRITON_HANG_S": str(HANG_S), "QWEN3_TEST_FAULT_FILE": str(fault)}
    with local_facade(repo, tmp_path, env) as facade:
        embed_equals_reference(facade, ["before the long batch"], reference)
        server = tritonserver(repo)
        states: list[int | None] = []
        done = threading.Event()

        def watch_health() -> None:
            while not done.is_set():
                states.append(health_status(facade.target))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch_health, daemon=True)
        watcher.start()
        fault.write_text(f"spin {server.pid} {4 * HANG_S}")
        started = time.monotonic()
        try:
            embed_equals_reference(facade, ["during the long batch"], reference, timeout=120)
        finally:
            took = time.monotonic() - started
            fault.unlink()
            done.set()
            watcher.join()
        assert took >= 4 * HANG_S  # it did run that long
        time.sleep(2 * HANG_S)  # and nothing happens afterwards either
        embed_equals_reference(facade, ["after the long batch"], reference)
        # None: a health check that took over 2 s on this loaded machine; never NOT_SERVING.
        assert NOT_SERVING not in states and SERVING in states, states
        assert tritonserver(repo).pid == server.pid
        assert metric(facade, "qwen3_embed_triton_restarts_total") == 0
        assert "hung" not in facade.log()
    serving = f"{states.count(SERVING)}/{len(states)}"
    print(f"\nbusy model (hang_s {HANG_S}): one call ran {took:.1f} s, health SERVING {serving}")
