"""The request path in-process, without servers: the Embedder over a fake backend, admission, the wire
and JSON pre-checks, and the prefix tokenization that bounds a long input's cost."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from service.admission import Admission
from service.api.grpc.servicer import parse_request
from service.api.grpc.wire import count_field
from service.api.http.json_budget import ValueCounter, count_values
from service.contract import ModelInfo
from service.errors import ErrorKind, ServiceError
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.metrics import Metrics
from service.pipeline.embedder import Embedder
from service.pipeline.params import EmbedParams, Truncate
from service.pipeline.tokenization import StopFlag, Stopped, TextTokenizer, load_tokenizer
from service.pipeline.truncation import fit

EOS = 151643


class FakeBackend:
    """Pools by summing the embedding of each real token id: enough to tell inputs apart and padding
    mistakes from right answers. Records the shapes it was called with."""

    def __init__(self, hidden: int, delay_s: float = 0.0) -> None:
        self.table = np.random.default_rng(0).standard_normal((151669, hidden)).astype(np.float32)
        self.calls: list[tuple[int, int]] = []
        self.delay_s = delay_s

    async def infer(
        self, ids: np.ndarray, mask: np.ndarray, hidden: int, timeout_s: float, priority: object = None
    ) -> np.ndarray:
        self.calls.append(ids.shape)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return np.stack([self.table[row[m == 1]].sum(axis=0) for row, m in zip(ids, mask, strict=True)])


def info(max_tokens: int = 64, hidden: int = 16) -> ModelInfo:
    return ModelInfo(
        triton_name="fake",
        served_name="fake",
        source_model="fake",
        hidden_size=hidden,
        min_dimensions=4,
        max_input_tokens=max_tokens,
        embedding_rows=151669,
        precision="fp32",
        backend="fake",
        prompts={"query": "Instruct: q\nQuery:", "document": ""},
        pad_id=EOS,
        eos_id=EOS,
        max_batch_size=4,
    )


@pytest.fixture(scope="module")
def tokenizer(dev_model_dir: Path) -> TextTokenizer:
    return TextTokenizer(load_tokenizer(dev_model_dir, 151669))


def make_embedder(tokenizer: TextTokenizer, backend: FakeBackend, **kwargs: object) -> Embedder:
    return Embedder(info(), tokenizer, backend, Metrics(), max_batch_inputs=8, token_budget=64, **kwargs)  # type: ignore[arg-type]


def test_embedder_in_process_matches_single_calls(tokenizer: TextTokenizer) -> None:
    backend = FakeBackend(16)
    embedder = make_embedder(tokenizer, backend)
    texts = ("short", "a somewhat longer text " * 3, "中文 text", "x " * 40)
    deadline = time.monotonic() + 10

    async def run() -> tuple[np.ndarray, list[np.ndarray]]:
        batch = await embedder.embed(EmbedParams(texts=texts, truncate=Truncate.END), deadline)
        singles = [
            (await embedder.embed(EmbedParams(texts=(t,), truncate=Truncate.END), deadline)).vectors[0] for t in texts
        ]
        return batch.vectors, singles

    batch, singles = asyncio.run(run())
    for row, single in zip(batch, singles, strict=True):
        np.testing.assert_allclose(row, single, rtol=1e-5, atol=1e-6)
    assert len({tuple(np.round(r, 4)) for r in batch}) == len(texts)
    assert all(rows * width <= 64 or rows == 1 for rows, width in backend.calls)  # the token budget holds
    embedder.close()


def test_embedder_refuses_requests_over_the_token_limit(tokenizer: TextTokenizer) -> None:
    embedder = make_embedder(tokenizer, FakeBackend(16), max_request_tokens=100)
    params = EmbedParams(texts=("word " * 40,) * 4, truncate=Truncate.END)
    with pytest.raises(ServiceError) as err:
        asyncio.run(embedder.embed(params, time.monotonic() + 10))
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and "more than the limit of 100" in err.value.message
    embedder.close()


def test_cancelled_tokenization_stops_its_thread(tokenizer: TextTokenizer) -> None:
    """A large request cancelled mid-tokenization frees the tokenizer thread within one step."""
    embedder = make_embedder(tokenizer, FakeBackend(16), tokenizer_threads=1)
    embedder.max_batch_inputs = 4096
    big = EmbedParams(texts=tuple(f"text number {i} " * 400 for i in range(4096)), truncate=Truncate.START)

    async def run() -> float:
        task = asyncio.create_task(embedder.tokenize(big))
        await asyncio.sleep(0.3)
        task.cancel()
        cancelled_at = time.perf_counter()
        # The only tokenizer thread must be free again soon: a second large request gets through.
        await embedder.tokenize(EmbedParams(texts=("y " * 3000,), truncate=Truncate.END))
        return time.perf_counter() - cancelled_at

    assert asyncio.run(run()) < 2.0
    embedder.close()


@pytest.mark.parametrize("seed", range(3))
def test_head_ids_equal_the_full_tokenization(tokenizer: TextTokenizer, seed: int) -> None:
    rng = random.Random(seed)
    pieces = ["hello", " world", "  ", "\n", "中文", "é", "e\u0301", "<|endoftext|>", "1234", "!!", "\t", "🙂", "don't"]
    for _ in range(20):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(3000, 6000)))
        cap = rng.choice([64, 200, 500])
        head = tokenizer.head_ids(text, cap)
        full = tokenizer.content_ids([text])[0]
        if head is not None:
            assert head == full[:cap]


def test_run_model_shares_the_model_between_requests(tokenizer: TextTokenizer) -> None:
    """The Embedder (and the Reranker: ServedModel.run_model is theirs alike) sends a request's chunks under
    one owner: a short request started after a big one's chunks are queued finishes first."""
    embedder = make_embedder(tokenizer, FakeBackend(16, delay_s=0.02), max_calls_in_flight=1)
    long_text = "word " * 60  # bucket 64 with the budget 64: one row per call
    big = EmbedParams(texts=(long_text,) * 8)
    short = EmbedParams(texts=("hi",))
    finished: list[str] = []

    async def run(name: str, params: EmbedParams) -> None:
        await embedder.embed(params, time.monotonic() + 30)
        finished.append(name)

    async def both() -> None:
        big_task = asyncio.create_task(run("big", big))
        await asyncio.sleep(0.03)  # the big one's first call is out, its other 7 chunks wait
        await run("short", short)
        await big_task

    asyncio.run(both())
    assert finished == ["short", "big"]
    assert len(embedder.backend.calls) == 9  # type: ignore[attr-defined]
    embedder.close()


