"""`qwen3-embed serve --workers N`: several facade processes on the same ports, sharing only Triton.

Real processes throughout: a 2-worker facade against the session Triton (parity and order under concurrent
gRPC and HTTP clients on fresh connections, which the kernel spreads over the workers, a burst of HTTP
connections included; metrics summed; no second facade on its ports), and a 2-worker facade that owns its
Triton (a SIGKILLed worker is replaced; SIGTERM with requests in flight on both workers drains them all and
leaves no process behind).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.launch import FacadeProcess, launch_facade
from service.api.grpc.server import WORKER_PID_KEY
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.process.cpus import cgroup_cpu_limit, resolve_workers, triton_shares_cpus, usable_cpus
from service.triton.runtime import free_port
from service.workers import HUNG_S, METRICS_DIR_PREFIX, remove_stale_metrics_dirs
from tests.helpers import ROOT, cosine, run_facade, vectors, wait_for
from tests.service.test_supervision import (
    assert_nothing_left,
    assert_one_clear_message,
    copy_repository,
    shm_prefix,
    tritonserver,
    wait_exit,
)

TEXTS = [
    "How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Triton serves the model; the facade speaks gRPC and HTTP. " * 6,
    "短い文",
    "def add(a, b):\n    return a + b",
    "A much longer passage about worker processes, ports and metrics that add up across processes. " * 12,
    "ok",
]


@dataclass
class Workers:
    facade: FacadeProcess
    metrics_port: int

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def worker_pids(self) -> set[int]:
        found = set()
        for child in psutil.Process(self.facade.process.pid).children():
            try:
                if "service.workers" in " ".join(child.cmdline()):
                    found.add(child.pid)
            except psutil.Error:  # gone, or a zombie not reaped yet
                pass
        return found


def fresh_channel(target: str) -> grpc.Channel:
    """A channel with a connection of its own (channels of a process share connections by default)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def embed_requests(text: str) -> float:
    return metric(text, "qwen3_embed_requests_total", api="grpc", method="Embed", code="OK") + metric(
        text, "qwen3_embed_requests_total", api="http", method="/v1/embeddings", code="200"
    )


def workers_env(count: int, metrics_port: int, **extra: str) -> dict[str, str]:
    return {
        "QWEN3_EMBED_WORKERS": str(count),
        "QWEN3_EMBED_METRICS_PORT": str(metrics_port),
        "QWEN3_EMBED_HEALTH_POLL_S": "0.5",
        **extra,
    }


def wait_serving(workers: Workers, count: int, timeout: float = 60) -> None:
    def serving() -> bool:
        try:
            text = scrape(workers.ops_url)
        except OSError:
            return False
        return metric(text, "qwen3_embed_worker_processes") == count and len(workers.worker_pids()) == count

    wait_for(serving, timeout, f"{count} workers serving")


