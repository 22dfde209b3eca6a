"""The rerank request path in-process: Qwen3-Reranker's template, the shared-head tokenization (a property
test on the real Qwen tokenizer), truncation, validation, scores, order and top_n, over a fake backend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.qwen_tokenizer_offline import save_tokenizer
from service.contract import (
    DEFAULT_RERANK_INSTRUCTION,
    RERANK_PREFIX,
    RERANK_SUFFIX,
    ModelInfo,
    rerank_body,
)
from service.errors import ErrorKind, ServiceError
from service.metrics import Metrics
from service.pipeline.params import RerankParams, Truncate
from service.pipeline.reranker import (
    Reranker,
    ranking,
    rerank_head,
    rerank_tail,
    scores_from_logits,
    sigmoid,
)
from service.pipeline.tokenization import TextTokenizer, load_tokenizer

PAD = 151643
ROWS = 151669


class FakeLogits:
    """[no, yes] logits from the real token ids: a sum of per-token values, position-weighted so order
    matters. Records every call's ids and mask."""

    def __init__(self, nonfinite: bool = False) -> None:
        rng = np.random.default_rng(1)
        self.table = rng.standard_normal((ROWS, 2)).astype(np.float32) * 0.05
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.nonfinite = nonfinite

    def logits_of(self, seq: list[int]) -> np.ndarray:
        weights = np.linspace(1.0, 2.0, len(seq), dtype=np.float32)[:, None]
        return (self.table[np.asarray(seq)] * weights).sum(axis=0)

    async def infer(
        self, ids: np.ndarray, mask: np.ndarray, width: int, timeout_s: float, priority: object = None
    ) -> np.ndarray:
        assert width == 2
        self.calls.append((ids.copy(), mask.copy()))
        out = np.stack([self.logits_of(row[m == 1].tolist()) for row, m in zip(ids, mask, strict=True)])
        if self.nonfinite:
            out[0, 0] = np.nan
        return out.astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    """The real Qwen3 tokenizer, offline, loaded the way the service loads a model's tokenizer."""
    directory: Path = tmp_path_factory.mktemp("qwen-tokenizer")
    save_tokenizer(directory)
    return TextTokenizer(load_tokenizer(directory, ROWS))


def reranker_info(tokenizer: TextTokenizer, max_tokens: int = 256, padding_side: str = "right") -> ModelInfo:
    tok = tokenizer.tokenizer
    return ModelInfo(
        triton_name="qwen3_reranker",
        served_name="fake-reranker",
        source_model="fake/Qwen3-Reranker",
        hidden_size=64,
        max_input_tokens=max_tokens,
        embedding_rows=ROWS,
        pad_id=PAD,
        eos_id=PAD,
        max_batch_size=4,
        padding_side=padding_side,
        kind="reranker",  # type: ignore[arg-type]
        rerank_token_ids=f"{tok.token_to_id('no')},{tok.token_to_id('yes')}",
    )


def make(tokenizer: TextTokenizer, backend: FakeLogits | None = None, **kwargs: object) -> Reranker:
    info_kwargs = {k: kwargs.pop(k) for k in ("max_tokens", "padding_side") if k in kwargs}
    values: dict[str, object] = {"max_batch_inputs": 8, "token_budget": 512, **kwargs}
    return Reranker(
        reranker_info(tokenizer, **info_kwargs),  # type: ignore[arg-type]
        tokenizer,
        backend or FakeLogits(),
        Metrics(),
        **values,  # type: ignore[arg-type]
    )


def ids(tokenizer: TextTokenizer, text: str) -> list[int]:
    return tokenizer.content_ids([text])[0]


def official_sequence(tokenizer: TextTokenizer, instruction: str, query: str, document: str, limit: int) -> list[int]:
    """The official usage, literally: prefix ids + body ids (tokenized alone, cut at its end) + suffix ids."""
    prefix, suffix = ids(tokenizer, RERANK_PREFIX), ids(tokenizer, RERANK_SUFFIX)
    body = ids(tokenizer, rerank_body(instruction, query, document))[: limit - len(prefix) - len(suffix)]
    return prefix + body + suffix


