"""The request path: validate -> template -> tokenize -> truncate -> bucket -> backend -> MRL -> normalise."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from service import tracing
from service.errors import ErrorKind, ServiceError, invalid
from service.pipeline.cache import EmbeddingCache, identity_of, model_key
from service.pipeline.encoding import check_encoding
from service.pipeline.inference import ServedModel, Tokenized, check_unicode
from service.pipeline.params import EmbedParams, Encoding, Truncate
from service.pipeline.postprocess import check_dimensions, finalize
from service.pipeline.templating import apply_prefix, resolve_prefix
from service.pipeline.tokenization import StopFlag, never_stop
from service.pipeline.truncation import fit


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # [n, dimensions] float32, in input order
    dimensions: int
    prompt_tokens: int
    tokenize_ms: float
    inference_ms: float
    total_ms: float
    token_counts: tuple[int, ...] = ()  # per input: its tokens as the model saw them (what the cache stores)


def request_size(params: EmbedParams) -> int:
    """Characters (or token ids) a request carries: decides inline vs thread tokenization."""
    if params.token_ids:
        return sum(len(ids) for ids in params.token_ids)
    return sum(len(t) for t in params.texts) + len(params.instruction)


class Embedder(ServedModel):
    """Texts (or token ids) -> vectors; the constructor and the model run are ServedModel's."""

    cache: EmbeddingCache | None = None  # set by use_cache (the facade's embedding_cache_bytes)
    cache_model = ""

    def use_cache(self, cache: EmbeddingCache | None) -> None:
        """Text inputs are looked up in `cache` (shared by the process's models) under a key unique to this
        model load (service/pipeline/cache.py)."""
        self.cache = cache
        self.cache_model = model_key(identity_of(self.info)) if cache is not None else ""

    def close(self) -> None:
        super().close()
        if self.cache is not None:
            self.cache.drop_model(self.cache_model)

    # -- validation and tokenization (pure CPU work) --

    def token_limit(self, params: EmbedParams) -> int:
        """The tokens each input may have, template and EOS included: the model's limit, or a smaller
        per-request one (vLLM's truncate_prompt_tokens), which only a truncating request may set."""
        full = self.info.max_input_tokens
        if not params.max_tokens:
            return full
        if not 1 <= params.max_tokens <= full:
            raise invalid(
                f"truncate_prompt_tokens must be between 1 and the model's limit of {full} (or -1 for it), "
                f"got {params.max_tokens}",
                "truncate_prompt_tokens",
            )
        if params.truncate is Truncate.NONE:
            raise invalid("a per-request token limit needs truncate END or START", "truncate_prompt_tokens")
        return params.max_tokens

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

    def _text_contents(
        self, texts: list[str], truncate: Truncate, stop: StopFlag | None, keep_prefix: int = 0, limit: int = 0
    ) -> list[list[int]]:
        """Content ids of templated texts, never tokenizing far past what truncation keeps: with NONE an
        input is proven too long from a prefix, with END only a prefix is tokenized, with START only a tail
        window (and the `keep_prefix` instruction tokens fit() keeps from the head); a text whose tail cannot
        be cut safely (tokenization.tail_ids) is tokenized whole."""
        should_stop = stop or never_stop
        cap = limit or self.info.max_input_tokens  # one more than fit() keeps before EOS: enough to decide
        contents: list[list[int] | None] = [None] * len(texts)
        if truncate is Truncate.START:
            keep = min(keep_prefix, cap - 2)  # as fit() keeps it
            for i, text in enumerate(texts):
                tail = self.tokenizer.tail_ids(text, cap, should_stop)
                if tail is None:
                    continue
                head = self.tokenizer.head_ids(text, keep, should_stop) if keep > 0 else []
                if head is None:
                    continue
                # Longer than the limit (the tail alone is cap tokens), so fit() cuts it to exactly the whole
                # text's first `keep` and last tokens: the same ids as tokenizing it whole.
                contents[i] = [*head[:keep], *tail]
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

    def checked_prefix(self, params: EmbedParams) -> str:
        """The texts and instruction checked (none empty, all valid Unicode) and the template prefix they get."""
        for i, text in enumerate(params.texts):
            if not text:
                raise invalid(f"input {i} is an empty string", "input")
            check_unicode(text, f"input {i}", "input")
        check_unicode(params.instruction, "instruction", "instruction")
        return resolve_prefix(params.instruction, params.prompt_name, self.info.prompts)

    def tokenize_sync(self, params: EmbedParams, stop: StopFlag | None = None) -> Tokenized:
        info = self.info
        self.check_count(params.count)
        limit = self.token_limit(params)
        if params.token_ids:
            contents = self._id_contents(params)
            keep_prefix = 0
        else:
            prefix = self.checked_prefix(params)
            keep_prefix = self.tokenizer.prefix_length(prefix)
            contents = self._text_contents(
                apply_prefix(prefix, params.texts), params.truncate, stop, keep_prefix, limit
            )
        fitted = [fit(c, limit, params.truncate, info.eos_id, keep_prefix, index=i) for i, c in enumerate(contents)]
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
        return await self.run_tokenizer(
            lambda stop: self.tokenize_sync(params, stop), request_size(params), deadline, "input"
        )

    async def embed(self, params: EmbedParams, deadline: float, use_cache: bool = True) -> EmbedResult:
        """`deadline` is a time.monotonic() value; the backend gets the time left."""
        if use_cache and self.cache is not None and params.texts:
            return await self._embed_cached(self.cache, params, deadline)
        started = time.perf_counter()
        dims = check_dimensions(params.dimensions, self.info.min_dimensions, self.info.hidden_size)
        check_encoding(params.encoding, params.normalize)
        with tracing.stage("tokenize", **{tracing.INPUTS: params.count}):
            tokenized = await self.tokenize(params, deadline)
            tracing.count_tokens(tokenized.token_count)
        tokenized_at = time.perf_counter()
        run = await self.run_model(tokenized.ids, deadline)  # the queue and inference spans, per chunk
        inferred_at = time.perf_counter()
        vectors = finalize(run.out, dims, params.normalize)
        self.metrics.inputs.observe(len(tokenized.ids))
        self.record(tokenized_at - started, tokenized.token_count, run)
        return EmbedResult(
            vectors=vectors,
            dimensions=dims,
            prompt_tokens=tokenized.token_count,
            tokenize_ms=(tokenized_at - started) * 1000,
            inference_ms=(inferred_at - tokenized_at) * 1000,
            total_ms=(time.perf_counter() - started) * 1000,
            token_counts=tuple(len(i) for i in tokenized.ids),
        )

    async def _embed_cached(self, cache: EmbeddingCache, params: EmbedParams, deadline: float) -> EmbedResult:
        """The request's texts found in the cache, the rest (each distinct text once) through the uncached
        path as one request of full-width raw vectors, stored, then all of them cut and normalised as the
        uncached path does. An invalid input found on the way is reported by the uncached checks of the
        whole request, so the error (and the input index it names) is the one the cache off would give."""
        started = time.perf_counter()
        dims = check_dimensions(params.dimensions, self.info.min_dimensions, self.info.hidden_size)
        check_encoding(params.encoding, params.normalize)
        try:
            self.check_count(params.count)
            self.token_limit(params)  # a hit must not pass a limit the uncached path refuses
            prefix = self.checked_prefix(params)
        except ServiceError as exc:
            raise await self._uncached_error(params, deadline, exc) from None
        found = cache.lookup(self.cache_model, prefix, params.texts, params.truncate, params.max_tokens)
        tokenize_ms = inference_ms = 0.0
        if found.missing:
            # Full width, not normalised: the stored vector serves every dimensions / normalize variant.
            rest = replace(params, texts=tuple(found.missing), dimensions=0, normalize=False, encoding=Encoding.FLOAT)
            try:
                computed = await self.embed(rest, deadline, use_cache=False)
            except ServiceError as exc:
                raise await self._uncached_error(params, deadline, exc) from None
            cache.store(found.fill(computed.vectors, computed.token_counts))
            tokenize_ms, inference_ms = computed.tokenize_ms, computed.inference_ms
        prompt_tokens = sum(found.tokens)
        if prompt_tokens > self.max_request_tokens:  # over the limit with the cached inputs counted in
            too_many = invalid(
                f"the request has {prompt_tokens} tokens, more than the limit of {self.max_request_tokens} per "
                "request; split the batch",
                "input",
            )
            raise await self._uncached_error(params, deadline, too_many)
        return EmbedResult(
            vectors=finalize(found.assemble(self.info.hidden_size), dims, params.normalize),
            dimensions=dims,
            prompt_tokens=prompt_tokens,
            tokenize_ms=tokenize_ms,
            inference_ms=inference_ms,
            total_ms=(time.perf_counter() - started) * 1000,
            token_counts=tuple(found.tokens),
        )

    async def _uncached_error(self, params: EmbedParams, deadline: float, exc: ServiceError) -> ServiceError:
        """For an invalid request: the error the uncached checks give for the whole request (a subset's error
        names the wrong input); `exc` when they pass, or for any other error."""
        if exc.kind is not ErrorKind.INVALID_ARGUMENT:
            return exc
        try:
            await self.tokenize(params, deadline)
        except ServiceError as whole:
            return whole
        return exc
