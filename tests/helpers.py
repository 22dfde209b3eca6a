"""Shared test helpers: a real facade process, reference vectors, cosine."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.launch import FacadeProcess, launch_facade
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "embedding.v1.EmbeddingService"
# The packed embedding types by their HTTP names (OpenAI's peers', Cohere's): the gRPC encoding that gives the
# same bytes, and the numpy type those bytes are as JSON integers.
PACKED_ENCODING = {
    "int8": pb.ENCODING_INT8,
    "uint8": pb.ENCODING_UINT8,
    "binary": pb.ENCODING_BINARY,
    "ubinary": pb.ENCODING_UBINARY,
}
PACKED_DTYPE = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


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


# The facade process: devtools/launch.py launches it for tests, benchmarks and the soak script alike.
Facade = FacadeProcess


@contextmanager
def run_facade(
    repository: Path,
    triton_url: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    wait_serving: bool = True,
) -> Iterator[Facade]:
    """`qwen3-embed serve` as a real process on free loopback ports, against the given Triton."""
    full_env = {"QWEN3_EMBED_DRAIN_SECONDS": "5", **(env or {})}
    with launch_facade(repository, triton_url, log_dir, env=full_env, wait=wait_serving, timeout=60) as facade:
        yield facade


def flooded(call: Callable[[], httpx.Response], calls: int = 16, threads: int = 8) -> list[httpx.Response]:
    """`calls` requests from `threads` threads at once on a facade with fewer slots than threads: every answer
    is 200 or 429 and both occur. Returns the answers, in call order."""
    with ThreadPoolExecutor(threads) as pool:
        replies = list(pool.map(lambda _: call(), range(calls)))
    statuses = Counter(r.status_code for r in replies)
    assert set(statuses) <= {200, 429} and statuses[429] > 0 and statuses[200] > 0, statuses
    return replies


def embed(stub: pb_grpc.EmbeddingServiceStub, inputs: list[str], **kwargs: object) -> pb.EmbedResponse:
    return stub.Embed(pb.EmbedRequest(inputs=inputs, **kwargs), timeout=60)  # type: ignore[arg-type]


def vectors(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


async def health_name(channel: grpc.aio.Channel, timeout: float = 5) -> str:
    """The health Check's status name over an aio channel, or the gRPC status code's name when it fails."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