def run(reranker: Reranker, params: RerankParams) -> object:
    return asyncio.run(reranker.rerank(params, time.monotonic() + 30))


def refused(reranker: Reranker, params: RerankParams) -> ServiceError:
    with pytest.raises(ServiceError) as err:
        run(reranker, params)
    return err.value


# -- template --


@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_head_and_tail_spell_the_official_body(instruction: str, query: str, document: str) -> None:
    assert rerank_head(instruction, query) + rerank_tail(document) == rerank_body(instruction, query, document)


def test_default_instruction_and_template_text() -> None:
    assert rerank_body("", "q", "d") == f"<Instruct>: {DEFAULT_RERANK_INSTRUCTION}\n<Query>: q\n<Document>: d"
    assert RERANK_PREFIX.startswith("<|im_start|>system\n") and RERANK_PREFIX.endswith("<|im_start|>user\n")
    assert RERANK_SUFFIX == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_template_ids_are_the_chat_tokens(tokenizer: TextTokenizer) -> None:
    reranker = make(tokenizer)
    tok = tokenizer.tokenizer
    assert reranker.prefix_ids[0] == tok.token_to_id("<|im_start|>")
    assert tok.token_to_id("<|im_end|>") in reranker.prefix_ids
    assert reranker.suffix_ids[0] == tok.token_to_id("<|im_end|>")
    assert tok.token_to_id("<think>") in reranker.suffix_ids and tok.token_to_id("</think>") in reranker.suffix_ids
    assert reranker.shares_head
    assert reranker.body_limit == 256 - len(reranker.prefix_ids) - len(reranker.suffix_ids)
    reranker.close()


# -- the shared head: head ids + tail ids == ids of the whole body --

PIECES = [
    "hello", " world", "  ", " ", "\n", "\r\n", "\r", "\t", "\u00a0", "\u3000", "\u200b", "中文", "。", "é", "e\u0301",
    "\u0301", "\u0308", "x\u0308", "1234", "!!", "?", ":", "<", ">", "'s", "don't", "🙂", "👍🏽",
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<Document>", "<Query>: ", "\n<",
]  # fmt: skip
pieced = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
texts = st.one_of(st.text(max_size=40), pieced, st.tuples(st.text(max_size=10), pieced).map("".join))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=texts, query=texts, document=texts)
def test_shared_head_tokenization_equals_whole_body(
    tokenizer: TextTokenizer, instruction: str, query: str, document: str
) -> None:
    body = rerank_body(instruction, query, document)
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates are refused before tokenization
    head = ids(tokenizer, rerank_head(instruction, query))
    tail = ids(tokenizer, rerank_tail(document))
    assert head + tail == ids(tokenizer, body)


# -- sequences, padding, batching --


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_sequences_are_the_official_ones_padded_on_the_model_side(tokenizer: TextTokenizer, padding_side: str) -> None:
    backend = FakeLogits()
    reranker = make(tokenizer, backend, padding_side=padding_side, token_budget=128)
    docs = ("short", "中文文档，讲的是北京。", "def f(x):\n    return x * 2\n", "word " * 60, "x", "  spaced  ")
    instruction = "Given a question, retrieve code that answers it"
    tokenized = reranker.tokenize_sync(RerankParams(query="What is f?", documents=docs, instruction=instruction))
    for doc, seq in zip(docs, tokenized.ids, strict=True):
        assert seq == official_sequence(tokenizer, instruction, "What is f?", doc, 256)
    result = run(reranker, RerankParams(query="What is f?", documents=docs, instruction=instruction))
    seen: dict[tuple[int, ...], bool] = {}
    for batch, mask in backend.calls:
        assert batch.shape[0] * batch.shape[1] <= 128 or batch.shape[0] == 1  # the token budget holds
        for row, m in zip(batch, mask, strict=True):
            real = np.flatnonzero(m)
            assert real.size and (real == np.arange(real[0], real[0] + real.size)).all()  # contiguous
            assert (real[0] == 0) if padding_side == "right" else (real[-1] == m.size - 1)
            assert (row[m == 0] == PAD).all()
            seen[tuple(row[m == 1].tolist())] = True
    assert set(seen) == {tuple(s) for s in tokenized.ids}
    assert result.prompt_tokens == tokenized.token_count  # type: ignore[attr-defined]
    reranker.close()