# Pieces for tail-window texts: cuts land next to each of them (marks that NFC joins, Hangul jamo that compose,
# added tokens, line breaks after punctuation, digits of other scripts, contractions, wide spaces).
TAIL_PIECES = [
    "hello",
    " world",
    "  ",
    "\n",
    "\r\n",
    "中文",
    "。",
    "é",
    "e\u0301",
    "\u0301",
    "<|endoftext|>",
    "<think>",
    "1234",
    "!!",
    "\t",
    "🙂",
    "don't",
    "'S",
    "Ωμέγα",
    "\u3000",
    "...",
    " \n ",
    "x",
    "٣",
    "ｱ",
    "\u200d",
    "ℌ",
    "\u212b",
    "\u1100\u1161",
    "\u11a8",
    "-",
    "’",
    "<|im_start|>",
    "\x00",
    "ﬁ",
]


def random_text(rng: random.Random, pieces: list[str], n: int) -> str:
    weights = [rng.random() ** 3 for _ in pieces]  # skewed mixes: some texts nearly one kind of piece
    return "".join(rng.choices(pieces, weights, k=n))


@pytest.mark.parametrize("seed", range(4))
def test_tail_ids_equal_the_last_tokens_of_the_full_tokenization(tokenizer: TextTokenizer, seed: int) -> None:
    """The reference for START truncation is "tokenize the whole text, keep the last N": a tail window must
    give exactly those ids, whatever the text around its cut, or decline (None)."""
    rng = random.Random(seed)
    used = 0
    for _ in range(30):
        text = random_text(rng, TAIL_PIECES, rng.randint(1500, 6000))
        cap = rng.choice([16, 64, 200, 500])
        tail = tokenizer.tail_ids(text, cap)
        full = tokenizer.content_ids([text])[0]
        if tail is not None:
            used += 1
            assert tail == full[-cap:], f"seed {seed}: tail window differs (cap {cap})"
    assert used >= 15  # windows are really taken on such texts, not declined


def test_tail_ids_decline_what_they_cannot_cut(tokenizer: TextTokenizer) -> None:
    assert tokenizer.tail_ids("short text", 64) is None  # short: tokenized whole
    assert tokenizer.tail_ids("中文" * 5000, 64) is None  # one pre-token: no safe cut anywhere
    assert tokenizer.tail_ids("a\u0301" * 5000, 64) is None  # NFC joins every pair
    stop = StopFlag(time.monotonic() - 1)
    with pytest.raises(Stopped):
        tokenizer.tail_ids("word " * 100_000, 64, stop)


