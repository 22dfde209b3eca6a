"""One valid request cannot monopolise a model: a maximal request's Triton calls take turns with a short
request's, so the short one waits for about one call (the slice), not for the whole big request. Real facade
(its request limits lowered so that a maximal request is 32 full Triton calls), the session's real Triton,
vectors compared with the reference. Figures: docs/reliability.md, "Fair share between requests"."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from tokenizers import Tokenizer

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.conftest import TEST_MAX_BATCH, TEST_MAX_TOKENS
from tests.helpers import Facade, cosine, vectors

# A maximal request under this facade's limits: MAX_INPUTS inputs of TEST_MAX_TOKENS tokens (the export's
# longest input) = MAX_INPUTS / TEST_MAX_BATCH full Triton calls of TEST_MAX_BATCH x TEST_MAX_TOKENS tokens.
MAX_INPUTS = 32 * TEST_MAX_BATCH
CALL_TOKENS = TEST_MAX_BATCH * TEST_MAX_TOKENS
IN_FLIGHT = 2  # the default triton_calls_in_flight
# Wide: the shared CPUs make every time noisy; the bound checked is a multiple of the measured slice. Without
# the fair share the short request waits for about MAX_INPUTS / TEST_MAX_BATCH / IN_FLIGHT = 16 slices.
MARGIN = 2.0
WORDS = [
    "river",
    "stone",
    "quiet",
    "market",
    "lantern",
    "orbit",
    "velvet",
    "harbor",
    "thunder",
    "maple",
    "circuit",
    "ember",
    "glacier",
]


@pytest.fixture(scope="module")
def fair(model_repository: Path, triton: Any, logs_dir: Path) -> Iterator[Facade]:
    from devtools.launch import launch_facade

    env = {
        "QWEN3_EMBED_MAX_BATCH_INPUTS": str(MAX_INPUTS),
        "QWEN3_EMBED_MAX_REQUEST_TOKENS": str(MAX_INPUTS * TEST_MAX_TOKENS),
        "QWEN3_EMBED_TOKEN_BUDGET": str(CALL_TOKENS),
        "QWEN3_EMBED_TRITON_CALLS_IN_FLIGHT": str(IN_FLIGHT),
        "QWEN3_EMBED_DRAIN_SECONDS": "2",
    }
    with launch_facade(model_repository, triton.grpc_url, logs_dir, env=env) as running:
        yield running


def long_texts(model_dir: Path, count: int) -> list[str]:
    """`count` distinct texts of exactly TEST_MAX_TOKENS tokens with the EOS (the longest valid input)."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    out = []
    for k in range(count):
        words = [WORDS[(i * (k + 3) + k) % len(WORDS)] + str(i % 7) for i in range(TEST_MAX_TOKENS)]
        lo, hi = 1, len(words)
        while lo < hi:  # the most words whose tokens fit TEST_MAX_TOKENS - 1 (the EOS is the last)
            mid = (lo + hi + 1) // 2
            n = len(tok.encode(" ".join(words[:mid]), add_special_tokens=False).ids)
            lo, hi = (mid, hi) if n <= TEST_MAX_TOKENS - 1 else (lo, mid - 1)
        text = " ".join(words[:lo])
        assert len(tok.encode(text, add_special_tokens=False).ids) > TEST_MAX_TOKENS - 8
        out.append(text)
    return out


