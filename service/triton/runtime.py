"""Runs a real Triton Inference Server from the `nvidia-pytriton` wheel (Python backend, CPU or GPU).

On GPU clusters the NGC container runs Triton instead and the facade gets --triton-url.

tritonserver never outlives the process that started it: stop() on the normal paths, an atexit hook
for any other interpreter exit, and for the paths no Python code sees (SIGKILL, OOM) a guardian: this
file run as a script, the parent of tritonserver, which the kernel signals when its own parent dies
(PR_SET_PDEATHSIG). Process tree: facade -> guardian (own session) -> tritonserver -> backend stubs.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class TritonStartError(RuntimeError):
    pass


def pytriton_root() -> Path:
    """Found, not imported: `import pytriton` loads its client API (gevent, zmq, tritonclient.http), none of
    which runs here; only the tritonserver it carries does (the GPU kit ships none of those packages)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:  # the serve extra brings it
        raise TritonStartError(
            "nvidia-pytriton is not installed (pip install 'qwen3-embedding-service[serve]'); "
            "or point the facade at a running Triton with --triton-url"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def prepare_backend_dir(cache_dir: Path) -> Path:
    """backends/python = libtriton_python.so + utils + the stub for this interpreter's version."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonStartError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    python_dir = cache_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        dst = python_dir / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return cache_dir


def triton_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = Path(pytriton_root()).parent.parent / "nvidia_pytriton.libs"
    lib_dirs = [str(sysconfig.get_config_var("LIBDIR")), str(libs)]
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(lib_dirs)
    # The stub runs `python` from PATH: it must be this environment's (numpy<2, onnxruntime).
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


# Where a local tritonserver listens: it has no auth or TLS, so never on a routable address by default.
LOOPBACK = "127.0.0.1"


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A port free now that this process has not handed out before: the kernel may give the same ephemeral
    port to two binds in a row once the first socket is closed (a test once drew its metrics port and the
    facade's HTTP port alike), and Triton's three ports are chosen this way one after another."""
    for _ in range(64):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError("no free port left that this process has not handed out already")


# The facade died: Triton's time to stop gracefully before the guardian kills its whole group.
GUARDIAN_GRACE_S = 20.0
PR_SET_PDEATHSIG = 1


def _guardian(facade_pid: int, shm_prefix: str, cmd: list[str]) -> None:
    """The guardian: runs tritonserver as its child, in its own process group (the facade signals that
    group), cleans up after it (processes, shared memory) and exits the way tritonserver did.

    Why a process and not PR_SET_PDEATHSIG on tritonserver itself: a tritonserver that dies mid-start
    (SIGTERM while loading) leaves Python-backend stubs that wait forever; the guardian outlives
    tritonserver to kill what it left, whatever ended it. SIGTERM from the facade reaches the whole
    group, so the guardian ignores it and waits for tritonserver; SIGKILL takes everyone at once.
    """
    import ctypes
    import resource

    server = 0
    orphaned = False

    def stop_server() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server, signal.SIGTERM)

    def facade_died(signum: int, frame: object) -> None:
        nonlocal orphaned
        orphaned = True
        if server:
            stop_server()
        signal.alarm(int(GUARDIAN_GRACE_S))

    def grace_over(signum: int, frame: object) -> None:
        os.killpg(0, signal.SIGKILL)

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, facade_died)
    signal.signal(signal.SIGALRM, grace_over)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
    if os.getppid() != facade_pid:  # it died before prctl
        sys.exit("the facade died before tritonserver started")
    defaults = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM)
    server = os.posix_spawn(cmd[0], cmd, dict(os.environ), setsigdef=defaults)
    if orphaned:  # the facade died while tritonserver was being spawned
        stop_server()
    _, status = os.waitpid(server, 0)  # retried after each handled signal (PEP 475)
    me, group = os.getpid(), os.getpgid(0)
    for entry in os.listdir("/proc"):  # what tritonserver left: stubs, reparented to init
        if entry.isdigit() and int(entry) != me:
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry)) == group:
                    os.kill(int(entry), signal.SIGKILL)
    for region in SHM_DIR.glob(f"{shm_prefix}*"):  # unlinked by tritonserver only when it stops cleanly
        region.unlink(missing_ok=True)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # die of the same signal, so the facade can say "killed by SIGKILL" (no core file)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(-code, signal.SIG_DFL)
        os.kill(me, -code)
    sys.exit(code)


