"""Runs a real Triton Inference Server from the `nvidia-pytriton` wheel (Python backend, CPU or GPU).

On GPU clusters the NGC container runs Triton instead and the facade gets --triton-url.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class TritonStartError(RuntimeError):
    pass


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # the serve extra brings it
        raise TritonStartError(
            "nvidia-pytriton is not installed (pip install 'qwen3-embedding-service[serve]'); "
            "or point the facade at a running Triton with --triton-url"
        ) from exc
    return Path(pytriton.__file__).parent / "tritonserver"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TritonProcess:
    """A tritonserver child process; stop() ends it and its stubs (own process group)."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    log_path: Path

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

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def start_triton(
    model_repository: Path,
    log_path: Path,
    grpc_port: int = 0,
    http_port: int = 0,
    metrics_port: int = 0,
    cache_dir: Path | None = None,
    wait: bool = True,
    timeout: float = 180.0,
) -> TritonProcess:
    root = pytriton_root()
    cache_dir = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwen3-embed"
    backends = prepare_backend_dir(cache_dir / "triton-backends")
    grpc_port, http_port, metrics_port = (p or free_port() for p in (grpc_port, http_port, metrics_port))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(root / "bin" / "tritonserver"),
        f"--model-repository={model_repository.resolve()}",
        f"--backend-directory={backends}",
        f"--grpc-port={grpc_port}",
        f"--http-port={http_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--log-verbose=0",
        "--exit-on-error=true",
        "--strict-readiness=true",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=triton_env(), start_new_session=True
        )
    triton = TritonProcess(process, grpc_port, http_port, metrics_port, log_path)
    if wait:
        triton.wait_ready(timeout)
    return triton