def triton_calls(base_url: str) -> float:
    """Triton calls the facade made at the longest bucket (its metrics)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    pattern = rf'^qwen3_embed_triton_requests_total\{{bucket="{TEST_MAX_TOKENS}"\}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@dataclass
class Side:
    """What one side-by-side run measured."""

    slice_s: float  # one full Triton call (TEST_MAX_BATCH sequences of the longest bucket) alone, median of 3
    alone_s: float  # the short request alone, median of 3
    big_s: float  # the maximal request, short one beside it
    short_s: float  # the short request, sent once the maximal one's calls are running
    left_s: float  # how long the maximal request still ran after the short one was answered
    big: Any
    short: Any

    def report(self, what: str) -> None:
        bound = self.bound_s
        print(
            f"\n{what}: slice (one {TEST_MAX_BATCH}x{TEST_MAX_TOKENS} call alone) {self.slice_s * 1000:.0f} ms; "
            f"short alone {self.alone_s * 1000:.0f} ms; maximal request ({MAX_INPUTS} x {TEST_MAX_TOKENS} tokens, "
            f"{MAX_INPUTS // TEST_MAX_BATCH} calls) {self.big_s * 1000:.0f} ms; short beside it "
            f"{self.short_s * 1000:.0f} ms, the maximal one ran {self.left_s * 1000:.0f} ms longer; "
            f"bound (calls in flight + 1) x slice + alone = {bound * 1000:.0f} ms"
        )

    @property
    def bound_s(self) -> float:
        return (IN_FLIGHT + 1) * self.slice_s + self.alone_s


def side_by_side(
    base_url: str, slice_call: Callable[[], Any], big: Callable[[], Any], short: Callable[[], Any]
) -> Side:
    def timed(call: Callable[[], Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        result = call()
        return result, time.perf_counter() - start

    timed(short)  # warm
    slice_s = statistics.median(timed(slice_call)[1] for _ in range(3))
    alone_s = statistics.median(timed(short)[1] for _ in range(3))
    done: dict[str, float] = {}
    results: dict[str, Any] = {}

    def run_big() -> None:
        results["big"], _ = timed(big)
        done["big"] = time.perf_counter()

    before = triton_calls(base_url)
    big_thread = threading.Thread(target=run_big)
    big_started = time.perf_counter()
    big_thread.start()
    # The short request arrives once the big one's calls are running (a call is counted when it returns: by
    # then the rest of the big request's chunks are queued).
    deadline = time.monotonic() + 120
    while triton_calls(base_url) <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "big" not in done, "the big request finished before the short one was sent: raise MAX_INPUTS"
    results["short"], short_s = timed(short)
    done["short"] = time.perf_counter()
    big_thread.join(300)
    assert "big" in done, "the maximal request did not finish"
    return Side(
        slice_s, alone_s, done["big"] - big_started, short_s, done["big"] - done["short"], results["big"],
        results["short"],
    )  # fmt: skip


def assert_bounded(side: Side) -> None:
    # Answered while the maximal request still had most of its calls to make (first come, first served: at
    # most its last call or so, as the short one's call went out beside it).
    assert side.left_s >= 3 * side.slice_s, "the short request waited for (nearly) the whole maximal request"
    assert side.short_s <= MARGIN * side.bound_s, f"short request took {side.short_s:.2f} s, bound {side.bound_s:.2f} s"


def test_a_maximal_request_delays_a_short_one_by_about_one_call(
    fair: Facade, dev_model_dir: Path, reference: Any
) -> None:
    distinct = long_texts(dev_model_dir, 4)
    big_inputs = [distinct[i % len(distinct)] for i in range(MAX_INPUTS)]
    short = ["what is the capital of France?"]
    with grpc.insecure_channel(fair.target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = fair.stub(channel)

        def embed(inputs: list[str]) -> Callable[[], pb.EmbedResponse]:
            return lambda: stub.Embed(pb.EmbedRequest(inputs=inputs), timeout=300)

        side = side_by_side(fair.base_url, embed(big_inputs[:TEST_MAX_BATCH]), embed(big_inputs), embed(short))
    side.report("embed")
    assert_bounded(side)

    # Both answered correctly, every row its own request's: against the reference.
    ref = reference.encode(distinct + short)
    big_vectors = vectors(side.big)
    assert big_vectors.shape[0] == MAX_INPUTS
    for i, row in enumerate(big_vectors):
        assert cosine(row, ref[i % len(distinct)]) >= 0.99999, f"big request row {i}"
    assert cosine(vectors(side.short)[0], ref[-1]) >= 0.99999


def test_a_maximal_rerank_delays_a_short_one_by_about_one_call(fair: Facade, dev_reranker_dir: Path) -> None:
    """Rerank amplifies (the query is in every document's sequence: a few KB of body, about
    MAX_INPUTS x TEST_MAX_TOKENS tokens of Triton work); its calls take turns the same way."""
    from tests.service.test_rerank_api import Reference

    reference = Reference(dev_reranker_dir, TEST_MAX_TOKENS)
    query = long_texts(dev_reranker_dir, 1)[0]
    words = query.split()
    # A query that leaves room for a short document, so every sequence lands in the longest bucket (past 432).
    documents = [f"document {i % 4}: {WORDS[i % 4]}" for i in range(MAX_INPUTS)]
    for keep in range(len(words), 0, -1):
        query = " ".join(words[:keep])
        lengths = [reference.untruncated_length("", query, d) for d in documents[:4]]
        if max(lengths) <= TEST_MAX_TOKENS - 16:
            break
    assert min(lengths) > 440, lengths
    short_query, short_docs = "capital of France?", ["Paris is the capital of France.", "Bananas are yellow."]
    with grpc.insecure_channel(fair.target) as channel:
        stub = fair.stub(channel)

        def rerank(q: str, docs: list[str]) -> Callable[[], pb.RerankResponse]:
            return lambda: stub.Rerank(pb.RerankRequest(query=q, documents=docs), timeout=300)

        side = side_by_side(
            fair.base_url, rerank(query, documents[:TEST_MAX_BATCH]), rerank(query, documents),
            rerank(short_query, short_docs),
        )  # fmt: skip
    side.report("rerank")
    assert_bounded(side)

    def by_index(response: pb.RerankResponse) -> list[float]:
        scores = [0.0] * len(response.results)
        for r in response.results:
            scores[r.index] = r.score
        return scores

    big_want = reference.scores("", query, documents[:4])
    big_got = by_index(side.big)
    assert len(big_got) == MAX_INPUTS
    for i, score in enumerate(big_got):
        assert abs(score - big_want[i % 4]) <= 1e-5, f"big rerank document {i}"
    short_want = reference.scores("", short_query, short_docs)
    assert max(abs(a - b) for a, b in zip(by_index(side.short), short_want, strict=True)) <= 1e-5


def test_truncate_start_of_a_long_text_equals_the_reference(fair: Facade, reference: Any) -> None:
    """TRUNCATE_START tokenizes only a tail window of a long text (tokenization.tail_ids); the vector equals
    the reference's: sentence-transformers truncating on the left (the whole text tokenized, the last tokens
    kept, then the EOS)."""
    pieces = ["Résumé of 2024: ", "数字 123，中文。", "don't stop\n", "e\u0301t\u00e9 ", "<|endoftext|> ", "🙂 ok; "]
    texts = ["".join(pieces[(i * 7 + k) % len(pieces)] for i in range(3000 + 500 * k)) for k in range(3)]
    with grpc.insecure_channel(fair.target) as channel:
        response = fair.stub(channel).Embed(pb.EmbedRequest(inputs=texts, truncate=pb.TRUNCATE_START), timeout=120)
    assert response.usage.prompt_tokens == len(texts) * TEST_MAX_TOKENS
    side, length = reference.tokenizer.truncation_side, reference.max_seq_length
    try:
        reference.tokenizer.truncation_side, reference.max_seq_length = "left", TEST_MAX_TOKENS
        ref = reference.encode(texts)
    finally:
        reference.tokenizer.truncation_side, reference.max_seq_length = side, length
    for got, want in zip(vectors(response), ref, strict=True):
        assert cosine(got, want) >= 0.99999
