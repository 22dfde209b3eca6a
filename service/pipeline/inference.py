"""What every served model's request path shares, whatever the model computes (embeddings, rerank logits):
length buckets and the token budget, the tokenizer threads that keep large requests off the event loop, and
the run of a request's token sequences through the backend in padded, budgeted chunks, all at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from service.metrics import Metrics
from service.model_info import ModelInfo
from service.pipeline.backend import InferenceBackend
from service.pipeline.batching import Chunk, default_buckets, pad, plan_chunks
from service.pipeline.errors import ErrorKind, ServiceError, invalid
from service.pipeline.tokenization import StopFlag, Stopped, TextTokenizer

T = TypeVar("T")

# Requests with at most this many characters (or token ids) are tokenized on the event loop: cheaper than
# a thread hop, and they never queue behind a large request's tokenization.
INLINE_CHARS = 4096


def resolve_buckets(configured: Sequence[int], max_tokens: int) -> list[int]:
    edges = sorted({b for b in configured if b < max_tokens}) if configured else default_buckets(max_tokens)
    if not edges or edges[-1] != max_tokens:
        edges = [*edges, max_tokens]
    return edges


def check_unicode(text: str, what: str, param: str) -> None:
    """JSON can smuggle lone surrogates (`"\\ud800"`) that no tokenizer accepts: refuse them by name."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(f"{what} is not valid Unicode (a lone surrogate at character {exc.start})", param) from None


@dataclass(frozen=True)
class ModelRun:
    """The backend's rows for a request's sequences, in request order, and the calls that made them."""

    out: np.ndarray  # [len(sequences), width] float32
    chunks: list[Chunk]

    @property
    def padded_tokens(self) -> int:
        return sum(c.padded_tokens for c in self.chunks)


class ServedModel:
    """One Triton model behind the facade: its facts, tokenizer, backend and the limits requests obey.
    Subclasses (Embedder, Reranker) turn requests into token sequences and the backend's rows into results."""

    def __init__(
        self,
        info: ModelInfo,
        tokenizer: TextTokenizer,
        backend: InferenceBackend,
        metrics: Metrics,
        *,
        max_batch_inputs: int,
        max_request_tokens: int = 1 << 20,
        buckets: Sequence[int] = (),
        token_budget: int = 16384,
        max_triton_batch: int = 0,
        tokenizer_threads: int = 2,
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.backend = backend
        self.metrics = metrics
        self.max_batch_inputs = max_batch_inputs
        self.max_request_tokens = max_request_tokens
        self.buckets = resolve_buckets(buckets, info.max_input_tokens)
        # Never more per call than the model was exported to run at once (its own sub-run budget).
        if info.max_batch_tokens:
            token_budget = min(token_budget, info.max_batch_tokens)
        self.token_budget = max(token_budget, self.buckets[0])
        self.max_rows = min(max_triton_batch or info.max_batch_size, info.max_batch_size)
        self.executor = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="tokenize")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run_tokenizer(
        self, work: Callable[[StopFlag | None], T], size: int, deadline: float | None, param: str
    ) -> T:
        """`work(stop)` inline when the request carries at most INLINE_CHARS characters (`size`); else on
        the tokenizer threads, stopped between steps when the caller goes away or the deadline passes, so
        abandoned work does not hold a thread. `param` names the request field a tokenizer panic blames."""
        try:
            if size <= INLINE_CHARS:
                return work(None)
            stop = StopFlag(deadline)
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.executor, work, stop)
            try:
                return await future
            except asyncio.CancelledError:
                stop.set()
                raise
        except Stopped:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded while tokenizing") from None
        except (Exception, asyncio.CancelledError):
            raise
        except BaseException as exc:  # the Rust tokenizer panics (pyo3 PanicException) on some inputs
            raise invalid(f"an input could not be tokenized ({type(exc).__name__}); shorten it", param) from exc

    async def run_model(self, ids: list[list[int]], width: int, deadline: float) -> ModelRun:
        """Every sequence through the backend: bucketed, split under the token budget and the model's batch
        size, padded on the model's side, the calls concurrent; rows come back in `ids` order. One failed call
        fails the request (no partial result), reporting its most actionable error."""
        chunks = plan_chunks([len(i) for i in ids], self.buckets, self.token_budget, self.max_rows)
        out = np.empty((len(ids), width), dtype=np.float32)
        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(self._run_chunk(chunk, ids, out, width, deadline))
        except* ServiceError as errors:
            # The first one that is not a side-effect cancellation.
            first = next((e for e in errors.exceptions if isinstance(e, ServiceError)), None)
            raise (first if first is not None else ServiceError(ErrorKind.INTERNAL, "inference failed")) from None
        return ModelRun(out, chunks)

    async def _run_chunk(
        self, chunk: Chunk, ids: list[list[int]], out: np.ndarray, width: int, deadline: float
    ) -> None:
        # The side the exported graph wants (the contract's padding_side): right for the fused graph.
        batch_ids, mask = pad([ids[i] for i in chunk.indices], chunk.width, self.info.pad_id, self.info.padding_side)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
        start = time.perf_counter()
        rows = await self.backend.infer(batch_ids, mask, width, remaining)
        label = str(chunk.width)
        self.metrics.triton_seconds.labels(label).observe(time.perf_counter() - start)
        self.metrics.triton_requests.labels(label).inc()
        out[list(chunk.indices)] = rows

    def record(self, tokenize_s: float, tokens: int, run: ModelRun) -> None:
        """The metrics every kind of request feeds once it succeeded."""
        m = self.metrics
        m.tokenize_seconds.observe(tokenize_s)
        m.tokens.observe(tokens)
        m.real_tokens.inc(tokens)
        m.padded_tokens.inc(run.padded_tokens)