class _Spawner:
    """Forks children from one daemon thread that lives as long as the process.

    The death signal fires when the *thread* that forked the child ends, not the process: a child
    forked from an asyncio.to_thread worker would be killed whenever that worker retires.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = queue.Queue()
        self._lock = threading.Lock()
        self._owner = 0  # pid that started the thread: a forked copy of this process has no thread

    def run(self, job: Callable[[], Any]) -> Any:
        with self._lock:
            if self._owner != os.getpid():
                self._owner = os.getpid()
                threading.Thread(target=self._loop, name="triton-spawner", daemon=True).start()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future.result()

    def _loop(self) -> None:
        while True:
            future, job = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)


_SPAWNER = _Spawner()
# tritonservers this process started and has not reaped: pid -> (process, its stubs' shared-memory prefix)
_LIVE: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
SHM_DIR = Path("/dev/shm")


@atexit.register
def _stop_leftovers() -> None:
    """Any interpreter exit (an exception at start-up, sys.exit in a library) stops Triton too."""
    for process, _ in list(_LIVE.values()):
        _end_group(process, timeout=10.0)


def _end_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group (guardian, tritonserver, stubs), SIGKILL after `timeout`."""
    try:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
    finally:
        _forget(process)


def _forget(process: subprocess.Popen[bytes]) -> None:
    """Right after the leader is reaped: stubs it left die with the group, and the shared memory a
    killed tritonserver could not unlink goes (each crash would leak about 1 MB per model instance
    into /dev/shm, which is small in containers, until restarts fail)."""
    if process.returncode is None:
        return
    _, shm_prefix = _LIVE.pop(process.pid, (None, ""))
    if not shm_prefix:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for region in SHM_DIR.glob(f"{shm_prefix}*"):
        region.unlink(missing_ok=True)


# Error lines tritonserver prints on every CPU-only start; not worth repeating in a failure message.
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "GPU metrics", "pinned memory")
_ERROR_LINE = re.compile(r"E\d{4} [^\]]*\] ")  # glog: E1127 10:22:08.934781 4852 file.cc:1460] message


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


@dataclass
class TritonProcess:
    """A tritonserver child process; stop() ends it and its stubs (own process group).

    `process` is the guardian (see _guardian), whose exit code is tritonserver's."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path
    log_offset: int = 0  # where this run's lines start in the (appended) log

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def is_ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with {self.process.returncode}; last log lines:\n{self.log_tail()}"
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise TritonStartError(f"tritonserver not ready after {timeout:.0f} s; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def errors(self, limit: int = 5) -> str:
        """This run's error lines, for a one-line failure message (the log tail is mostly a table)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        found = [
            ln.split("] ", 1)[-1].strip().strip('"') if _ERROR_LINE.match(ln) else ln.strip()
            for ln in lines
            if _ERROR_LINE.match(ln) or ln.startswith(("error:", "terminate called"))
        ]
        found = [ln for ln in found if not any(n in ln for n in _NOISE)]
        return "; ".join(found[-limit:])

    def poll(self) -> int | None:
        """The exit code once tritonserver has ended (and its group is gone), else None."""
        code = self.process.poll()
        if code is not None:
            _forget(self.process)
        return code

    def stop(self, timeout: float = 15.0) -> None:
        _end_group(self.process, timeout)

    def stub_models(self) -> list[str]:
        """The model of each live Python-backend stub of this run (none for other backends)."""
        return python_stubs(self.process.pid)

    def stub_processes(self) -> list[StubProcess]:
        """Every live Python-backend stub of this run, with its state and CPU time."""
        return stub_processes(self.process.pid)

    def executions(self) -> dict[str, int]:
        """Batches each loaded model has executed so far (Triton's statistics, all versions together); only
        completed executions count, so a hung instance adds nothing. Raises OSError or ValueError."""
        url = f"http://127.0.0.1:{self.http_port}/v2/models/stats"
        with urllib.request.urlopen(url, timeout=5) as resp:
            stats = json.load(resp)
        done: dict[str, int] = {}
        for entry in stats.get("model_stats", []):
            done[entry["name"]] = done.get(entry["name"], 0) + int(entry.get("execution_count", 0))
        return done

    def probe(self, model: str, timeout: float) -> None:
        """One tiny real inference (a row of PROBE_TOKENS tokens) over HTTP. Raises OSError on failure or
        timeout. HTTP, not gRPC: a client that gives up does not cancel the request inside Triton, so the
        probe stays queued behind whatever holds the model."""
        from service.contract import ATTENTION_MASK, INPUT_IDS  # not at the top: the guardian runs stdlib only

        ids = list(range(1, PROBE_TOKENS + 1))
        body = {
            "inputs": [
                {"name": INPUT_IDS, "shape": [1, PROBE_TOKENS], "datatype": "INT64", "data": ids},
                {"name": ATTENTION_MASK, "shape": [1, PROBE_TOKENS], "datatype": "INT64", "data": [1] * PROBE_TOKENS},
            ]
        }
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{model}/infer"
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        _forget(self.process)


