"""The rerank request path: validate -> Qwen3-Reranker template -> tokenize -> truncate -> bucket -> backend
-> score -> sort.

Each document becomes one sequence, exactly as the official usage builds it: `prefix_ids + body_ids +
suffix_ids`, the body `<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}` tokenized alone
(no special tokens), cut at its end to `max_input_tokens - len(prefix_ids) - len(suffix_ids)` when truncation
is on. The graph returns the LM head's [no, yes] logits at the last real token; score = sigmoid(yes - no).

The body's head `<Instruct>: ...\\n<Query>: {query}\\n` is the same for every document of a request, so it is
tokenized once and each document's tail `<Document>: {document}` alone. That equals tokenizing each whole
body because no Qwen pre-token can span the head's final newline and the tail's `<` (the regex pieces that
take a newline end with it, the one that takes a leading non-letter excludes newlines; NFC composes nothing
across them; no added token holds a newline) — tests/unit/test_rerank_units.py checks it on random text, and
the constructor checks it on the tokenizer it is given, falling back to whole bodies if it ever fails.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import tracing
from service.contract import DEFAULT_RERANK_INSTRUCTION, RERANK_PREFIX, RERANK_SUFFIX, ModelInfo
from service.errors import ErrorKind, ServiceError, invalid
from service.metrics import Metrics
from service.pipeline.backend import InferenceBackend
from service.pipeline.inference import ServedModel, Tokenized, check_unicode
from service.pipeline.params import RerankParams, Truncate
from service.pipeline.tokenization import StopFlag, TextTokenizer, never_stop

log = logging.getLogger(__name__)

DOCUMENT_LABEL = "<Document>: "
# Texts the constructor tokenizes both ways (head + tail and whole body) before it shares heads.
SHARING_PROBES = (
    ("", "q", "d"),
    ("Find code", "what?\n", "  <|im_start|>x"),
    ("i", "trailing spaces   ", "\n\ndoc"),
    ("i", "combining e\u0301\u0301", "\u0301start"),
    ("i", "<|endoftext|>", "<think>\r\n"),
    ("i", "数字 123\r", "中文。"),
)


def rerank_head(instruction: str, query: str) -> str:
    """The part of the body every document of a request shares."""
    return f"<Instruct>: {instruction or DEFAULT_RERANK_INSTRUCTION}\n<Query>: {query}\n"


def rerank_tail(document: str) -> str:
    return DOCUMENT_LABEL + document


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Without overflow warnings for large |x|: exp of a non-positive number only."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def scores_from_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, 2] logits in RERANK_LABELS order (no, yes) -> (sigmoid(yes - no), yes - no), float64."""
    raw = logits[:, 1].astype(np.float64) - logits[:, 0].astype(np.float64)
    return sigmoid(raw), raw


def ranking(raw: np.ndarray, top_n: int) -> list[int]:
    """Indices by raw score (yes - no: the sigmoid's order, without its saturation at 1.0), highest first,
    ties in input order; the first `top_n` (0 = all)."""
    order = np.argsort(-raw, kind="stable").tolist()
    return order[:top_n] if top_n > 0 else order


@dataclass(frozen=True)
class ScoredDocument:
    index: int  # the document's position in the request
    score: float  # sigmoid(yes - no), in [0, 1]
    raw_score: float  # yes - no


@dataclass(frozen=True)
class RerankResult:
    hits: list[ScoredDocument]  # by score descending, top_n applied
    logits: np.ndarray  # [n, 2] float32 (no, yes), input order
    prompt_tokens: int
    tokenize_ms: float
    inference_ms: float
    total_ms: float


def rerank_size(params: RerankParams) -> int:
    """Characters a request carries: decides inline vs thread tokenization."""
    return len(params.query) + len(params.instruction) + sum(len(d) for d in params.documents)