@pytest.fixture(scope="module")
def workers(model_repository: Path, triton: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    port = free_port()
    logs = tmp_path_factory.mktemp("workers")
    with run_facade(model_repository, triton.grpc_url, logs, env=workers_env(2, port)) as facade:  # type: ignore[attr-defined]
        running = Workers(facade, port)
        wait_serving(running, 2)
        yield running


@pytest.fixture(scope="module")
def model_name(workers: Workers) -> str:
    return str(httpx.get(f"{workers.facade.base_url}/v1/models").json()["data"][0]["id"])


def check(got: np.ndarray, inputs: list[str], expected: dict[str, np.ndarray]) -> None:
    assert got.shape[0] == len(inputs)
    for row, text in zip(got, inputs, strict=True):
        assert cosine(row, expected[text]) >= 0.99999, text


def test_parity_order_and_summed_metrics_across_workers(workers: Workers, reference: object, model_name: str) -> None:
    expected = dict(zip(TEXTS, reference.encode(TEXTS), strict=True))  # type: ignore[attr-defined]
    before = scrape(workers.ops_url)
    pids: list[int] = []
    lock = threading.Lock()
    calls = 3

    def grpc_client(i: int) -> int:
        inputs = [TEXTS[(i + k) % len(TEXTS)] for k in range(1 + i % len(TEXTS))]
        with fresh_channel(workers.facade.target) as channel:
            stub = workers.facade.stub(channel)
            for _ in range(calls):
                response, call = stub.Embed.with_call(pb.EmbedRequest(inputs=inputs), timeout=60)
                check(vectors(response), inputs, expected)
                with lock:
                    pids.append(int(dict(call.trailing_metadata())[WORKER_PID_KEY]))
        return calls

    def http_client(i: int) -> int:
        inputs = [TEXTS[(len(TEXTS) - 1 - i - k) % len(TEXTS)] for k in range(1 + i % 5)]
        for _ in range(calls):
            with httpx.Client(base_url=workers.facade.base_url, timeout=60) as client:  # a new connection
                resp = client.post("/v1/embeddings", json={"model": model_name, "input": inputs})
            assert resp.status_code == 200, resp.text
            data = resp.json()["data"]
            assert [d["index"] for d in data] == list(range(len(inputs)))
            check(np.array([d["embedding"] for d in data], dtype=np.float32), inputs, expected)
            with lock:
                pids.append(int(resp.headers["x-worker-pid"]))
        return calls

    grpc_clients, http_clients = 16, 8
    with ThreadPoolExecutor(grpc_clients + http_clients) as pool:
        futures = [pool.submit(grpc_client, i) for i in range(grpc_clients)]
        futures += [pool.submit(http_client, i) for i in range(http_clients)]
        sent = sum(f.result() for f in futures)

    served_by = set(pids)
    assert served_by <= workers.worker_pids()
    assert len(served_by) == 2, f"one worker served everything: {served_by}"
    after_ops = scrape(workers.ops_url)
    after_api = httpx.get(f"{workers.facade.base_url}/metrics").text  # any worker: the same sums
    assert embed_requests(after_ops) - embed_requests(before) == sent == (grpc_clients + http_clients) * calls
    assert embed_requests(after_api) == embed_requests(after_ops)
    assert metric(after_ops, "qwen3_embed_worker_processes") == 2
    assert metric(after_ops, "qwen3_embed_triton_up") == 1
    assert metric(after_ops, "qwen3_embed_in_flight_requests") == 0
    with urllib.request.urlopen(f"{workers.ops_url}/health/ready", timeout=5) as resp:
        assert resp.status == 200
    share = {pid: pids.count(pid) for pid in served_by}
    print(f"\n{sent} requests on fresh connections, per worker pid: {share}")


def serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "service.cli", "serve", "--triton-url", "127.0.0.1:1", *args]
    full_env = {**os.environ, "QWEN3_EMBED_HOST": "127.0.0.1", **env}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60)


def test_a_burst_of_http_connections_is_spread_over_the_workers(workers: Workers) -> None:
    """16 connections opened at once, then one request on each. With one listening socket that every worker
    accepted from, the first worker to wake took the whole burst (2 of 3 tries here); with a listener per
    worker (SO_REUSEPORT) the kernel hashes each connection to one: a worker with fewer than 2 of 16 would
    happen by chance once in 2,000 runs."""
    url = httpx.URL(workers.facade.base_url)
    socks = [socket.create_connection((url.host, url.port), timeout=10) for _ in range(16)]
    pids = []
    try:
        for sock in socks:
            sock.sendall(f"GET /v1/models HTTP/1.1\r\nhost: {url.host}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                assert chunk, "connection closed before a response"
                head += chunk
            headers = dict(line.split(": ", 1) for line in head.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:])
            pids.append(int(headers["x-worker-pid"]))
    finally:
        for sock in socks:
            sock.close()
    share = {pid: pids.count(pid) for pid in set(pids)}
    print(f"16 HTTP connections opened together, per worker pid: {share}")
    assert set(share) == workers.worker_pids()
    assert min(share.values()) >= 2


@pytest.mark.parametrize("second", [1, 2])
def test_a_second_facade_cannot_share_the_ports(workers: Workers, facade: FacadeProcess, second: int) -> None:
    """Single- and multi-worker facades alike fail (exit 2, one message) on a port a multi-worker facade
    holds, and a multi-worker facade fails on the ports of a single-worker one."""
    env = {"QWEN3_EMBED_WORKERS": str(second)}
    for running in (workers.facade, facade):
        if second == 1 and running is facade:
            continue  # two lone facades: tests/service/test_security.py
        grpc_port = str(running.grpc_port)
        result = serve(env, "--grpc-port", grpc_port, "--http-port", str(free_port()))
        assert result.returncode == 2, result.stderr
        assert_one_clear_message(result.stderr, f"cannot listen for gRPC on 127.0.0.1:{grpc_port}")
        http_port = str(running.http_port)
        result = serve(env, "--grpc-port", str(free_port()), "--http-port", http_port)
        assert result.returncode == 2, result.stderr
        assert_one_clear_message(result.stderr, f"cannot listen for HTTP on 127.0.0.1:{http_port}")
    assert workers.facade.process.poll() is None and len(workers.worker_pids()) == 2


