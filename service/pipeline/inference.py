"""What every served model's request path shares, whatever the model computes (embeddings, rerank logits):
length buckets and the token budget, the tokenizer threads that keep large requests off the event loop, and
the run of a request's token sequences through the backend in padded, budgeted chunks, all at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from service import priority
from service.contract import ModelInfo, default_buckets, pad
from service.errors import ErrorKind, ServiceError, invalid
from service.metrics import Metrics
from service.pipeline.backend import InferenceBackend
from service.pipeline.batching import Chunk, plan_chunks
from service.pipeline.coalescer import Coalescer
from service.pipeline.tokenization import StopFlag, Stopped, TextTokenizer
from service.priority import Priority

T = TypeVar("T")

# Requests with at most this many characters (or token ids) are tokenized on the event loop: cheaper than
# a thread hop, and they never queue behind a large request's tokenization.
INLINE_CHARS = 4096


def resolve_buckets(configured: Sequence[int], max_tokens: int, exported: Sequence[int] = ()) -> list[int]:
    """The padded lengths a model's requests use: `configured` (settings.buckets) when set; else the ladder the
    export wrote into config.pbtxt (ModelFacts.length_buckets, the one Triton warmed up); else (exports from
    before that key) the default ladder for max_tokens, the same one export would have written. Always ending
    at max_tokens."""
    if configured:
        edges = sorted({b for b in configured if b < max_tokens})
    elif exported:
        edges = sorted({b for b in exported if b < max_tokens})
    else:
        edges = default_buckets(max_tokens)
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
class Tokenized:
    """A request's token sequences as the model sees them (embeddings: each ending in EOS; reranks: prefix +
    body + suffix per document), in input order."""

    ids: list[list[int]]
    truncated: list[bool]

    @property
    def token_count(self) -> int:
        return sum(len(i) for i in self.ids)


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
        max_calls_in_flight: int = 2,
        bulk_calls_in_flight: int = 1,
        bulk_token_budget: int = 2048,
        bulk_window_s: float = 2.0,
    ) -> None:
        self.info = info
        self.tokenizer = tokenizer
        self.backend = backend
        self.metrics = metrics
        self.max_batch_inputs = max_batch_inputs
        self.max_request_tokens = max_request_tokens
        self.buckets = resolve_buckets(buckets, info.max_input_tokens, info.length_buckets)
        # Never more per call than the model was exported to run at once (its own sub-run budget).
        if info.max_batch_tokens:
            token_budget = min(token_budget, info.max_batch_tokens)
        self.token_budget = max(token_budget, self.buckets[0])
        self.max_rows = min(max_triton_batch or info.max_batch_size, info.max_batch_size)
        self.executor = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="tokenize")
        # The backend's output row width: the hidden size for an embedder, the reranker's 2 logits.
        self.out_width = info.kind.output_width(info.hidden_size)
        self.coalescer = Coalescer(
            self._call,
            max_in_flight=max_calls_in_flight,
            token_budget=self.token_budget,
            max_rows=self.max_rows,
            bulk_in_flight=bulk_calls_in_flight,
            bulk_token_budget=max(bulk_token_budget, self.buckets[0]),
            bulk_window_s=bulk_window_s,
        )
        self._width_metrics: dict[int, tuple[Any, Any]] = {}
        self._class_calls = {p: metrics.priority_triton_calls.labels(p.value) for p in Priority}

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

    async def run_model(self, ids: list[list[int]], deadline: float) -> ModelRun:
        """Every sequence through the backend (rows of self.out_width values):
        bucketed, split under the token budget and the model's batch size, padded on the model's side, the
        chunks concurrent (and sent with other requests' chunks of their width while the model's calls in
        flight are at their limit: the coalescer, which takes the requests' chunks in turns by padded tokens);
        rows come back in `ids` order. One failed call fails the
        request (no partial result), reporting its most actionable error."""
        chunks = plan_chunks([len(i) for i in ids], self.buckets, self.token_budget, self.max_rows)
        # The request's chunks share one owner: the coalescer's fair share is between requests, so a request
        # of many chunks takes turns with the others instead of going first with all of them.
        owner = object()
        cls = priority.current()  # the request's class (set by the API layer around the lifecycle call)
        if len(chunks) == 1 and len(chunks[0].indices) == len(ids):
            # One chunk of every row, in order (plan_chunks keeps a bucket's rows in request order).
            chunk = chunks[0]
            rows = await self.coalescer.run(chunk.width, [ids[i] for i in chunk.indices], deadline, owner, cls)
            if list(chunk.indices) == list(range(len(ids))):
                return ModelRun(np.ascontiguousarray(rows, dtype=np.float32), chunks)
            out = np.empty((len(ids), self.out_width), dtype=np.float32)
            out[list(chunk.indices)] = rows
            return ModelRun(out, chunks)
        out = np.empty((len(ids), self.out_width), dtype=np.float32)
        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(self._run_chunk(chunk, ids, out, deadline, owner, cls))
        except* ServiceError as errors:
            # The first one that is not a side-effect cancellation.
            first = next((e for e in errors.exceptions if isinstance(e, ServiceError)), None)
            raise (first if first is not None else ServiceError(ErrorKind.INTERNAL, "inference failed")) from None
        return ModelRun(out, chunks)

    async def _run_chunk(
        self, chunk: Chunk, ids: list[list[int]], out: np.ndarray, deadline: float, owner: object, cls: Priority
    ) -> None:
        rows = await self.coalescer.run(chunk.width, [ids[i] for i in chunk.indices], deadline, owner, cls)
        out[list(chunk.indices)] = rows

    async def _call(
        self, width: int, sequences: list[Sequence[int]], timeout_s: float, cls: Priority = Priority.INTERACTIVE
    ) -> np.ndarray:
        """One backend call (the coalescer's): `sequences` padded to `width`, on the side the exported graph
        wants (the contract's padding_side: right for the fused graph)."""
        if timeout_s <= 0:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
        batch_ids, mask = pad(sequences, width, self.info.pad_id, self.info.padding_side)
        start = time.perf_counter()
        rows = await self.backend.infer(batch_ids, mask, self.out_width, timeout_s, cls)
        self._class_calls[cls].inc()
        seconds, requests = self._call_metrics(width)
        seconds.observe(time.perf_counter() - start)
        requests.inc()
        return rows

    def _call_metrics(self, width: int) -> tuple[Any, Any]:
        """The per-width Triton call metrics' children, looked up once per width (labels() costs a lock and
        a dict walk per call)."""
        children = self._width_metrics.get(width)
        if children is None:
            label = str(width)
            children = (self.metrics.triton_seconds.labels(label), self.metrics.triton_requests.labels(label))
            self._width_metrics[width] = children
        return children

    def record(self, tokenize_s: float, tokens: int, run: ModelRun) -> None:
        """The metrics every kind of request feeds once it succeeded."""
        m = self.metrics
        m.tokenize_seconds.observe(tokenize_s)
        m.tokens.observe(tokens)
        m.real_tokens.inc(tokens)
        m.padded_tokens.inc(run.padded_tokens)