def test_scores_order_top_n_and_indices(tokenizer: TextTokenizer) -> None:
    backend = FakeLogits()
    reranker = make(tokenizer, backend)
    docs = tuple(f"document number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(7))
    params = RerankParams(query="pets", documents=docs)
    full = run(reranker, params)
    seqs = reranker.tokenize_sync(params).ids
    logits = np.stack([backend.logits_of(s) for s in seqs]).astype(np.float64)
    raw = logits[:, 1] - logits[:, 0]
    expected = 1 / (1 + np.exp(-raw))
    hits = full.hits  # type: ignore[attr-defined]
    assert [h.index for h in hits] == sorted(range(7), key=lambda i: -expected[i])
    for h in hits:
        assert abs(h.score - expected[h.index]) <= 1e-6 and abs(h.raw_score - raw[h.index]) <= 1e-5
    top = run(reranker, RerankParams(query="pets", documents=docs, top_n=3)).hits  # type: ignore[attr-defined]
    assert [h.index for h in top] == [h.index for h in hits[:3]]
    assert len(run(reranker, RerankParams(query="pets", documents=docs, top_n=99)).hits) == 7  # type: ignore[attr-defined]
    reranker.close()


def test_score_formula_and_stable_ties() -> None:
    logits = np.array([[0.0, 0.0], [1.0, 3.0], [2.0, -1.0], [0.5, 0.5], [-40.0, 40.0], [60.0, -60.0]], np.float32)
    scores, raw = scores_from_logits(logits)
    np.testing.assert_allclose(raw, [0, 2, -3, 0, 80, -120])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-raw)), rtol=1e-12)
    assert np.isfinite(sigmoid(np.array([-1e4, 1e4]))).all()
    # log_softmax over (no, yes), exp of yes: the official formula, the same number.
    log_softmax = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(np.exp(log_softmax[:4, 1]), scores[:4], rtol=1e-6)
    assert ranking(raw, 0) == [4, 1, 0, 3, 2, 5]  # 0 and 3 tie: input order
    assert ranking(raw, 2) == [4, 1]


def test_whole_body_fallback_gives_the_same_sequences(tokenizer: TextTokenizer) -> None:
    reranker = make(tokenizer)
    params = RerankParams(query="q?\n", documents=("a", "  b", "<|im_end|>c"), instruction="Find")
    shared = reranker.tokenize_sync(params).ids
    reranker.shares_head = False
    assert reranker.tokenize_sync(params).ids == shared
    reranker.close()


# -- truncation --


def test_truncation_none_names_the_document_and_end_cuts_like_the_official_usage(tokenizer: TextTokenizer) -> None:
    reranker = make(tokenizer)
    docs = ("fits", "too long " * 200, "fits too")
    err = refused(reranker, RerankParams(query="q", documents=docs))
    assert err.kind is ErrorKind.INVALID_ARGUMENT and err.param == "documents"
    assert "document 1 " in err.message and "256" in err.message
    tokenized = reranker.tokenize_sync(RerankParams(query="q", documents=docs, truncate=Truncate.END))
    assert tokenized.truncated == [False, True, False]
    for doc, seq in zip(docs, tokenized.ids, strict=True):
        assert seq == official_sequence(tokenizer, "", "q", doc, 256)
    assert len(tokenized.ids[1]) == 256
    reranker.close()


