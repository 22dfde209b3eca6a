"""Status codes that need a special set-up: auth, overload, and Triton going away and coming back.

Each uses its own Triton and facade processes (loopback only), so stopping Triton here does not
disturb the other tests."""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import TritonProcess, free_port, start_triton
from tests.helpers import Facade, cosine, flooded, health_status, run_facade, vectors, wait_for

KEYS = ["key-one-0123456789", "key-two-abcdefghij"]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def own_triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    log = tmp_path_factory.mktemp("resilience") / "triton.log"
    proc = start_triton(model_repository, log, free_port(), free_port(), free_port())
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def guarded(model_repository: Path, own_triton: TritonProcess, logs_dir: Path) -> Iterator[Facade]:
    """A facade with API keys and room for only two requests at a time."""
    env = {"QWEN3_EMBED_API_KEYS": ",".join(KEYS), "QWEN3_EMBED_MAX_IN_FLIGHT": "2"}
    with run_facade(model_repository, own_triton.grpc_url, logs_dir, env=env) as facade:
        yield facade


def auth(key: str = KEYS[1]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_api_keys(guarded: Facade) -> None:
    with grpc.insecure_channel(guarded.target) as channel:
        stub = guarded.stub(channel)
        for metadata in (None, auth("wrong"), (("authorization", KEYS[0]),)):  # missing, wrong, no "Bearer"
            with pytest.raises(grpc.RpcError) as err:
                stub.Embed(pb.EmbedRequest(inputs=["x"]), metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "API key" in err.value.details() and KEYS[0] not in err.value.details()
        for key in KEYS:
            assert stub.Embed(pb.EmbedRequest(inputs=["x"]), metadata=auth(key), timeout=10).embeddings
    assert health_status(guarded.target) == SERVING  # health is exempt
    url = f"{guarded.base_url}/v1/embeddings"
    denied = httpx.post(url, json={"model": "x", "input": "x"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    assert KEYS[0] not in denied.text
    assert httpx.get(f"{guarded.base_url}/health/ready").status_code == 200  # exempt
    assert httpx.get(f"{guarded.base_url}/v1/models", headers={"authorization": f"Bearer {KEYS[0]}"}).status_code == 200


def test_overload_at_4x_capacity_is_rejected_cleanly(guarded: Facade) -> None:
    """8 concurrent callers against 2 slots: every call ends OK or RESOURCE_EXHAUSTED, and every OK
    response carries exactly the vectors of its own inputs."""
    texts = [[f"caller {c} text {k} " + "padding words " * (20 + 10 * c) for k in range(8)] for c in range(8)]
    with grpc.insecure_channel(guarded.target) as channel:
        stub = guarded.stub(channel)
        expected = [vectors(stub.Embed(pb.EmbedRequest(inputs=t), metadata=auth(), timeout=60)) for t in texts]
    codes: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def caller(c: int) -> None:
        with grpc.insecure_channel(guarded.target) as ch:
            stub = guarded.stub(ch)
            barrier.wait(timeout=30)
            for _ in range(4):
                try:
                    got = vectors(stub.Embed(pb.EmbedRequest(inputs=texts[c]), metadata=auth(), timeout=60))
                except grpc.RpcError as exc:
                    with lock:
                        codes[exc.code().name] += 1
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        assert "overloaded" in exc.details()
                    continue
                for a, b in zip(got, expected[c], strict=True):
                    assert cosine(a, b) >= 0.99999
                with lock:
                    codes["OK"] += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(caller, range(8)))
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes

    # The same over HTTP: 429 with a Retry-After header.
    body = {"model": "x", "input": texts[7]}
    headers = {"authorization": f"Bearer {KEYS[0]}"}
    model = httpx.get(f"{guarded.base_url}/v1/models", headers=headers).json()["data"][0]["id"]
    body["model"] = model

    def http_call(_: int) -> httpx.Response:
        return httpx.post(f"{guarded.base_url}/v1/embeddings", json=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(http_call, range(16)))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429} and statuses[429] > 0, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["retry-after"] and limited.json()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
def test_embeddings_routes_are_gated_alike(guarded: Facade, path: str) -> None:
    """Infinity's /embeddings passes the same gate and admission as /v1/embeddings: 401 without a key, 413 over
    the body budget, 429 (with Retry-After) when the two slots are taken, and the vectors of its own inputs."""
    url = f"{guarded.base_url}{path}"
    headers = {"authorization": f"Bearer {KEYS[0]}"}
    denied = httpx.post(url, json={"model": "x", "input": "x"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    model = httpx.get(f"{guarded.base_url}/v1/models", headers=headers).json()["data"][0]["id"]
    too_big = httpx.post(url, json={"model": model, "input": ["x" * 1_000_000] * 17}, headers=headers, timeout=60)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] is not None
    texts = [f"text {k} " + "padding words " * 90 for k in range(8)]
    body = {"model": model, "input": texts, "encoding_format": "base64", "embedding_type": "int8"}

    responses = flooded(lambda: httpx.post(url, json=body, headers=headers, timeout=60))
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["retry-after"] and limited.json()["error"]["type"] == "rate_limit_error"
    with grpc.insecure_channel(guarded.target) as channel:
        want = guarded.stub(channel).Embed(
            pb.EmbedRequest(inputs=texts, encoding=pb.ENCODING_INT8), metadata=auth(), timeout=60
        )
    packed = [e.packed for e in want.embeddings]
    for r in responses:
        if r.status_code == 200:
            assert [base64.b64decode(d["embedding"]) for d in r.json()["data"]] == packed


def test_triton_down_and_back(guarded: Facade, own_triton: TritonProcess, model_repository: Path) -> None:
    with grpc.insecure_channel(guarded.target) as channel:
        stub = guarded.stub(channel)
        before = vectors(stub.Embed(pb.EmbedRequest(inputs=["back again"]), metadata=auth(), timeout=30))
        own_triton.stop()
        wait_for(lambda: health_status(guarded.target) == NOT_SERVING, 20, "NOT_SERVING")
        assert health_status(guarded.target, "embedding.v1.EmbeddingService") == NOT_SERVING
        assert health_status(guarded.target, "liveness") == SERVING
        assert httpx.get(f"{guarded.base_url}/health/ready").status_code == 503
        assert httpx.get(f"{guarded.base_url}/health/live").status_code == 200
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(inputs=["x"]), metadata=auth(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        headers = {"authorization": f"Bearer {KEYS[0]}"}
        model = httpx.get(f"{guarded.base_url}/v1/models", headers=headers).json()["data"][0]["id"]
        down = httpx.post(f"{guarded.base_url}/v1/embeddings", json={"model": model, "input": "x"}, headers=headers)
        assert down.status_code == 503 and down.json()["error"]["type"] == "service_unavailable"

        # Same ports again: the facade reconnects by itself, no restart.
        restarted = start_triton(
            model_repository,
            own_triton.log_path,
            own_triton.grpc_port,
            own_triton.http_port,
            own_triton.metrics_port,
        )
        own_triton.process = restarted.process
        wait_for(lambda: health_status(guarded.target) == SERVING, 60, "SERVING again")
        assert httpx.get(f"{guarded.base_url}/health/ready").status_code == 200
        after = vectors(stub.Embed(pb.EmbedRequest(inputs=["back again"]), metadata=auth(), timeout=30))
        np.testing.assert_allclose(after, before, atol=1e-6)
        assert guarded.process.poll() is None
