"""Triton bounded by tokens: model.py splits the dynamic batcher's merged batches into ONNX Runtime runs of at
most max_batch_tokens padded tokens, and Triton's memory stays under the bound the export wrote.

A real export of the dev model (max_batch_tokens 512, max_batch_size 64, a 200 ms batching window so that
concurrent requests merge) on a real Triton; many concurrent requests of one width make batches far above the
budget. The unit test at the end runs model.py's execute() with a stand-in for Triton's pb_utils to check the
split, the order and per-request errors when one sub-run fails."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import threading
import time
import types
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import tritonclient.grpc.aio as aioclient
from rich.console import Console

from export.exporter import ExportOptions, run_export
from export.memory import PeakMemory
from export.triton_config import RepoSettings, parse_pbtxt
from service.contract import EMBEDDING, ModelFacts
from service.triton.runtime import TritonProcess, start_triton
from tests.export.test_triton_python_backend import infer_inputs

BUDGET = 512
WIDTH = 256
REQUESTS = 64  # 1-3 rows each, all of WIDTH: merged batches of up to 64 rows, 32x the budget
MODEL = "qwen3_embedding"
TEMPLATE = Path(__file__).resolve().parents[2] / "export" / "templates" / "model.py"


@pytest.fixture(scope="module")
def budget_repository(dev_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = RepoSettings(
        max_input_tokens=WIDTH,
        max_batch_size=64,
        max_batch_tokens=BUDGET,
        instances=1,
        ort_intra_op_threads=1,
        max_queue_delay_us=200_000,
    )
    out = tmp_path_factory.mktemp("budget-repo")
    run_export(
        ExportOptions(model=str(dev_model_dir), output=out, repo=settings, verify_long_tokens=WIDTH),
        Console(quiet=True),
    )
    return out


@pytest.fixture(scope="module")
def budget_triton(budget_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    proc = start_triton(budget_repository, tmp_path_factory.mktemp("budget-logs") / "triton.log")
    yield proc
    proc.stop()


def tree_rss(root: psutil.Process) -> dict[int, int]:
    """RSS of tritonserver and every Python stub under the process we started."""
    out = {}
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            out[proc.pid] = proc.memory_info().rss
    return out


@dataclass
class Peaks:
    total: int = 0  # the largest sum over the tree at one sample
    each: dict[int, int] = field(default_factory=dict)  # pid -> its largest RSS


@contextlib.contextmanager
def sampling_peaks(root: psutil.Process, every_s: float = 0.003) -> Iterator[Peaks]:
    """Polls the tree's RSS in a thread while the block runs (RSS has no peak counter per process tree)."""
    peaks, stop = Peaks(), threading.Event()

    def poll() -> None:
        while not stop.is_set():
            rss = tree_rss(root)
            peaks.total = max(peaks.total, sum(rss.values()))
            for pid, value in rss.items():
                peaks.each[pid] = max(peaks.each.get(pid, 0), value)
            time.sleep(every_s)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()


