"""The systems under test, each measured on the same texts: ONNX Runtime in-process (the ceiling),
direct Triton (pre-tokenized bucketed tensors), the facade (gRPC, HTTP), sentence-transformers, peers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devtools.bench.clients import GrpcSender, HttpSender, Outcome
from devtools.bench.runner import LoadSpec, run_load
from devtools.bench.stats import Sample, Summary, summarize
from devtools.launch import FacadePorts, launch_facade, stop
from service.contract import pad
from service.pipeline.batching import Chunk, plan_chunks
from service.triton.runtime import free_port

ROOT = Path(__file__).resolve().parent.parent
EOS = 151643


@dataclass(frozen=True)
class Plan:
    """A request as the facade would send it to Triton: its token ids and bucketed chunks."""

    ids: list[list[int]]
    chunks: list[Chunk]
    side: str = "left"  # the export's padding side (right for the fused-attention graph)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def real_tokens(self) -> int:
        return sum(len(i) for i in self.ids)

    @property
    def padded_tokens(self) -> int:
        return sum(c.padded_tokens for c in self.chunks)


def padding_side(repo_model_dir: Path) -> str:
    """The side the export pads on, from its config.pbtxt (the contract's parameter; old exports: left)."""
    from export.triton_config import parse_pbtxt
    from service.contract import ModelInfo

    config = parse_pbtxt((repo_model_dir / "config.pbtxt").read_text())
    return ModelInfo.from_triton_config(config).padding_side


class Tokenize:
    """The facade's tokenization (content ids + EOS), from the exported repository's tokenizer."""

    def __init__(self, repo_model_dir: Path) -> None:
        from service.pipeline.tokenization import TextTokenizer, load_tokenizer

        self.tok = TextTokenizer(load_tokenizer(repo_model_dir / "tokenizer", 151669))
        self.padding_side = padding_side(repo_model_dir)

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [[*c, EOS] for c in self.tok.content_ids(texts)]


def plan_requests(
    requests: Sequence[list[str]], tokenize: Tokenize, buckets: Sequence[int], budget: int, max_rows: int
) -> list[Plan]:
    plans = []
    for texts in requests:
        ids = tokenize.ids(texts)
        plans.append(Plan(ids, plan_chunks([len(i) for i in ids], buckets, budget, max_rows), tokenize.padding_side))
    return plans


def padded_arrays(plan: Plan) -> list[tuple[np.ndarray, np.ndarray]]:
    return [pad([plan.ids[i] for i in c.indices], c.width, EOS, plan.side) for c in plan.chunks]


# -- (a) the ceiling: model.onnx in this process, same chunks, no server ------------------------------


def ort_session(
    onnx_path: Path, threads: int = 0, providers: Sequence[Any] = ("CPUExecutionProvider",), profile_prefix: str = ""
) -> Any:
    """`providers` as ONNX Runtime takes them (devtools/gpu_kit/measure.py passes the CUDA provider).
    `profile_prefix`: profile the runs until `session.end_profiling()` (where each node ran: the GPU kit)."""
    import onnxruntime as ort

    # Same options as the Triton Python-backend model (export/templates/model.py).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # as export/templates/model.py
    if threads > 0:
        options.intra_op_num_threads = threads
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(onnx_path), options, providers=list(providers))


def run_ceiling(session: Any, plans: Sequence[Plan], repeat_until_s: float = 0.0) -> Summary:
    """Requests one after another (ORT uses every core in one run); latency = all of a request's chunks."""
    arrays = [padded_arrays(p) for p in plans]
    samples: list[Sample] = []
    t0 = time.perf_counter()
    i = 0
    while i < len(plans) or time.perf_counter() - t0 < repeat_until_s:
        k = i % len(plans)
        start = time.perf_counter()
        for ids, mask in arrays[k]:
            session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        samples.append(Sample(start - t0, time.perf_counter() - start, "OK", len(plans[k]), plans[k].real_tokens))
        i += 1
    return summarize(samples, time.perf_counter() - t0)


# -- (b) direct Triton: the same chunks over tritonclient's asyncio gRPC client ----------------------