def test_huge_documents_are_bounded_and_exact(tokenizer: TextTokenizer) -> None:
    """A 2 MB document costs a prefix encode, not a full one; its cut equals the full tokenization's."""
    reranker = make(tokenizer)
    huge = "The quick brown fox jumps over the lazy dog. 中文 " * 40_000
    started = time.perf_counter()
    err = refused(reranker, RerankParams(query="fox", documents=("ok", huge)))
    assert "document 1 " in err.message
    tokenized = reranker.tokenize_sync(RerankParams(query="fox", documents=("ok", huge), truncate=Truncate.END))
    assert time.perf_counter() - started < 2.0
    prefix_of_huge = huge[:20_000]  # far more than 256 tokens: the cut lies inside it
    assert tokenized.ids[1] == official_sequence(tokenizer, "", "fox", prefix_of_huge, 256)
    reranker.close()


def test_start_truncation_is_refused(tokenizer: TextTokenizer) -> None:
    reranker = make(tokenizer)
    err = refused(reranker, RerankParams(query="q", documents=("d",), truncate=Truncate.START))
    assert err.param == "truncate" and "END" in err.message
    reranker.close()


# -- validation --


@pytest.mark.parametrize(
    ("params", "param", "fragment"),
    [
        (RerankParams(query="q", documents=()), "documents", "no documents"),
        (RerankParams(query="q", documents=("d",) * 9), "documents", "9 documents"),
        (RerankParams(query="", documents=("d",)), "query", "query is empty"),
        (RerankParams(query="q", documents=("d", "")), "documents", "document 1 is an empty string"),
        (RerankParams(query="q\ud800", documents=("d",)), "query", "lone surrogate"),
        (RerankParams(query="q", documents=("d", "x\udc00")), "documents", "document 1 is not valid Unicode"),
        (RerankParams(query="q", documents=("d",), instruction="   "), "instruction", "blank"),
        (RerankParams(query="q", documents=("d",), top_n=-1), "top_n", "top_n"),
        (RerankParams(query="word " * 300, documents=("d",), truncate=Truncate.END), "query", "no room"),
        (RerankParams(query="word " * 10**6, documents=("d",)), "query", "no room"),
    ],
)
def test_invalid_requests_are_refused_by_name(
    tokenizer: TextTokenizer, params: RerankParams, param: str, fragment: str
) -> None:
    reranker = make(tokenizer)
    err = refused(reranker, params)
    assert err.kind is ErrorKind.INVALID_ARGUMENT and err.param == param and fragment in err.message
    assert "word word" not in err.message  # never echoes the input
    reranker.close()


def test_request_token_limit_counts_every_sequence(tokenizer: TextTokenizer) -> None:
    reranker = make(tokenizer, max_request_tokens=200)
    err = refused(reranker, RerankParams(query="q", documents=("a", "b", "c", "d")))
    assert err.param == "documents" and "more than the limit of 200" in err.message
    reranker.close()


def test_non_finite_logits_are_internal(tokenizer: TextTokenizer) -> None:
    reranker = make(tokenizer, FakeLogits(nonfinite=True))
    assert refused(reranker, RerankParams(query="q", documents=("d", "e"))).kind is ErrorKind.INTERNAL
    reranker.close()


def test_a_tokenizer_whose_yes_no_ids_differ_is_refused(tokenizer: TextTokenizer) -> None:
    info = reranker_info(tokenizer)
    wrong = ModelInfo(**{**info.__dict__, "rerank_token_ids": "1,2"})
    with pytest.raises(ValueError, match="do not match"):
        Reranker(wrong, tokenizer, FakeLogits(), Metrics(), max_batch_inputs=8)


# -- the APIs' translation (no server) --