class Reranker(ServedModel):
    """A query and documents -> relevance scores from a Qwen3-Reranker graph (`logits` [batch, 2])."""

    def __init__(
        self, info: ModelInfo, tokenizer: TextTokenizer, backend: InferenceBackend, metrics: Metrics, **limits: Any
    ) -> None:
        """ServedModel's signature (ServiceState builds an Embedder or a Reranker from a model's facts). Raises
        ValueError when the tokenizer or the limits cannot serve Qwen3-Reranker's template."""
        super().__init__(info, tokenizer, backend, metrics, **limits)
        tok = self.tokenizer
        self.prefix_ids = tok.content_ids([RERANK_PREFIX])[0]
        self.suffix_ids = tok.content_ids([RERANK_SUFFIX])[0]
        self.label_ids = tok.content_ids([DOCUMENT_LABEL.rstrip()])[0]
        # The tokens a body may have: the official max_length less the template around it.
        self.body_limit = self.info.max_input_tokens - len(self.prefix_ids) - len(self.suffix_ids)
        if self.body_limit < len(self.label_ids) + 8:
            raise ValueError(
                f"max_input_tokens {self.info.max_input_tokens} leaves no room for a query and a document in "
                f"the reranker's template ({len(self.prefix_ids) + len(self.suffix_ids)} tokens)"
            )
        self._check_template_tokens()
        self.shares_head = all(self._split_equals_whole(*probe) for probe in SHARING_PROBES)
        if not self.shares_head:
            log.warning(
                "reranker %s: its tokenizer splits differently at the query/document boundary; every document's "
                "whole body is tokenized (correct, slower for many documents)",
                self.info.served_name,
            )

    def _check_template_tokens(self) -> None:
        """The template's special tokens must be single ids (a tokenizer cut to a smaller table would spell
        them out), and the graph's yes/no rows must be this tokenizer's "yes" and "no"."""
        tok = self.tokenizer.tokenizer
        for special in ("<|im_start|>", "<|im_end|>"):
            found = tok.token_to_id(special)
            if found is None or found not in self.prefix_ids:
                raise ValueError(f"the tokenizer does not know {special} as one token: not a Qwen3-Reranker tokenizer")
        if self.info.rerank_token_ids:
            expected = ",".join(str(tok.token_to_id(label)) for label in ("no", "yes"))
            if self.info.rerank_token_ids.replace(" ", "") != expected:
                raise ValueError(
                    f"the model scores token ids {self.info.rerank_token_ids} (no,yes) but its tokenizer has "
                    f"{expected}: the export and the tokenizer do not match"
                )

    def _split_equals_whole(self, instruction: str, query: str, document: str) -> bool:
        head, tail = rerank_head(instruction, query), rerank_tail(document)
        head_ids, tail_ids, whole = self.tokenizer.content_ids([head, tail, head + tail])
        return head_ids + tail_ids == whole

    # -- validation and tokenization (pure CPU work) --

    def check_params(self, params: RerankParams) -> None:
        n = params.count
        if n == 0:
            raise invalid(f"no documents: send 1 to {self.max_batch_inputs} documents", "documents")
        if n > self.max_batch_inputs:
            raise invalid(
                f"{n} documents is more than the limit of {self.max_batch_inputs} per request; split them",
                "documents",
            )
        if not params.query:
            raise invalid("the query is empty", "query")
        check_unicode(params.query, "the query", "query")
        if params.instruction and not params.instruction.strip():
            raise invalid("instruction is blank (leave it empty for the default instruction)", "instruction")
        check_unicode(params.instruction, "instruction", "instruction")
        for i, document in enumerate(params.documents):
            if not document:
                raise invalid(f"document {i} is an empty string", "documents")
            check_unicode(document, f"document {i}", "documents")
        if params.truncate is Truncate.START:
            raise invalid(
                "truncate START is not supported for reranking: Qwen3-Reranker's usage cuts the end of a "
                "document; use END (or NONE)",
                "truncate",
            )
        if params.top_n < 0:
            raise invalid("top_n must be 0 (all) or positive", "top_n")
        if params.max_tokens_per_doc < 0:
            raise invalid("max_tokens_per_doc must be positive", "max_tokens_per_doc")

    def _head_ids(self, head: str, stop: StopFlag | None) -> list[int]:
        """The shared head's ids; refused when it leaves no room for a document, with either truncation
        (every document would be cut away and all scores would be equal)."""
        room = self.body_limit - len(self.label_ids) - 1
        message = (
            "the query (with the instruction) leaves no room for a document within the model's limit of "
            f"{self.info.max_input_tokens} tokens; shorten it"
        )
        if self.tokenizer.surely_longer_than(head, room):
            raise invalid(message, "query")
        ids = self.tokenizer.head_ids(head, room + 1, stop or never_stop)
        if ids is None:
            ids = self.tokenizer.content_ids([head], stop or never_stop)[0]
        if len(ids) > room:
            raise invalid(message, "query")
        return ids

    def _tail_ids(
        self, tails: list[str], cap: int, truncate: Truncate, stop: StopFlag | None
    ) -> list[tuple[list[int], bool]]:
        """Each tail's ids, cut to `cap` (END) or refused past it (NONE), never tokenized far past `cap`."""
        should_stop = stop or never_stop
        limit = self.info.max_input_tokens
        out: list[tuple[list[int], bool] | None] = [None] * len(tails)

        def too_long(i: int, tokens: str) -> ServiceError:
            return invalid(
                f"document {i} has {tokens} tokens with the query and the template, more than the model's limit "
                f"of {limit}; shorten it or set truncate to END",
                "documents",
            )

        for i, tail in enumerate(tails):
            if truncate is Truncate.NONE and self.tokenizer.surely_longer_than(tail, cap):
                raise too_long(i, "more")
            head = self.tokenizer.head_ids(tail, cap + 1, should_stop)
            if head is None:
                continue
            if truncate is Truncate.NONE:
                raise too_long(i, "more")
            out[i] = (head[:cap], True)
        rest = [i for i, o in enumerate(out) if o is None]
        for i, ids in zip(rest, self.tokenizer.content_ids([tails[i] for i in rest], should_stop), strict=True):
            if len(ids) <= cap:
                out[i] = (ids, False)
            elif truncate is Truncate.NONE:
                raise too_long(i, str(limit - cap + len(ids)))
            else:
                out[i] = (ids[:cap], True)
        return [o for o in out if o is not None]

    def tokenize_sync(self, params: RerankParams, stop: StopFlag | None = None) -> Tokenized:
        self.check_params(params)
        head = rerank_head(params.instruction, params.query)
        head_ids = self._head_ids(head, stop)
        if self.shares_head:
            shared, tails = head_ids, [rerank_tail(d) for d in params.documents]
        else:  # whole bodies: correct for any tokenizer
            shared, tails = [], [head + rerank_tail(d) for d in params.documents]
        cap, truncate = self.body_limit - len(shared), params.truncate
        if params.max_tokens_per_doc:
            # The document's own cap: what precedes its tokens in a tail (the label; the head too in whole
            # bodies) plus max_tokens_per_doc. Under the model's room it is a cut, never a refusal (Cohere's
            # meaning); over it, the model's limit decides as `truncate` says.
            own = len(head_ids) * (not self.shares_head) + len(self.label_ids) + params.max_tokens_per_doc
            if own < cap:
                cap, truncate = own, Truncate.END
        bodies = self._tail_ids(tails, cap, truncate, stop)
        ids = [[*self.prefix_ids, *shared, *tail, *self.suffix_ids] for tail, _ in bodies]
        tokenized = Tokenized(ids, [cut for _, cut in bodies])
        if tokenized.token_count > self.max_request_tokens:
            raise invalid(
                f"the request has {tokenized.token_count} tokens (the query and the template count once per "
                f"document), more than the limit of {self.max_request_tokens} per request; split the documents",
                "documents",
            )
        return tokenized

    async def tokenize(self, params: RerankParams, deadline: float | None = None) -> Tokenized:
        return await self.run_tokenizer(
            lambda stop: self.tokenize_sync(params, stop), rerank_size(params), deadline, "documents"
        )

    # -- inference --

    async def rerank(self, params: RerankParams, deadline: float) -> RerankResult:
        """`deadline` is a time.monotonic() value; the backend gets the time left."""
        started = time.perf_counter()
        with tracing.stage("tokenize", **{tracing.INPUTS: params.count}):
            tokenized = await self.tokenize(params, deadline)
            tracing.count_tokens(tokenized.token_count)
        tokenized_at = time.perf_counter()
        run = await self.run_model(tokenized.ids, deadline)  # the queue and inference spans, per chunk
        inferred_at = time.perf_counter()
        logits = run.out
        if not np.isfinite(logits).all():
            raise ServiceError(ErrorKind.INTERNAL, "the model returned non-finite logits")
        scores, raw = scores_from_logits(logits)
        hits = [ScoredDocument(i, float(scores[i]), float(raw[i])) for i in ranking(raw, params.top_n)]
        self.metrics.rerank_documents.labels(self.info.served_name).observe(params.count)
        self.record(tokenized_at - started, tokenized.token_count, run)
        return RerankResult(
            hits=hits,
            logits=logits,
            prompt_tokens=tokenized.token_count,
            tokenize_ms=(tokenized_at - started) * 1000,
            inference_ms=(inferred_at - tokenized_at) * 1000,
            total_ms=(time.perf_counter() - started) * 1000,
        )
