"""Faults: Triton returning malformed responses, Triton SIGKILLed under load, the facade SIGTERMed under load.

A test-only model repository holds `qwen3_faulty`: the exported dev model with its 1/model.py wrapped so
that a Triton request's row count picks a fault (3 rows: one row fewer, 5: one column more, 7: NaN,
6: correct but 1.5 s late); 1, 2 and 4 rows are served exactly like the real model. It runs in its own
Triton (loopback, free ports), which the kill test kills and restarts; the session Triton is never touched.
Every OK response in this module is compared with single-call vectors from the session facade."""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import TritonProcess, free_port, start_triton
from tests.helpers import Facade, cosine, health_status, run_facade, vectors, wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAULTY = "qwen3_faulty"
SHORT, WIDE, NAN, SLOW = 3, 5, 7, 6  # Triton request rows -> fault
DRAIN_SECONDS = 8
# Short texts (one length bucket), so a request of n of them is one Triton request of n rows.
TEXTS = [f"reliability sentence number {i}" for i in range(8)]

FAULT_WRAPPER = """

# --- test-only fault injection (tests/service/test_faults.py) ---
import time as _time


class TritonPythonModel(_RealModel):
    def execute(self, requests):
        rows = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy().shape[0] for r in requests]
        if SLOW in rows:
            _time.sleep(1.5)
        responses = super().execute(requests)
        out = []
        for n, response in zip(rows, responses):
            if n in (SHORT, WIDE, NAN) and not response.has_error():
                emb = pb_utils.get_output_tensor_by_name(response, "embedding").as_numpy().copy()
                if n == SHORT:
                    emb = emb[:-1]
                elif n == WIDE:
                    emb = np.concatenate([emb, emb[:, :1]], axis=1)
                else:
                    emb[0, 0] = np.nan
                response = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("embedding", emb)])
            out.append(response)
        return out
"""


def build_fault_repository(source: Path, target: Path) -> Path:
    """<target>/qwen3_faulty: a copy of the exported model (no tokenizer) with the fault wrapper."""
    model_dir = target / FAULTY
    shutil.copytree(source, model_dir, ignore=shutil.ignore_patterns("tokenizer", "__pycache__"))
    config = model_dir / "config.pbtxt"
    config.write_text(re.sub(r'^name: ".*"$', f'name: "{FAULTY}"', config.read_text(), count=1, flags=re.M))
    code = (model_dir / "1" / "model.py").read_text().replace("class TritonPythonModel:", "class _RealModel:")
    constants = f"\nSHORT, WIDE, NAN, SLOW = {SHORT}, {WIDE}, {NAN}, {SLOW}\n"
    (model_dir / "1" / "model.py").write_text(code + constants + FAULT_WRAPPER)
    return target


