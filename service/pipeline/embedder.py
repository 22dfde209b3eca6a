"""The request path: validate -> template -> tokenize -> truncate -> bucket -> backend -> MRL -> normalise."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.metrics import Metrics
from service.model_info import ModelInfo
from service.pipeline.backend import InferenceBackend
from service.pipeline.batching import Chunk, default_buckets, pad, plan_chunks
from service.pipeline.errors import ErrorKind, ServiceError, invalid
from service.pipeline.params import EmbedParams, Truncate
from service.pipeline.postprocess import check_dimensions, finalize
from service.pipeline.templating import apply_prefix, resolve_prefix
from service.pipeline.tokenization import StopFlag, Stopped, TextTokenizer, never_stop
from service.pipeline.truncation import fit

# Requests with at most this many characters (or token ids) are tokenized on the event loop: cheaper than
# a thread hop, and they never queue behind a large request's tokenization.
INLINE_CHARS = 4096


@dataclass(frozen=True)
class Tokenized:
    ids: list[list[int]]  # what the model sees, each ending in EOS
    truncated: list[bool]

    @property
    def token_count(self) -> int:
        return sum(len(i) for i in self.ids)


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # [n, dimensions] float32, in input order
    dimensions: int
    prompt_tokens: int
    tokenize_ms: float
    inference_ms: float
    total_ms: float


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


def request_size(params: EmbedParams) -> int:
    """Characters (or token ids) a request carries: decides inline vs thread tokenization."""
    if params.token_ids:
        return sum(len(ids) for ids in params.token_ids)
    return sum(len(t) for t in params.texts) + len(params.instruction)


class Embedder:
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

    # -- validation and tokenization (pure CPU work) --

    def check_count(self, n: int) -> None:
        if n == 0:
            raise invalid(f"no inputs: send 1 to {self.max_batch_inputs} inputs", "input")
        if n > self.max_batch_inputs:
            raise invalid(
                f"{n} inputs is more than the limit of {self.max_batch_inputs} per request; split the batch",
                "input",
            )

    def _id_contents(self, params: EmbedParams) -> list[list[int]]:
        info = self.info
        if params.instruction or params.prompt_name:
            raise invalid("instruction and prompt_name apply to text, not to token-id input", "input")
        contents: list[list[int]] = []
        for i, ids in enumerate(params.token_ids):
            if not ids:
                raise invalid(f"input {i} is an empty token list", "input")
            bad = [t for t in ids if not 0 <= t < info.embedding_rows]
            if bad:
                raise invalid(f"input {i} has token id {bad[0]} outside [0, {info.embedding_rows})", "input")
            # The model pools its EOS: strip one given at the end, fit() puts it back after truncation.
            contents.append(list(ids[:-1] if ids[-1] == info.eos_id else ids))
        return contents

    def _text_contents(self, texts: list[str], truncate: Truncate, stop: StopFlag | None) -> list[list[int]]:
        """Content ids of templated texts, never tokenizing far past what truncation keeps: with NONE an
        input is proven too long from a prefix, with END only a prefix is tokenized."""
        should_stop = stop or never_stop
        cap = self.info.max_input_tokens  # one more than fit() keeps before EOS: enough to decide
        contents: list[list[int] | None] = [None] * len(texts)
        if truncate is not Truncate.START:
            for i, text in enumerate(texts):
                if truncate is Truncate.NONE and self.tokenizer.surely_longer_than(text, cap):
                    raise invalid(
                        f"input {i} is {len(text)} characters long, more than the model's limit of {cap} tokens "
                        "can hold; shorten it or set truncate to END or START",
                        "input",
                    )
                head = self.tokenizer.head_ids(text, cap, should_stop)
                if head is None:
                    continue
                if truncate is Truncate.NONE:
                    raise invalid(
                        f"input {i} has more than the model's limit of {cap} tokens; "
                        "shorten it or set truncate to END or START",
                        "input",
                    )
                contents[i] = head
        rest = [i for i, c in enumerate(contents) if c is None]
        for i, ids in zip(rest, self.tokenizer.content_ids([texts[i] for i in rest], should_stop), strict=True):
            contents[i] = ids
        return [c for c in contents if c is not None]

    def tokenize_sync(self, params: EmbedParams, stop: StopFlag | None = None) -> Tokenized:
        info = self.info
        self.check_count(params.count)
        if params.token_ids:
            contents = self._id_contents(params)
            keep_prefix = 0
        else:
            for i, text in enumerate(params.texts):
                if not text:
                    raise invalid(f"input {i} is an empty string", "input")
                check_unicode(text, f"input {i}", "input")
            check_unicode(params.instruction, "instruction", "instruction")
            prefix = resolve_prefix(params.instruction, params.prompt_name, info.prompts)
            contents = self._text_contents(apply_prefix(prefix, params.texts), params.truncate, stop)
            keep_prefix = self.tokenizer.prefix_length(prefix)
        fitted = [
            fit(c, info.max_input_tokens, params.truncate, info.eos_id, keep_prefix, index=i)
            for i, c in enumerate(contents)
        ]
        tokenized = Tokenized([f[0] for f in fitted], [f[1] for f in fitted])
        if tokenized.token_count > self.max_request_tokens:
            raise invalid(
                f"the request has {tokenized.token_count} tokens, more than the limit of "
                f"{self.max_request_tokens} per request; split the batch",
                "input",
            )
        return tokenized

    async def tokenize(self, params: EmbedParams, deadline: float | None = None) -> Tokenized:
        """Small requests inline; large ones on the tokenizer threads, stopped between steps when the caller
        goes away or the deadline passes, so abandoned work does not hold a thread."""
        try:
            if request_size(params) <= INLINE_CHARS:
                return self.tokenize_sync(params)
            stop = StopFlag(deadline)
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.executor, self.tokenize_sync, params, stop)
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
            raise invalid(f"an input could not be tokenized ({type(exc).__name__}); shorten it", "input") from exc

    # -- inference --

    async def _run_chunk(self, chunk: Chunk, ids: list[list[int]], out: np.ndarray, deadline: float) -> None:
        # The side the exported graph wants (the contract's padding_side): right for the fused graph.
        batch_ids, mask = pad([ids[i] for i in chunk.indices], chunk.width, self.info.pad_id, self.info.padding_side)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded before the model was called")
        start = time.perf_counter()
        vectors = await self.backend.infer(batch_ids, mask, self.info.hidden_size, remaining)
        label = str(chunk.width)
        self.metrics.triton_seconds.labels(label).observe(time.perf_counter() - start)
        self.metrics.triton_requests.labels(label).inc()
        out[list(chunk.indices)] = vectors

    async def embed(self, params: EmbedParams, deadline: float) -> EmbedResult:
        """`deadline` is a time.monotonic() value; the backend gets the time left."""
        started = time.perf_counter()
        dims = check_dimensions(params.dimensions, self.info.min_dimensions, self.info.hidden_size)
        tokenized = await self.tokenize(params, deadline)
        tokenized_at = time.perf_counter()
        ids = tokenized.ids
        chunks = plan_chunks([len(i) for i in ids], self.buckets, self.token_budget, self.max_rows)
        out = np.empty((len(ids), self.info.hidden_size), dtype=np.float32)
        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks:
                    group.create_task(self._run_chunk(chunk, ids, out, deadline))
        except* ServiceError as errors:
            # Report the most actionable error: the first one that is not a side-effect cancellation.
            first = next((e for e in errors.exceptions if isinstance(e, ServiceError)), None)
            raise (first if first is not None else ServiceError(ErrorKind.INTERNAL, "inference failed")) from None
        inferred_at = time.perf_counter()
        vectors = finalize(out, dims, params.normalize)
        m = self.metrics
        m.tokenize_seconds.observe(tokenized_at - started)
        m.inputs.observe(len(ids))
        m.tokens.observe(tokenized.token_count)
        m.real_tokens.inc(tokenized.token_count)
        m.padded_tokens.inc(sum(c.padded_tokens for c in chunks))
        return EmbedResult(
            vectors=vectors,
            dimensions=dims,
            prompt_tokens=tokenized.token_count,
            tokenize_ms=(tokenized_at - started) * 1000,
            inference_ms=(inferred_at - tokenized_at) * 1000,
            total_ms=(time.perf_counter() - started) * 1000,
        )
