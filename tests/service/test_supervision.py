"""Supervision of the local Triton (`qwen3-embed serve` without --triton-url), with real processes.

Each test serves its own hard-linked copy of the dev export, so the tritonservers (and Python-backend
stubs) of a test are exactly the processes that mention its copy's path; other tests' Tritons never are.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2

from devtools.launch import FacadeProcess, launch_facade
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import SHM_DIR, free_port
from tests.helpers import ROOT, cosine, health_status, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Files a test may rewrite: copied, so that the session's export (hard-linked otherwise) stays intact.
OWN_COPY = {"config.pbtxt", "model.py"}


def copy_repository(source: Path, target: Path) -> Path:
    def link_or_copy(src: str, dst: str) -> None:
        if Path(src).name in OWN_COPY:
            shutil.copy2(src, dst)
        else:
            os.link(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)
    return target


@pytest.fixture
def repo(model_repository: Path, tmp_path: Path) -> Path:
    return copy_repository(model_repository, tmp_path / "model_repository")


def triton_processes(repository: Path) -> list[psutil.Process]:
    """Live tritonservers (and their stubs) serving `repository`; zombies already gone count as gone."""
    path = str(repository.resolve())
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        is_server = f"--model-repository={path}" in cmdline  # the facade passes it as two arguments
        is_stub = bool(cmdline) and "triton_python_backend_stub" in cmdline[0] and path in " ".join(cmdline)
        if is_server or is_stub:
            found.append(proc)
    return found


def tritonserver(repository: Path) -> psutil.Process:
    servers = [p for p in triton_processes(repository) if p.name() == "tritonserver"]
    assert len(servers) == 1, servers
    return servers[0]


def shm_prefix(server: psutil.Process) -> str:
    match = re.search(r"shm-region-prefix-name=(\S+)", " ".join(server.cmdline()))
    assert match, server.cmdline()
    return match.group(1)


def assert_nothing_left(repository: Path, prefixes: list[str], timeout: float = 30) -> float:
    """Waits until no tritonserver or stub of `repository` runs; returns how long that took."""
    start = time.monotonic()
    wait_for(lambda: not triton_processes(repository), timeout, f"no tritonserver left for {repository}")
    took = time.monotonic() - start
    leaked = [f.name for prefix in prefixes for f in SHM_DIR.glob(f"{prefix}*")]
    assert not leaked, f"shared memory left in {SHM_DIR}: {leaked}"
    return took


@contextmanager
def local_facade(
    repository: Path, log_dir: Path, env: dict[str, str] | None = None, wait: bool = True
) -> Iterator[FacadeProcess]:
    """A facade that starts its own Triton (`--triton-url ''`). Whatever happens, nothing is left behind."""
    full_env = {"QWEN3_EMBED_TRITON_LOG": str(log_dir / "triton.log"), "QWEN3_EMBED_DRAIN_SECONDS": "1"}
    try:
        with launch_facade(repository, "", log_dir, env={**full_env, **(env or {})}, wait=wait) as facade:
            yield facade
    finally:
        for proc in triton_processes(repository):  # only reached when a test already failed
            proc.kill()


def embed_ok(facade: FacadeProcess) -> None:
    with grpc.insecure_channel(facade.target) as channel:
        response = facade.stub(channel).Embed(pb.EmbedRequest(inputs=["How are you today?"]), timeout=30)
    assert len(response.embeddings) == 1


def metric(facade: FacadeProcess, name: str) -> float:
    with urllib.request.urlopen(f"{facade.base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def wait_exit(facade: FacadeProcess, timeout: float) -> int:
    try:
        return facade.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the facade did not exit in {timeout:.0f} s:\n{facade.log()[-3000:]}") from None


def assert_one_clear_message(log: str, message: str) -> None:
    assert log.count(message) == 1, log
    assert "Traceback" not in log, log


def test_sigkilled_triton_is_restarted_then_repeated_failures_end_the_facade(repo: Path, tmp_path: Path) -> None:
    env = {"QWEN3_EMBED_TRITON_MAX_RESTARTS": "2", "QWEN3_EMBED_TRITON_RESTART_BACKOFF_S": "0.2"}
    with local_facade(repo, tmp_path, env) as facade:
        embed_ok(facade)
        first = tritonserver(repo)
        prefixes = [shm_prefix(first)]
        killed_at = time.monotonic()
        first.send_signal(signal.SIGKILL)  # the server alone, as a crash would; its stubs notice and exit
        wait_for(lambda: health_status(facade.target) == NOT_SERVING, 10, "NOT_SERVING after the kill")
        assert health_status(facade.target, "liveness") == SERVING  # the pod is not restarted for this
        wait_for(lambda: health_status(facade.target) == SERVING, 60, "SERVING again")
        back_after = time.monotonic() - killed_at
        embed_ok(facade)
        second = tritonserver(repo)
        assert second.pid != first.pid
        assert psutil.Process(second.ppid()).ppid() == facade.process.pid  # facade -> guardian -> server
        assert facade.process.poll() is None  # the facade itself never restarted
        assert metric(facade, "qwen3_embed_triton_restarts_total") == 1
        assert metric(facade, "qwen3_embed_triton_consecutive_failures") == 1  # until it stays up a minute
        assert not [f for f in SHM_DIR.glob(f"{prefixes[0]}*")], "the killed server's shared memory"
        print(f"\nSIGKILLed Triton: facade SERVING again after {back_after:.1f} s")

        # Now every restart fails: after the allowed restarts the facade exits, so the pod restarts.
        (repo / "qwen3_embedding" / "config.pbtxt").write_text("not a model config {")
        prefixes.append(shm_prefix(second))
        killed_at = time.monotonic()
        second.send_signal(signal.SIGKILL)
        code = wait_exit(facade, 60)
        exited_after = time.monotonic() - killed_at
        assert code == 4, facade.log()
        log = facade.log()
        assert_one_clear_message(log, "giving up, exiting so that the pod is restarted")
        assert "failed to read text proto" in log  # Triton's own reason, not just "it failed"
        print(f"config broken + SIGKILL: facade exited (code 4) after {exited_after:.1f} s")
        took = assert_nothing_left(repo, prefixes)
        print(f"no tritonserver left {took:.1f} s after the exit")


def python_stubs_of(repository: Path, model: str) -> list[psutil.Process]:
    return [
        p
        for p in triton_processes(repository)
        if "triton_python_backend_stub" in p.cmdline()[0] and f"/{model}/" in " ".join(p.cmdline())
    ]


def test_dead_python_backend_stub_makes_health_false_and_triton_is_replaced(
    repo: Path, tmp_path: Path, reference: Any
) -> None:
    """Triton does not replace a dead stub and still reports its model ready: before, the calls routed to
    it failed with INTERNAL (12 of 24 over 30 s) while health stayed SERVING."""
    texts = [f"after the stub came back {i}" for i in range(8)]
    with local_facade(repo, tmp_path) as facade:
        embed_ok(facade)
        server = tritonserver(repo)
        stubs = python_stubs_of(repo, "qwen3_embedding")
        assert len(stubs) >= 1, triton_processes(repo)
        killed_at = time.monotonic()
        stubs[0].send_signal(signal.SIGKILL)
        wait_for(lambda: health_status(facade.target) == NOT_SERVING, 60, "NOT_SERVING after a stub died")
        unready_after = time.monotonic() - killed_at
        assert health_status(facade.target, "liveness") == SERVING
        wait_for(lambda: health_status(facade.target) == SERVING, 240, "SERVING again")
        back_after = time.monotonic() - killed_at
        assert tritonserver(repo).pid != server.pid  # replaced, with every stub
        assert len(python_stubs_of(repo, "qwen3_embedding")) == len(stubs)
        codes: dict[str, int] = {}
        with grpc.insecure_channel(facade.target) as channel:
            stub = facade.stub(channel)
            got = []
            for text in texts:  # one call per text: each instance gets its share
                try:
                    response = stub.Embed(pb.EmbedRequest(inputs=[text]), timeout=30)
                    got.append(np.array(response.embeddings[0].values, dtype=np.float32))
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
        assert codes == {"OK": len(texts)}, codes
        for ours, ref in zip(got, reference.encode(texts), strict=True):
            assert cosine(ours, ref) >= 0.99999
        log = facade.log()
        assert "Python-backend stub died (qwen3_embedding" in log, log[-3000:]
        print(
            f"\nSIGKILLed stub: NOT_SERVING after {unready_after:.1f} s, SERVING again after {back_after:.1f} s, "
            f"then {codes}"
        )


def test_sigkilled_facade_leaves_no_triton(repo: Path, tmp_path: Path) -> None:
    with local_facade(repo, tmp_path) as facade:
        embed_ok(facade)
        prefix = shm_prefix(tritonserver(repo))
        facade.process.kill()
        facade.process.wait()
        took = assert_nothing_left(repo, [prefix])
    print(f"\nSIGKILLed facade: its tritonserver and stubs gone after {took:.1f} s")


def test_stop_during_start_up_leaves_no_triton(repo: Path, tmp_path: Path) -> None:
    with local_facade(repo, tmp_path, wait=False) as facade:
        wait_for(lambda: any(p.name() == "tritonserver" for p in triton_processes(repo)), 60, "Triton starting")
        facade.process.send_signal(signal.SIGTERM)
        assert wait_exit(facade, 30) == 0, facade.log()
        assert_nothing_left(repo, [], timeout=5)
        assert "stop requested during start-up" in facade.log()


def test_triton_failing_at_every_start_ends_start_up(repo: Path, tmp_path: Path) -> None:
    """A fault only Triton sees (its model code): tried 1 + max_restarts times, then one clear message."""
    (repo / "qwen3_embedding" / "1" / "model.py").write_text("raise RuntimeError('broken model code')\n")
    env = {"QWEN3_EMBED_TRITON_MAX_RESTARTS": "1", "QWEN3_EMBED_TRITON_RESTART_BACKOFF_S": "0.2"}
    with local_facade(repo, tmp_path, env, wait=False) as facade:
        started = time.monotonic()
        assert wait_exit(facade, 120) == 4
        print(f"\nTriton failing at start: facade exited (code 4) after {time.monotonic() - started:.1f} s")
        log = facade.log()
        assert_one_clear_message(log, "giving up")
        assert "failed 2 times in a row" in log and "broken model code" in log, log
        assert_nothing_left(repo, [], timeout=5)


def _bad_tokenizer(repo: Path, tmp: Path) -> tuple[dict[str, str], str]:
    (tmp / "tok").mkdir()
    (tmp / "tok" / "tokenizer.json").write_text('{"model": "truncated')
    return {"QWEN3_EMBED_TOKENIZER_DIR": str(tmp / "tok")}, "cannot load the tokenizer from"


def _bad_config(repo: Path, tmp: Path) -> tuple[dict[str, str], str]:
    (repo / "qwen3_embedding" / "config.pbtxt").write_text('name: "qwen3_embedding"\nmax_batch_size: many\n')
    return {}, "config.pbtxt is not a valid Triton model config"


def _no_keys_file(repo: Path, tmp: Path) -> tuple[dict[str, str], str]:
    return {"QWEN3_EMBED_API_KEYS_FILE": str(tmp / "missing-keys")}, "cannot read the API keys file"


def _missing_export(repo: Path, tmp: Path) -> tuple[dict[str, str], str]:
    shutil.rmtree(repo / "qwen3_embedding")
    return {}, "export a model first"


@pytest.mark.parametrize("break_it", [_bad_tokenizer, _bad_config, _no_keys_file, _missing_export])
def test_misconfiguration_fails_start_up_with_one_message(repo: Path, tmp_path: Path, break_it: object) -> None:
    assert callable(break_it)
    env, message = break_it(repo, tmp_path)
    with local_facade(repo, tmp_path, env, wait=False) as facade:
        started = time.monotonic()
        assert wait_exit(facade, 60) == 2
        took = time.monotonic() - started
        assert_one_clear_message(facade.log(), message)
        assert "cannot serve: " in facade.log()
        assert not (tmp_path / "triton.log").exists()  # found before Triton was started
    print(f"\n{break_it.__name__}: exit code 2 after {took:.1f} s")  # type: ignore[attr-defined]


def test_http_port_in_use_fails_start_up_without_triton(repo: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [
            sys.executable, "-m", "service.cli", "serve", "--model-repository", str(repo),
            "--grpc-port", str(free_port()), "--http-port", str(port),
        ]  # fmt: skip
        env = {**os.environ, "QWEN3_EMBED_HOST": "127.0.0.1", "QWEN3_EMBED_TRITON_LOG": str(tmp_path / "t.log")}
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert_one_clear_message(result.stderr, f"cannot listen for HTTP on 127.0.0.1:{port}")
    assert not (tmp_path / "t.log").exists() and not triton_processes(repo)


def test_remote_triton_not_up_yet_is_waited_for(model_repository: Path, tmp_path: Path) -> None:
    with launch_facade(model_repository, f"127.0.0.1:{free_port()}", tmp_path, wait=False) as facade:
        wait_for(lambda: health_status(facade.target, "liveness") == SERVING, 60, "the facade to listen")
        time.sleep(3)  # several readiness polls against nothing
        assert facade.process.poll() is None
        assert health_status(facade.target) == NOT_SERVING
        assert "Traceback" not in facade.log()


def test_remote_triton_with_an_unusable_tokenizer_ends_the_facade(
    model_repository: Path, triton: object, tmp_path: Path
) -> None:
    env, message = _bad_tokenizer(model_repository, tmp_path)
    url = triton.grpc_url  # type: ignore[attr-defined]
    with launch_facade(model_repository, url, tmp_path, env=env, wait=False) as facade:
        assert wait_exit(facade, 60) == 2
        assert_one_clear_message(facade.log(), message)


def test_backoff_doubles_up_to_its_cap_and_the_limit_ends_it() -> None:
    from service.errors import TritonGaveUp
    from service.metrics import Metrics
    from service.settings import Settings
    from service.triton.supervisor import TritonSupervisor

    settings = Settings(triton_max_restarts=5, triton_restart_backoff_s=1, triton_restart_backoff_max_s=3)
    supervisor = TritonSupervisor(settings, Metrics())
    delays = []
    for _ in range(5):
        supervisor._failed("it died")
        delays.append(supervisor._backoff())
    assert delays == [0, 1, 2, 3, 3]  # a one-off crash is restarted at once
    with pytest.raises(TritonGaveUp, match=r"failed 6 times in a row .* last: it died"):
        supervisor._failed("it died")
    assert supervisor.metrics.triton_failures._value.get() == 6