def metrics(triton: TritonProcess) -> dict[str, float]:
    """Triton's metrics port: our model.py's custom metrics (one instance, so one sample each)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("qwen3_embed_"):
            name, value = line.split("{")[0], line.rsplit(" ", 1)[1]
            out[name] = out.get(name, 0.0) + float(value)
    return out


def flood(triton: TritonProcess, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    async def run() -> list[np.ndarray]:
        client = aioclient.InferenceServerClient(triton.grpc_url)
        try:
            results = await asyncio.gather(*[client.infer(MODEL, infer_inputs(i, m)) for i, m in requests])
        finally:
            await client.close()
        return [r.as_numpy(EMBEDDING) for r in results]

    return asyncio.run(run())


def test_merged_batches_run_within_the_token_budget_and_memory_bound(
    budget_triton: TritonProcess, budget_repository: Path
) -> None:
    model_dir = budget_repository / MODEL
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    facts = ModelFacts.from_parameters({k: v.string_value for k, v in cfg.parameters.items()})
    assert facts.max_batch_tokens == BUDGET and facts.expected_peak_bytes_per_instance > 0
    rng = np.random.default_rng(1)
    requests = []
    for _ in range(REQUESTS):
        ids = rng.integers(0, 150000, size=(int(rng.integers(1, 4)), WIDTH), dtype=np.int64)
        real = WIDTH - int(rng.integers(0, WIDTH // 2))
        ids[:, real - 1] = facts.eos_id
        mask = np.ones_like(ids)
        mask[:, real:] = 0  # right padding, as the facade sends for the fused graph (the default export)
        ids[mask == 0] = facts.pad_id
        requests.append((ids, mask))

    root = psutil.Process(budget_triton.process.pid)
    flood(budget_triton, requests[:1])  # first-call set-up (stub buffers, ORT kernels) is not the batch's
    baseline = tree_rss(root)
    with sampling_peaks(root) as peak:
        outputs = flood(budget_triton, requests)

    # Every row equals the same row run alone (sub-run boundaries cut through multi-row requests).
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for (ids, mask), out in zip(requests, outputs, strict=True):
        alone = np.concatenate(
            [
                session.run([EMBEDDING], {"input_ids": ids[r : r + 1], "attention_mask": mask[r : r + 1]})[0]
                for r in range(ids.shape[0])
            ]
        )
        np.testing.assert_allclose(out, alone, rtol=1e-4, atol=1e-5)

    seen = metrics(budget_triton)
    assert seen["qwen3_embed_batch_tokens_max"] > BUDGET * 4  # the batcher merged far beyond the budget ...
    assert seen["qwen3_embed_ort_run_tokens_max"] <= BUDGET  # ... and every ORT run stayed within it
    rows = sum(i.shape[0] for i, _ in requests) + 1
    assert seen["qwen3_embed_ort_runs_total"] >= rows // (BUDGET // WIDTH)

    # Memory: each stub under the exported bound; the tree's growth under the bound's activation part.
    instances = cfg.instance_group[0].count
    formula = PeakMemory(0, facts.activation_bytes_per_token, facts.activation_bytes_per_score)
    run_bound = formula.run_bytes(*formula.worst_run(BUDGET, WIDTH, cfg.max_batch_size))
    growth = peak.total - sum(baseline.values())
    stubs = {pid: rss for pid, rss in peak.each.items() if pid != root.pid and pid not in _server_pids(root)}
    report = (
        f"growth {growth / 2**20:.1f} MiB (bound {instances * run_bound / 2**20:.1f}); stubs "
        + ", ".join(f"{rss / 2**20:.1f} MiB" for rss in stubs.values())
        + f" (bound {facts.expected_peak_bytes_per_instance / 2**20:.1f} MiB each)"
    )
    print(report)
    assert growth <= instances * run_bound, report
    assert stubs and all(rss <= facts.expected_peak_bytes_per_instance for rss in stubs.values()), report


def _server_pids(root: psutil.Process) -> set[int]:
    return {p.pid for p in root.children(recursive=True) if p.name() == "tritonserver"}


# --- model.py's execute() without Triton: a stand-in for triton_python_backend_utils ---


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: Any = None) -> None:
        self.output_tensors, self.error = output_tensors, error


def fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = FakeTensor  # type: ignore[attr-defined]
    pb.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    pb.TritonError = str  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda request, name: FakeTensor(name, request[name])  # type: ignore[attr-defined]
    return pb  # no MetricFamily or Logger: model.py must do without them


class FakeSession:
    """Row sums as the "embedding"; raises on any run holding a row whose first id is 13."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def run(self, names: list[str], feed: dict[str, np.ndarray], options: object = None) -> list[np.ndarray]:
        ids = feed["input_ids"]
        self.shapes.append(ids.shape)
        if (ids[:, 0] == 13).any():
            raise RuntimeError("boom")
        return [np.stack([ids.sum(axis=1), ids[:, 0]], axis=1).astype(np.float32)]


def test_execute_splits_by_tokens_keeps_order_and_isolates_a_failed_sub_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location("budget_model_under_test", TEMPLATE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.session, model.embedding_rows, model.max_batch_tokens = FakeSession(), 0, 8  # 2 rows of width 4
    model.bytes_per_token = model.bytes_per_score = model.keep_bytes = 0
    model.largest_run = model.largest_batch = 0
    model._create_metrics({})

    def request(first_ids: list[int], width: int = 4) -> dict[str, np.ndarray]:
        ids = np.array([[f, *range(1, width)] for f in first_ids], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    # Rows: a=[1,2,3] b=[4] c(width 2)=[5] d=[13 (fails), 6] e=[7]: width-4 runs [1,2] [3,4] [13,6] [7].
    requests = [request([1, 2, 3]), request([4]), request([5], width=2), request([13, 6]), request([7])]
    responses = model.execute(requests)
    assert [r.error for r in responses] == [None, None, None, "inference failed: boom", None]
    for req, resp in zip(requests, responses, strict=True):
        if resp.error is None:
            np.testing.assert_array_equal(resp.output_tensors[0].array[:, 1], req["input_ids"][:, 0])
    assert model.session.shapes == [(2, 4), (2, 4), (2, 4), (1, 4), (1, 2)]
    assert model.largest_run == 8 and model.largest_batch == 28
