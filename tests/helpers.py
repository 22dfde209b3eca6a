"""Shared test helpers: a real facade process, reference vectors, cosine."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.launch import FacadePorts, facade_command, loopback_env
from service.triton.runtime import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "embedding.v1.EmbeddingService"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def health_status(target: str, service: str = "", timeout: float = 2.0) -> int | None:
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status)
    except grpc.RpcError:
        return None


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Facade(FacadePorts):
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stub(self, channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
        return pb_grpc.EmbeddingServiceStub(channel)


@contextmanager
def run_facade(
    repository: Path,
    triton_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    wait_serving: bool = True,
) -> Iterator[Facade]:
    """`qwen3-embed serve` as a real process on free loopback ports, against the given Triton."""
    grpc_port, http_port = free_port(), free_port()
    log_path = log_dir / f"facade-{grpc_port}.log"
    full_env = loopback_env({"QWEN3_EMBED_DRAIN_SECONDS": "5", **(env or {})})
    cmd = facade_command(repository, triton_url, grpc_port, http_port)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    facade = Facade(grpc_port=grpc_port, http_port=http_port, process=process, log_path=log_path)
    try:
        if wait_serving:
            wait_for(
                lambda: (
                    process.poll() is not None
                    or health_status(facade.target) == health_pb2.HealthCheckResponse.SERVING
                ),
                60,
                "the facade to serve",
            )
            assert process.poll() is None, f"facade exited early:\n{facade.log()}"
        yield facade
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def embed(stub: pb_grpc.EmbeddingServiceStub, inputs: list[str], **kwargs: object) -> pb.EmbedResponse:
    return stub.Embed(pb.EmbedRequest(inputs=inputs, **kwargs), timeout=60)  # type: ignore[arg-type]


def vectors(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