@pytest.fixture(scope="module")
def fault_repository(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fault_repository(model_repository / "qwen3_embedding", tmp_path_factory.mktemp("fault-repo"))


@pytest.fixture(scope="module")
def fault_triton(fault_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    log = tmp_path_factory.mktemp("fault-triton") / "triton.log"
    proc = start_triton(fault_repository, log, free_port(), free_port(), free_port())
    yield proc
    proc.stop()


def facade_env(model_repository: Path, **extra: str) -> dict[str, str]:
    return {
        "QWEN3_EMBED_MODEL_NAME": FAULTY,
        "QWEN3_EMBED_TOKENIZER_DIR": str(model_repository / "qwen3_embedding" / "tokenizer"),
        "QWEN3_EMBED_HEALTH_POLL_S": "0.5",
        # The faults key on a Triton request's rows: one request, one call (no coalescing of requests).
        "QWEN3_EMBED_TRITON_CALLS_IN_FLIGHT": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def fault_facade(
    fault_repository: Path, fault_triton: TritonProcess, model_repository: Path, logs_dir: Path
) -> Iterator[Facade]:
    with run_facade(fault_repository, fault_triton.grpc_url, logs_dir, env=facade_env(model_repository)) as f:
        yield f


@pytest.fixture(scope="module")
def expected(facade: Facade) -> np.ndarray:
    """Single-call vectors of TEXTS from the session facade (the real model)."""
    with grpc.insecure_channel(facade.target) as channel:
        stub = facade.stub(channel)
        return np.stack([vectors(stub.Embed(pb.EmbedRequest(inputs=[t]), timeout=60))[0] for t in TEXTS])


@pytest.fixture(scope="module")
def model_name(facade: Facade) -> str:
    return str(httpx.get(f"{facade.base_url}/v1/models").json()["data"][0]["id"])


def picks(k: int, rows: int) -> list[int]:
    return [(k + j) % len(TEXTS) for j in range(rows)]


def assert_rows_match(got: np.ndarray, picked: list[int], expected: np.ndarray) -> None:
    assert got.shape == (len(picked), expected.shape[1])
    for row, i in zip(got, picked, strict=True):
        assert cosine(row, expected[i]) >= 0.99999, f"row for input {i} is not its own vector"


# -- malformed responses --


def test_malformed_triton_responses_are_internal_never_a_wrong_vector(
    fault_facade: Facade, expected: np.ndarray, model_name: str
) -> None:
    with grpc.insecure_channel(fault_facade.target) as channel:
        stub = fault_facade.stub(channel)
        for rows in (1, 2, 4):  # the wrapper serves these exactly like the real model
            picked = picks(rows, rows)
            got = vectors(stub.Embed(pb.EmbedRequest(inputs=[TEXTS[i] for i in picked]), timeout=60))
            assert_rows_match(got, picked, expected)

        log_lines = {
            SHORT: r"triton model \S+ returned embedding shape \(2, 64\) for a \[3, \d+\] request|triton error",
            WIDE: r"triton model \S+ returned embedding shape \(5, 65\) for a \[5, \d+\] request|triton error",
            NAN: r"triton model \S+ returned non-finite values for a \[7, \d+\] request",
        }

        def good_call(k: int) -> None:
            picked = picks(k, 1 + k % 2)
            got = vectors(stub.Embed(pb.EmbedRequest(inputs=[TEXTS[i] for i in picked]), timeout=60))
            assert_rows_match(got, picked, expected)

        with ThreadPoolExecutor(4) as pool:
            good = [pool.submit(good_call, k) for k in range(24)]  # well-formed calls beside the faults
            for rows, pattern in log_lines.items():
                inputs = [TEXTS[i] for i in picks(0, rows)]
                for request in (
                    pb.EmbedRequest(inputs=inputs),
                    # A mixed request whose other chunk is fine still fails as a whole.
                    pb.EmbedRequest(inputs=[*inputs, "a longer input " * 20]),
                ):
                    with pytest.raises(grpc.RpcError) as err:
                        stub.Embed(request, timeout=60)
                    assert err.value.code() == grpc.StatusCode.INTERNAL, err.value.details()
                    assert re.search(r"inference backend|non-finite", err.value.details())
                r = httpx.post(
                    f"{fault_facade.base_url}/v1/embeddings", json={"model": model_name, "input": inputs}, timeout=60
                )
                assert r.status_code == 500 and r.json()["error"]["type"] == "server_error", r.text
                assert "embedding" not in r.json()
                wait_for(lambda p=pattern: re.search(p, fault_facade.log()) is not None, 10, f"log line {pattern}")
            for future in good:
                future.result()
    assert fault_facade.process.poll() is None


# -- Triton SIGKILLed under load --


@dataclass
class Load:
    """Callers in a loop on their own threads; each result is recorded with when its call started."""

    facade: Facade
    model: str
    expected: np.ndarray
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: list[tuple[str, float, str]] = field(default_factory=list)  # (caller, started, code)
    wrong: list[str] = field(default_factory=list)

    def record(self, caller: str, started: float, code: str) -> None:
        with self.lock:
            self.results.append((caller, started, code))

    def count(self, code: str, caller: str | None = None, after: float = 0.0) -> int:
        with self.lock:
            return sum(1 for c, s, k in self.results if k == code and (caller in (None, c)) and s >= after)

    def grpc_caller(self, name: str, rows: Callable[[int], int], deadline: float = 30.0) -> None:
        with grpc.insecure_channel(self.facade.target) as channel:
            stub = self.facade.stub(channel)
            k = 0
            while not self.stop.is_set():
                picked = picks(k, rows(k))
                k += 1
                started = time.monotonic()
                try:
                    response = stub.Embed(pb.EmbedRequest(inputs=[TEXTS[i] for i in picked]), timeout=deadline)
                except grpc.RpcError as exc:
                    self.record(name, started, exc.code().name)
                    time.sleep(0.05)
                    continue
                try:
                    assert_rows_match(vectors(response), picked, self.expected)
                except AssertionError as exc:
                    self.wrong.append(f"{name}: {exc}")
                self.record(name, started, "OK")

    def http_caller(self, name: str) -> None:
        with httpx.Client(base_url=self.facade.base_url, timeout=30) as client:
            k = 0
            while not self.stop.is_set():
                picked = picks(k, 1 + k % 2)
                k += 1
                started = time.monotonic()
                try:
                    r = client.post("/v1/embeddings", json={"model": self.model, "input": [TEXTS[i] for i in picked]})
                except httpx.TransportError as exc:
                    self.record(name, started, type(exc).__name__)
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
                    try:
                        assert_rows_match(got, picked, self.expected)
                    except AssertionError as exc:
                        self.wrong.append(f"{name}: {exc}")
                    self.record(name, started, "OK")
                else:
                    self.record(name, started, str(r.status_code))
                    time.sleep(0.05)


def test_triton_sigkill_under_load_fails_fast_and_recovers(
    fault_facade: Facade, fault_triton: TritonProcess, fault_repository: Path, expected: np.ndarray, model_name: str
) -> None:
    load = Load(fault_facade, model_name, expected)
    callers = [
        threading.Thread(target=load.grpc_caller, args=(f"grpc{c}", lambda k: (1, 2, 4)[k % 3]), daemon=True)
        for c in range(4)
    ]
    # Every call of this one spends 1.5 s inside Triton, so one is in flight when Triton dies.
    callers.append(threading.Thread(target=load.grpc_caller, args=("slow", lambda k: SLOW), daemon=True))
    callers.append(threading.Thread(target=load.http_caller, args=("http",), daemon=True))
    pid = fault_facade.process.pid
    for t in callers:
        t.start()
    try:
        wait_for(lambda: load.count("OK", "slow") >= 1 and load.count("OK") >= 20, 60, "load before the kill")
        # Kill while a slow call is inside Triton: it started at least 0.5 s ago and needs 1.5 s.
        slow_ok = load.count("OK", "slow")
        wait_for(lambda: load.count("OK", "slow") > slow_ok, 30, "a slow call to finish")
        time.sleep(0.5)
        killed_at = time.monotonic()
        fault_triton.kill()

        wait_for(lambda: health_status(fault_facade.target) == NOT_SERVING, 20, "NOT_SERVING after the kill")
        assert health_status(fault_facade.target, "liveness") == SERVING
        # Calls fail fast with UNAVAILABLE; the one in flight at the kill too (its deadline is 30 s).
        wait_for(
            lambda: all(load.count("UNAVAILABLE", f"grpc{c}", killed_at) >= 2 for c in range(4)),
            20,
            "every caller to see UNAVAILABLE",
        )
        wait_for(lambda: load.count("UNAVAILABLE", "slow", killed_at - 1.5) >= 1, 20, "the in-flight slow call")
        wait_for(lambda: load.count("503", "http", killed_at) >= 1, 20, "HTTP 503")

        restarted = start_triton(
            fault_repository,
            fault_triton.log_path,
            fault_triton.grpc_port,
            fault_triton.http_port,
            fault_triton.metrics_port,
        )
        fault_triton.process = restarted.process
        back_at = time.monotonic()
        wait_for(lambda: health_status(fault_facade.target) == SERVING, 60, "SERVING again")
        wait_for(
            lambda: (
                all(load.count("OK", f"grpc{c}", back_at) >= 5 for c in range(4))
                and load.count("OK", "http", back_at) >= 3
                and load.count("OK", "slow", back_at) >= 1
            ),
            60,
            "OK calls after the restart",
        )
    finally:
        load.stop.set()
        for t in callers:
            t.join(timeout=60)
    codes = Counter(code for _, _, code in load.results)
    assert set(codes) <= {"OK", "UNAVAILABLE", "503"}, codes  # never DEADLINE_EXCEEDED, INTERNAL, UNKNOWN
    assert not load.wrong, load.wrong[:3]
    assert fault_facade.process.poll() is None and fault_facade.process.pid == pid  # no facade restart


# -- facade SIGTERM under load --


def in_flight(facade: Facade) -> float:
    text = httpx.get(f"{facade.base_url}/metrics", timeout=5).text
    match = re.search(r"^qwen3_embed_in_flight_requests (\S+)$", text, flags=re.M)
    return float(match.group(1)) if match else -1.0


def test_sigterm_drains_accepted_requests_and_refuses_new_ones(
    fault_repository: Path,
    fault_triton: TritonProcess,
    model_repository: Path,
    logs_dir: Path,
    expected: np.ndarray,
    model_name: str,
) -> None:
    env = facade_env(model_repository, QWEN3_EMBED_DRAIN_SECONDS=str(DRAIN_SECONDS))
    with run_facade(fault_repository, fault_triton.grpc_url, logs_dir, env=env) as facade:
        slow = picks(0, SLOW)
        slow_inputs = [TEXTS[i] for i in slow]

        def grpc_call(_: int) -> np.ndarray:
            with grpc.insecure_channel(facade.target) as channel:
                return vectors(facade.stub(channel).Embed(pb.EmbedRequest(inputs=slow_inputs), timeout=30))

        def http_call(_: int) -> np.ndarray:
            r = httpx.post(
                f"{facade.base_url}/v1/embeddings", json={"model": model_name, "input": slow_inputs}, timeout=30
            )
            assert r.status_code == 200, r.text
            return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

        with ThreadPoolExecutor(4) as pool:
            accepted = [pool.submit(grpc_call, k) for k in range(3)] + [pool.submit(http_call, 0)]
            wait_for(lambda: in_flight(facade) == 4, 20, "4 requests in flight")
            facade.process.send_signal(signal.SIGTERM)
            wait_for(lambda: health_status(facade.target) in (NOT_SERVING, None), 10, "NOT_SERVING")

            refused: Counter[str] = Counter()
            with grpc.insecure_channel(facade.target) as channel:
                stub = facade.stub(channel)
                while facade.process.poll() is None and sum(refused.values()) < 50:
                    with pytest.raises(grpc.RpcError) as err:
                        stub.Embed(pb.EmbedRequest(inputs=[TEXTS[0]]), timeout=10)
                    refused[err.value.code().name] += 1
                    try:
                        r = httpx.post(
                            f"{facade.base_url}/v1/embeddings",
                            json={"model": model_name, "input": TEXTS[0]},
                            timeout=10,
                        )
                        refused[str(r.status_code)] += 1
                    except httpx.TransportError:
                        refused["connection refused"] += 1
                    time.sleep(0.1)
            for future in accepted:  # every request accepted before SIGTERM completes OK with its own vectors
                assert_rows_match(future.result(timeout=30), slow, expected)
        assert refused and set(refused) <= {"UNAVAILABLE", "503", "connection refused"}, refused
        assert facade.process.wait(timeout=DRAIN_SECONDS + 10) == 0
        assert "stopped" in facade.log()