def test_a_hung_worker_is_killed_and_replaced(workers: Workers, model_name: str, reference: object) -> None:
    """A worker whose event loop stops (SIGSTOP here) kept its share of new connections, unanswered, while
    readiness stayed 200 (the other worker's gauge): now the parent kills it after HUNG_S without a
    heartbeat, and replaces it."""
    before = workers.worker_pids()
    hung = min(before)
    os.kill(hung, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        # While it hangs (what used to last for good), as a figure: fresh connections and readiness.
        during: dict[str, int] = {}
        for i in range(6):
            with fresh_channel(workers.facade.target) as channel:
                try:
                    workers.facade.stub(channel).Embed(pb.EmbedRequest(inputs=[f"hung {i}"]), timeout=1.5)
                    during["OK"] = during.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    during[exc.code().name] = during.get(exc.code().name, 0) + 1
        with urllib.request.urlopen(f"{workers.ops_url}/health/ready", timeout=5) as resp:
            ready_during = resp.status
        wait_for(lambda: hung not in workers.worker_pids(), HUNG_S + 30, "the hung worker killed")
        killed_after = time.monotonic() - stopped
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    wait_serving(workers, 2, timeout=120)
    assert len(workers.worker_pids() - before) == 1  # the hung one replaced, the other untouched
    texts = [f"after the hung worker {i}" for i in range(8)]
    expected = dict(zip(texts, reference.encode(texts), strict=True))  # type: ignore[attr-defined]
    for text in texts:  # fresh connections: the kernel spreads them over both workers
        with fresh_channel(workers.facade.target) as channel:
            response = workers.facade.stub(channel).Embed(pb.EmbedRequest(inputs=[text]), timeout=20)
        check(vectors(response), [text], expected)
    with urllib.request.urlopen(f"{workers.ops_url}/health/ready", timeout=5) as resp:
        assert resp.status == 200
    assert "has not answered for" in workers.facade.log()
    print(
        f"\nSIGSTOPped worker: while hung 6 fresh calls {during}, /health/ready {ready_during}; killed "
        f"{killed_after:.1f} s after the stop (HUNG_S {HUNG_S:.0f} s), replaced; then 8/8 calls OK"
    )


def test_worker_count_follows_affinity_and_the_cgroup_quota(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert resolve_workers(3, tmp_path) == 3
    assert cgroup_cpu_limit(tmp_path) is None and usable_cpus(tmp_path) == cpus
    assert resolve_workers(0, tmp_path) == min(8, cpus)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == cpus
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5 and usable_cpus(tmp_path) == 1 and resolve_workers(0, tmp_path) == 1
    # Triton on the same CPUs: half of them on a bare host, all of a container's quota.
    assert resolve_workers(0, tmp_path, triton_local=True) == 1
    (tmp_path / "cpu.max").unlink()
    assert resolve_workers(0, tmp_path, triton_local=True) == max(1, min(8, cpus // 2))
    assert resolve_workers(2, tmp_path, triton_local=True) == 2
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    assert usable_cpus(v1) == 1  # half a CPU still gets one worker


def test_triton_on_this_host_is_told_from_its_url() -> None:
    for url in ("", "localhost:8001", "127.0.0.1:8001", "[::1]:8001", "grpc://127.0.0.2:9000"):
        assert triton_shares_cpus(url), url
    for url in ("triton:8001", "10.0.0.5:8001", "triton.svc.cluster.local:8001"):
        assert not triton_shares_cpus(url), url


def test_metrics_dirs_of_dead_parents_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dirs = {
        name: tmp_path / f"{METRICS_DIR_PREFIX}{pid}-abc"
        for name, pid in (("dead", dead.stdout.strip()), ("self", os.getpid()), ("alive", os.getppid()))
    }
    other = tmp_path / "qwen3-embed-metrics-notapid-x"
    for path in (*dirs.values(), other):
        path.mkdir()
    remove_stale_metrics_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([dirs["alive"].name, other.name])


# ------------------------------------------------------------------------------- a facade owning Triton

LONG = ["a fairly long sentence about draining worker processes under load " * 7] * 16


def channel_per_worker(workers: Workers, per_worker: int) -> dict[int, list[grpc.Channel]]:
    """Fresh channels, grouped by the worker their connection reached, until each has `per_worker`."""
    by_pid: dict[int, list[grpc.Channel]] = {}
    spare: list[grpc.Channel] = []
    for _ in range(64):
        channel = fresh_channel(workers.facade.target)
        _, call = workers.facade.stub(channel).Embed.with_call(pb.EmbedRequest(inputs=["hi"]), timeout=30)
        pid = int(dict(call.trailing_metadata())[WORKER_PID_KEY])
        (by_pid.setdefault(pid, []) if len(by_pid.get(pid, [])) < per_worker else spare).append(channel)
        if len(by_pid) == 2 and all(len(c) >= per_worker for c in by_pid.values()):
            break
    for channel in spare:
        channel.close()
    assert len(by_pid) == 2, "64 connections all reached one worker"
    return by_pid


def test_local_triton_workers_restart_and_drain(model_repository: Path, reference: object, tmp_path: Path) -> None:
    repo = copy_repository(model_repository, tmp_path / "model_repository")
    port = free_port()
    # The drain bound is several times the four calls' work (5-6 s on a quiet 2-core host; 8 s was too close: a call
    # still running at the bound is cut, "UNAVAILABLE: Cancelling all calls", as a 0.5 s bound shows). A call that had
    # completed could also lose its response when the server closed its connections at once after its calls were
    # done ("Stream removed ... Connection reset by peer"): RunningService._drain_grpc.
    env = workers_env(2, port, QWEN3_EMBED_TRITON_LOG=str(tmp_path / "triton.log"), QWEN3_EMBED_DRAIN_SECONDS="30")
    long_vector = reference.encode(LONG[:1])[0]  # type: ignore[attr-defined]
    with launch_facade(repo, "", tmp_path, env=env, timeout=120) as facade:
        workers = Workers(facade, port)
        wait_serving(workers, 2)
        prefix = shm_prefix(tritonserver(repo))
        assert tritonserver(repo).ppid() not in workers.worker_pids()  # the parent owns Triton (via its guardian)

        # A worker SIGKILLed: another takes its place; the service and the counters go on.
        victim = min(workers.worker_pids())
        before = embed_requests(scrape(workers.ops_url))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in workers.worker_pids(), 10, "the killed worker reaped")
        wait_serving(workers, 2)
        text = scrape(workers.ops_url)
        assert metric(text, "qwen3_embed_worker_restarts_total") == 1
        assert embed_requests(text) >= before  # the dead worker's counts stay in the sums
        assert facade.process.poll() is None

        # SIGTERM with requests in flight on both workers: every one of them completes with its vectors.
        channels = channel_per_worker(workers, 2)
        results: list[tuple[int, object]] = []
        lock = threading.Lock()

        # 1,024 inputs each (about 90k tokens): with the tiny dev model a smaller request can end before all
        # four are in flight at once, and the gauge never shows them together.
        def slow_call(channel: grpc.Channel) -> None:
            try:
                response, call = workers.facade.stub(channel).Embed.with_call(
                    pb.EmbedRequest(inputs=LONG * 64), timeout=60
                )
                outcome: object = (vectors(response), int(dict(call.trailing_metadata())[WORKER_PID_KEY]))
            except grpc.RpcError as exc:
                outcome = f"{exc.code().name}: {exc.details()}"  # a string: the tuple is the success shape
            with lock:
                results.append((0, outcome))

        threads = [threading.Thread(target=slow_call, args=(c,)) for cs in channels.values() for c in cs]
        for thread in threads:
            thread.start()
        in_flight = 0.0

        def busy() -> bool:
            nonlocal in_flight
            in_flight = metric(scrape(workers.ops_url), "qwen3_embed_in_flight_requests")
            return in_flight >= len(threads)

        try:
            wait_for(busy, 30, "requests in flight", interval=0.02)
        except AssertionError:  # say what was seen: the gauge's last sum, and the calls that had ended
            with lock:
                ended = list(results)
            outcomes = [o[1] if isinstance(o, tuple) else o for _, o in ended]  # a worker's pid, or a status code
            raise AssertionError(
                f"{in_flight} of {len(threads)} in flight; ended: {outcomes}\n{facade.log()[-3000:]}"
            ) from None
        pids = workers.worker_pids()
        facade.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for thread in threads:
            thread.join(60)
        code = wait_exit(facade, 60)
        took = time.monotonic() - signalled
        assert code == 0, facade.log()[-3000:]
        ok = [outcome for _, outcome in results if isinstance(outcome, tuple)]
        failed = [outcome for _, outcome in results if not isinstance(outcome, tuple)]
        assert len(ok) >= in_flight and not failed, (in_flight, failed)
        assert {pid for _, pid in ok} == pids  # both workers drained their own
        for got, _ in ok:
            check(got, LONG * 64, {LONG[0]: long_vector})
        wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids),
                 10, "every worker gone")  # fmt: skip
        assert_nothing_left(repo, [prefix])
        log = facade.log()
        assert "Traceback" not in log, log[-3000:]
        for channel in (c for cs in channels.values() for c in cs):
            channel.close()
    print(f"\nSIGTERM with {in_flight:.0f} requests in flight on 2 workers: all OK, exit 0 after {took:.1f} s")
