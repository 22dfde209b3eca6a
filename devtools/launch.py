"""The facade as a child process on loopback: the one launcher for tests, benchmarks and the soak script."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.triton.runtime import free_port

if TYPE_CHECKING:
    import grpc

    from service.gen.embedding.v1.embedding_pb2_grpc import EmbeddingServiceStub

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class FacadePorts:
    """Where a loopback facade listens."""

    grpc_port: int
    http_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class FacadeProcess(FacadePorts):
    """A launched facade: its process and the file its stdout and stderr go to."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stub(self, channel: grpc.Channel) -> EmbeddingServiceStub:
        from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc

        return pb_grpc.EmbeddingServiceStub(channel)


def facade_command(
    repository: Path, triton_url: str, grpc_port: int, http_port: int, *extra: str, python: str = sys.executable
) -> list[str]:
    """`qwen3-embed serve` against a running Triton; `python` picks the environment (default: this one)."""
    return [
        python, "-m", "service.cli", "serve",
        "--model-repository", str(repository.resolve()), "--triton-url", triton_url,
        "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        *extra,
    ]  # fmt: skip


def loopback_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment, listening on 127.0.0.1 only, one facade process (workers=1: the default,
    one per CPU, would multiply start-up time and processes on a small test machine; a test or benchmark
    asks for more); `extra` QWEN3_EMBED_* settings win."""
    return {**os.environ, "QWEN3_EMBED_HOST": "127.0.0.1", "QWEN3_EMBED_WORKERS": "1", **(extra or {})}


def wait_ready(facade: FacadeProcess, timeout: float) -> None:
    """Until HTTP /health/ready answers 200. HTTP starts after gRPC and only once Triton is ready, so this
    also means gRPC serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if facade.process.poll() is not None:
            raise RuntimeError(f"facade exited with {facade.process.returncode}:\n{facade.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{facade.base_url}/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused, 503 (HTTPError) or a timeout: not ready yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"facade not ready after {timeout:.0f} s:\n{facade.log()[-3000:]}")


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM (graceful drain), then SIGKILL if it outlives `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def launch_facade(
    repository: Path,
    triton_url: str,
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    wait: bool = True,
    timeout: float = 90,
    python: str = sys.executable,
    cwd: Path = ROOT,
) -> Iterator[FacadeProcess]:
    """`qwen3-embed serve` as a process on free loopback ports, settings through QWEN3_EMBED_* `env`; waits
    until ready unless `wait` is false (TLS: the readiness probe speaks plain HTTP). Stopped on exit.
    `python -m` imports from `cwd` first: give another environment's `python` a `cwd` outside the checkout."""
    grpc_port, http_port = free_port(), free_port()
    log_path = log_dir / f"facade-{grpc_port}.log"
    cmd = facade_command(repository, triton_url, grpc_port, http_port, *args, python=python)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=loopback_env(env), cwd=cwd)
    facade = FacadeProcess(grpc_port=grpc_port, http_port=http_port, process=process, log_path=log_path)
    try:
        if wait:
            wait_ready(facade, timeout)
        yield facade
    finally:
        stop(process)