@pytest.mark.parametrize("prompt", ["", "query"])
def test_start_truncation_equals_whole_text_then_last_tokens(tokenizer: TextTokenizer, prompt: str) -> None:
    """tokenize_sync with START (tail windows) against the reference path: the whole templated text
    tokenized, then fit() keeping the instruction's tokens and the last ones."""
    embedder = make_embedder(tokenizer, FakeBackend(16))
    rng = random.Random(7)
    texts = tuple(random_text(rng, TAIL_PIECES, rng.randint(600, 3000)) for _ in range(8))
    params = EmbedParams(texts=texts, truncate=Truncate.START, prompt_name=prompt or None)
    got = embedder.tokenize_sync(params)
    prefix = embedder.info.prompts[prompt] if prompt else ""
    keep = tokenizer.prefix_length(prefix)
    for i, text in enumerate(texts):
        whole = tokenizer.content_ids([prefix + text])[0]
        want, cut = fit(whole, embedder.info.max_input_tokens, Truncate.START, EOS, keep)
        assert got.ids[i] == want and got.truncated[i] == cut
    embedder.close()


def test_a_huge_start_text_costs_a_window_not_its_size(dev_model_dir: Path) -> None:
    """One 15 MB TRUNCATE_START text: the whole-text tokenization cost about 1.7 GB (issue 24); a tail
    window costs a few MB. Peak RSS of a fresh process, wide margin."""
    import subprocess
    import sys

    script = f"""
import resource, time
from service.pipeline.tokenization import StopFlag, Stopped, TextTokenizer, load_tokenizer
from service.pipeline.truncation import fit
from service.pipeline.params import EmbedParams, Truncate
from tests.unit.test_request_path_units import make_embedder, FakeBackend
tok = TextTokenizer(load_tokenizer(__import__("pathlib").Path({str(dev_model_dir)!r}), 151669))
embedder = make_embedder(tok, FakeBackend(16))
text = "The quick brown fox, 42 times. " * 480_000
embedder.tokenize_sync(EmbedParams(texts=("warm " * 400,), truncate=Truncate.START))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = embedder.tokenize_sync(EmbedParams(texts=(text,), truncate=Truncate.START))
print(len(text), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, time.perf_counter() - start)
assert out.truncated == [True] and len(out.ids[0]) == 64
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    size, grown_mib, seconds = result.stdout.split()
    print(f"\n{int(size) / 1e6:.1f} MB START text: peak RSS +{grown_mib} MiB, {float(seconds):.2f} s")
    assert int(grown_mib) < 300


def test_admission_reserves_slots_for_unary_calls() -> None:
    async def run() -> None:
        admission = Admission(4, Metrics())
        held: list[asyncio.Task[None]] = []
        release = asyncio.Event()

        async def stream_message() -> None:
            async with admission.stream():
                await release.wait()

        for _ in range(6):
            held.append(asyncio.create_task(stream_message()))
        await asyncio.sleep(0.05)
        assert admission.stream_in_use == 3  # a quarter of the capacity stays for unary calls
        async with admission.unary():
            with pytest.raises(ServiceError) as err:
                async with admission.unary():
                    pass
            assert err.value.kind is ErrorKind.RESOURCE_EXHAUSTED
        release.set()
        await asyncio.gather(*held)
        assert admission.in_use == 0

    asyncio.run(run())


def test_wire_count_stops_early_and_matches_protobuf() -> None:
    request = pb.EmbedRequest(inputs=["a", "bb", ""], instruction="x" * 300, dimensions=64, request_id="r")
    raw = request.SerializeToString()
    assert count_field(raw, 1, 100) == 3
    huge = b"\x0a\x01a" * 1_000_000
    start = time.perf_counter()
    assert count_field(huge, 1, 2048) == 2049
    assert time.perf_counter() - start < 0.1  # stops past the limit instead of walking 3 MB
    with pytest.raises(ServiceError, match="more than the limit of 2048"):
        parse_request(huge, pb.EmbedRequest, 2048)
    with pytest.raises(ServiceError, match="not a valid EmbedRequest"):
        parse_request(b"\x0a\x05ab", pb.EmbedRequest, 2048)
    assert parse_request(raw, pb.EmbedRequest, 2048) == request


def _values(o: object) -> int:
    if isinstance(o, dict):
        return 1 + sum(1 + _values(v) for v in o.values())
    if isinstance(o, list):
        return 1 + sum(_values(v) for v in o)
    return 1


def test_json_value_count_is_exact_across_chunks() -> None:
    rng = random.Random(7)

    def gen(depth: int = 0) -> object:
        r = rng.random()
        if depth > 3 or r < 0.4:
            return rng.choice([rng.randint(-9, 10**9), rng.random() * 1e9, None, True, False, "".join(
                rng.choice('ab"\\,[]{} 1é') for _ in range(rng.randint(0, 8))
            )])  # fmt: skip
        if r < 0.7:
            return [gen(depth + 1) for _ in range(rng.randint(0, 4))]
        return {"".join(rng.choice('k"\\1') for _ in range(3)): gen(depth + 1) for _ in range(rng.randint(0, 4))}

    for _ in range(300):
        doc = gen()
        body = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
        counter = ValueCounter()
        step = rng.randint(1, 7)
        for i in range(0, len(body), step):
            counter.feed(body[i : i + step])
        assert counter.total == count_values(body) == _values(doc)