async def run_direct_triton(url: str, model: str, hidden: int, plans: Sequence[Plan], spec: LoadSpec) -> Summary:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    client = aioclient.InferenceServerClient(url)
    prepared = {id(p): padded_arrays(p) for p in plans}

    async def one(ids: np.ndarray, mask: np.ndarray) -> None:
        inputs = [
            grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
            grpcclient.InferInput("attention_mask", list(mask.shape), "INT64"),
        ]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        result = await client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput("embedding")])
        out = result.as_numpy("embedding")
        if out is None or out.shape != (ids.shape[0], hidden):
            raise ValueError(f"shape {None if out is None else out.shape}")

    async def send(plan: Plan) -> Outcome:
        # Chunks of one request go out together, as the facade's TaskGroup sends them.
        try:
            await asyncio.gather(*(one(ids, mask) for ids, mask in prepared[id(plan)]))
        except InferenceServerException as exc:
            return Outcome(str(exc.status() or "TRITON_ERROR"), detail=str(exc.message()))
        except ValueError as exc:
            return Outcome("BAD_RESPONSE", detail=str(exc))
        return Outcome("OK", tokens=plan.real_tokens)

    try:
        await run_load(send, plans, LoadSpec(concurrency=min(spec.concurrency, 4), requests=min(4, len(plans))))
        return (await run_load(send, plans, spec)).summary
    finally:
        await client.close()


# -- (c, d) the facade, and (f) peers, through the load generator's own clients -----------------------


async def run_grpc(
    target: str, hidden: int, requests: Sequence[list[str]], spec: LoadSpec, warmup: int = 4, connections: int = 1
) -> Summary:
    sender = GrpcSender(target, hidden, connections=connections)
    try:
        if warmup:
            await run_load(sender.send, requests, LoadSpec(concurrency=min(spec.concurrency, warmup), requests=warmup))
        return (await run_load(sender.send, requests, spec)).summary
    finally:
        await sender.close()


async def run_http(
    base_url: str,
    model: str,
    hidden: int | None,
    requests: Sequence[list[str]],
    spec: LoadSpec,
    path: str = "/v1/embeddings",
    warmup: int = 4,
) -> tuple[Summary, str]:
    sender = HttpSender(base_url, model, hidden, path=path, connections=max(16, spec.concurrency))
    try:
        if warmup:
            await run_load(sender.send, requests, LoadSpec(concurrency=min(spec.concurrency, warmup), requests=warmup))
        result = await run_load(sender.send, requests, spec)
        return result.summary, result.first_error
    finally:
        await sender.close()


# -- (e) sentence-transformers in this process -------------------------------------------------------


def run_sentence_transformers(model: Any, requests: Sequence[list[str]], token_counts: Sequence[int]) -> Summary:
    samples: list[Sample] = []
    t0 = time.perf_counter()
    for texts, tokens in zip(requests, token_counts, strict=True):
        start = time.perf_counter()
        out = model.encode(texts, batch_size=max(1, len(texts)), convert_to_numpy=True)
        status = "OK" if out.shape[0] == len(texts) else "BAD_RESPONSE"
        samples.append(Sample(start - t0, time.perf_counter() - start, status, len(texts), tokens))
    return summarize(samples, time.perf_counter() - t0)


# -- processes ----------------------------------------------------------------------------------------


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered:\n{tail}")
        if http_ok(url):
            return
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


FacadeHandle = FacadePorts


@contextmanager
def facade(
    repository: Path, triton_url: str, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[FacadeHandle]:
    """`qwen3-embed serve --triton-url` as a process; settings through QWEN3_EMBED_* variables."""
    full_env = {"QWEN3_EMBED_DRAIN_SECONDS": "0", **(env or {})}
    with launch_facade(repository, triton_url, log_dir, env=full_env, args=("--log-level", "WARNING")) as handle:
        yield handle


def scrape_padding(base_url: str) -> tuple[float, float]:
    """(real, padded) token counters from the facade's /metrics."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {"real": 0.0, "padded": 0.0}
    for line in text.splitlines():
        if line.startswith("qwen3_embed_real_tokens_total "):
            values["real"] = float(line.split()[1])
        elif line.startswith("qwen3_embed_padded_tokens_total "):
            values["padded"] = float(line.split()[1])
    return values["real"], values["padded"]


@contextmanager
def infinity(python: Path, model_dir: Path, log_dir: Path, batch_size: int = 32) -> Iterator[str]:
    """Infinity (torch engine) from its own virtualenv; yields its base URL (OpenAI route: /embeddings)."""
    port = free_port()
    log = log_dir / f"infinity-{port}.log"
    cmd = [
        str(python),
        "-m",
        "infinity_emb.cli",
        "v2",
        "--model-id",
        str(model_dir),
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--port",
        str(port),
        "--batch-size",
        str(batch_size),
        "--no-bettertransformer",
        "--no-model-warmup",  # its CPU warm-up at 0.6B scale ran past 300 s in the first full run
        "--dtype",
        "float32",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log_dir)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 300, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def bucket_width(length: int, buckets: Sequence[int]) -> int:
    from service.pipeline.batching import bucket_for

    return bucket_for(length, buckets)