STUB_NAME = b"triton_python_backend_stub"
# Tokens in a liveness probe's one row (service/triton/hang.py): any model takes a row this short.
PROBE_TOKENS = 8
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class StubProcess:
    pid: int
    model: str
    state: str  # /proc's one-letter state: R running, S sleeping, T stopped (SIGSTOP), t traced, D disk wait
    cpu_s: float  # user + system CPU time so far

    @property
    def stopped(self) -> bool:
        return self.state in ("T", "t")


def stub_processes(group: int) -> list[StubProcess]:
    """Every live Python-backend stub in process group `group` (one stub per model instance; tritonserver and
    its stubs share the guardian's group). Read from /proc: Linux, as Triton itself."""
    stubs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # The name field may hold spaces or parentheses: the fields after its closing ')' are fixed
        # (state, ppid, pgrp, ..., utime and stime 11 and 12 places after the state).
        fields = stat.rsplit(")", 1)[-1].split()
        state, pgrp = fields[0], fields[2]
        if int(pgrp) != group or state in ("Z", "X") or not argv[0].endswith(STUB_NAME) or len(argv) < 2:
            continue
        model = Path(argv[1].decode(errors="replace")).parent.parent.name  # <repo>/<model>/<ver>/model.py
        stubs.append(StubProcess(int(entry.name), model, state, (int(fields[11]) + int(fields[12])) * _TICK_S))
    return stubs


def python_stubs(group: int) -> list[str]:
    """The model of each live Python-backend stub in process group `group`."""
    return [stub.model for stub in stub_processes(group)]


def start_triton(
    model_repository: Path,
    log_path: Path,
    grpc_port: int = 0,
    http_port: int = 0,
    metrics_port: int = 0,
    cache_dir: Path | None = None,
    wait: bool = True,
    timeout: float = 180.0,
    address: str = LOOPBACK,
    extra_args: Sequence[str] = (),
) -> TritonProcess:
    """tritonserver listens on `address` only (all three ports): by default loopback, since it has no
    authentication or TLS of its own; the facade in front of it is the only way in. `extra_args` go last on
    its command line (e.g. --trace-config)."""
    root = pytriton_root()
    cache_dir = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen3-embed"
    backends = prepare_backend_dir(cache_dir / "triton-backends")
    grpc_port, http_port, metrics_port = (p or free_port() for p in (grpc_port, http_port, metrics_port))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shm_prefix = f"qwen3embed_{uuid.uuid4().hex[:12]}_"
    cmd = [
        str(root / "bin" / "tritonserver"),
        f"--model-repository={model_repository.resolve()}",
        f"--backend-directory={backends}",
        f"--grpc-address={address}",
        f"--grpc-port={grpc_port}",
        f"--http-address={address}",
        f"--http-port={http_port}",
        f"--metrics-address={address}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--log-verbose=0",
        "--exit-on-error=true",
        "--strict-readiness=true",
        # Our own prefix, so the regions of this run can be removed after a crash without touching others'.
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        *extra_args,
    ]
    env = triton_env()
    # The guardian needs only the standard library: -I -S keep its start fast and independent of the env.
    wrapped = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(os.getpid()), shm_prefix, *cmd]
    with open(log_path, "ab") as log:
        offset = log.tell()

        def spawn() -> subprocess.Popen[bytes]:
            # Own session: a terminal's Ctrl-C reaches the facade only, which then stops Triton in order.
            return subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        process: subprocess.Popen[bytes] = _SPAWNER.run(spawn)
    _LIVE[process.pid] = (process, shm_prefix)
    triton = TritonProcess(process, grpc_port, http_port, metrics_port, log_path, offset)
    if wait:
        triton.wait_ready(timeout)
    return triton


if __name__ == "__main__":
    _guardian(int(sys.argv[1]), sys.argv[2], sys.argv[3:])