def test_grpc_wire_precheck_counts_documents_before_parsing() -> None:
    from service.api.grpc.servicer import parse_rerank
    from service.gen.embedding.v1 import embedding_pb2 as pb

    raw = pb.RerankRequest(query="q" * 100, documents=["d"] * 50, instruction="i", top_n=3).SerializeToString()
    params = parse_rerank(raw, 50)
    assert params.count == 50 and params.top_n == 3 and params.query == "q" * 100 and params.truncate is Truncate.NONE
    with pytest.raises(ServiceError) as err:
        parse_rerank(raw, 49)
    assert err.value.param == "documents" and "49 documents" in err.value.message
    with pytest.raises(ServiceError) as err:
        parse_rerank(b"\xff\xff\xff", 10)
    assert "not a valid RerankRequest" in err.value.message


def test_http_shapes_translate_to_the_same_params() -> None:
    from service.api.http.rerank import params_from_cohere, params_from_tei
    from service.api.http.schemas import RerankRequest, TeiRerankRequest
    from service.api.http.wire import inline_schema

    cohere = RerankRequest.model_validate_json(
        '{"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": true, "truncate": "END"}'
    )
    params = params_from_cohere(cohere)
    assert params.documents == ("a", "b") and params.top_n == 1 and params.return_documents
    assert params.truncate is Truncate.END and params.model == "" and not params.raw_scores
    tei = params_from_tei(TeiRerankRequest.model_validate_json('{"query": "q", "texts": ["a"], "truncate": true}'))
    assert tei.truncate is Truncate.END and tei.documents == ("a",)
    with pytest.raises(ServiceError) as err:
        params_from_tei(
            TeiRerankRequest.model_validate_json(
                '{"query": "q", "texts": ["a"], "truncate": true, "truncation_direction": "Left"}'
            )
        )
    assert err.value.param == "truncation_direction"
    assert "$ref" not in str(inline_schema(RerankRequest)) and "$defs" not in str(inline_schema(RerankRequest))


def per_document_cap_sequence(
    tokenizer: TextTokenizer, query: str, document: str, tokens: int, limit: int
) -> list[int]:
    """Cohere v2's max_tokens_per_doc, spelt on the whole official body: everything before the document's own
    tokens (the head and the `<Document>:` label) plus at most `tokens` of them, then the model's limit."""
    prefix, suffix = ids(tokenizer, RERANK_PREFIX), ids(tokenizer, RERANK_SUFFIX)
    before = len(ids(tokenizer, rerank_head("", query))) + len(ids(tokenizer, "<Document>:"))
    body = ids(tokenizer, rerank_body("", query, document))[: before + tokens]
    return prefix + body[: limit - len(prefix) - len(suffix)] + suffix


@pytest.mark.parametrize("shares_head", [True, False])
def test_max_tokens_per_doc_cuts_each_document_and_never_refuses(tokenizer: TextTokenizer, shares_head: bool) -> None:
    reranker = make(tokenizer)
    reranker.shares_head = shares_head
    docs = ("short", "a longer document of several words, " * 3, "too long " * 200)
    for cap in (1, 5, 40):
        tokenized = reranker.tokenize_sync(RerankParams(query="q", documents=docs, max_tokens_per_doc=cap))
        for doc, seq in zip(docs, tokenized.ids, strict=True):
            assert seq == per_document_cap_sequence(tokenizer, "q", doc, cap, 256)
        assert tokenized.truncated == [len(ids(tokenizer, " " + d)) > cap for d in docs]
    # A cap over the model's room: the model's limit decides, as `truncate` says.
    err = refused(reranker, RerankParams(query="q", documents=docs, max_tokens_per_doc=4096))
    assert err.param == "documents" and "document 2 " in err.message
    big = reranker.tokenize_sync(
        RerankParams(query="q", documents=docs, max_tokens_per_doc=4096, truncate=Truncate.END)
    )
    assert big.ids[2] == official_sequence(tokenizer, "", "q", docs[2], 256)
    assert (
        refused(reranker, RerankParams(query="q", documents=docs, max_tokens_per_doc=-1)).param == "max_tokens_per_doc"
    )
    reranker.close()
