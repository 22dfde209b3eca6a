"""The embedding cache (service/pipeline/cache.py) alone and inside the Embedder over a fake backend: it never
returns a vector computed for another key (every key component varied, property tests against the uncached
path), holds its byte bound (measured with tracemalloc, not only its own count), evicts least recently used
first, and a cached request equals the uncached one: vectors, token counts and errors."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import ServiceError
from service.metrics import Metrics
from service.pipeline.cache import EmbeddingCache, Key, entry_bytes
from service.pipeline.embedder import Embedder
from service.pipeline.params import EmbedParams, Encoding, Truncate
from service.pipeline.tokenization import TextTokenizer, load_tokenizer
from tests.unit.test_request_path_units import FakeBackend, info

TRUNCATES = list(Truncate)


def vec(seed: int, width: int = 8) -> bytes:
    return np.random.default_rng(seed).standard_normal(width).astype("<f4").tobytes()


def store_one(cache: EmbeddingCache, key: Key, data: bytes, tokens: int = 3) -> None:
    found = cache.lookup(key[0], key[1], [key[2]], key[3], key[4])
    if found.missing:
        cache.store(found.fill(np.frombuffer(data, dtype="<f4")[None, :], [tokens]))


# ------------------------------------------------------------------------------------------ the cache alone

# Keys that differ in one component only, by as little as possible: another load of the same model, a prefix
# or text one character (or one normalisation form) apart, another truncation mode or per-request limit.
models = st.sampled_from(["1:{}", "2:{}", "1:{} "])
prefixes = st.sampled_from(["", "Instruct: a\nQuery:", "Instruct: a\nQuery: ", "Instruct: b\nQuery:"])
texts = st.sampled_from(["a", "a ", "A", "é", "e\u0301", "a\x00", "text", "text\n"])
keys = st.tuples(models, prefixes, texts, st.sampled_from(TRUNCATES), st.sampled_from([0, 5, 6]))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), keys, st.integers(0, 1000)), max_size=80), bound=st.integers(600, 6000))
def test_a_hit_is_always_the_vector_stored_under_exactly_that_key(ops: list[tuple[bool, Key, int]], bound: int) -> None:
    cache = EmbeddingCache(bound * 16)  # entries are ~400 bytes: from one entry to dozens
    truth: dict[Key, tuple[bytes, int]] = {}
    for write, key, seed in ops:
        if write:
            data, tokens = vec(seed), seed % 50 + 1
            found = cache.lookup(key[0], key[1], [key[2]], key[3], key[4])
            if found.missing:  # a miss: compute and store, as the Embedder does
                cache.store(found.fill(np.frombuffer(data, dtype="<f4")[None, :], [tokens]))
                truth[key] = (data, tokens)
        else:
            found = cache.lookup(key[0], key[1], [key[2]], key[3], key[4])
            if not found.missing:
                assert (found.rows[0], found.tokens[0]) == truth[key], key
        assert cache.bytes <= cache.max_bytes


def test_a_request_looks_up_each_input_and_computes_a_repeated_text_once() -> None:
    cache = EmbeddingCache(1 << 20)
    store_one(cache, ("m", "", "b", Truncate.END, 0), vec(2), tokens=7)
    found = cache.lookup("m", "", ["a", "b", "a", "c", "b"], Truncate.END)
    assert found.missing == ["a", "c"] and found.missing_at == [[0, 2], [3]] and found.hits == 2
    found.fill(np.stack([np.frombuffer(vec(1), "<f4"), np.frombuffer(vec(3), "<f4")]), [4, 5])
    assert found.tokens == [4, 7, 4, 5, 7]
    rows = found.assemble(8)
    for i, seed in enumerate([1, 2, 1, 3, 2]):
        assert rows[i].tobytes() == vec(seed)
    with pytest.raises(ValueError):
        found.fill(np.zeros((1, 8), np.float32), [1])  # two texts were missing, one row is not an answer


def test_least_recently_used_goes_first() -> None:
    key = lambda t: ("m", "", t, Truncate.NONE, 0)  # noqa: E731
    size = entry_bytes(key("a"), vec(0))
    cache = EmbeddingCache(3 * size)  # exactly three one-letter entries
    cache.max_entry_bytes = 3 * size
    for t in "abc":
        store_one(cache, key(t), vec(ord(t)))
    assert len(cache) == 3
    cache.lookup("m", "", ["a"], Truncate.NONE)  # a is now the most recent: b is the oldest
    store_one(cache, key("d"), vec(4))
    assert not cache.lookup("m", "", ["b"], Truncate.NONE).hits
    assert cache.lookup("m", "", ["a", "c", "d"], Truncate.NONE).hits == 3
    store_one(cache, key("e"), vec(5))  # after that lookup the order is a, c, d: a goes
    assert cache.lookup("m", "", ["a", "c", "d", "e"], Truncate.NONE).hits == 3
    assert cache.bytes <= cache.max_bytes


def test_an_entry_over_its_share_of_the_bound_is_not_kept_and_a_model_load_is_dropped_whole() -> None:
    metrics = Metrics()
    cache = EmbeddingCache(64 * 1024, metrics)
    # Not before it serves: the parent of N workers builds the models (and a cache) without serving.
    assert metrics.registry.get_sample_value("qwen3_embed_cache_limit_bytes") == 0
    store_one(cache, ("m", "", "x" * 8000, Truncate.END, 0), vec(1))  # > 64 KiB / 16
    assert len(cache) == 0 and cache.bytes == 0
    for t in "abc":
        store_one(cache, ("old", "", t, Truncate.END, 0), vec(1))
        store_one(cache, ("new", "", t, Truncate.END, 0), vec(2))
    assert cache.drop_model("old") == 3 and len(cache) == 3
    assert cache.lookup("new", "", list("abc"), Truncate.END).hits == 3
    assert cache.lookup("old", "", list("abc"), Truncate.END).hits == 0
    sample = metrics.registry.get_sample_value
    assert sample("qwen3_embed_cache_entries") == 3 and sample("qwen3_embed_cache_bytes") == cache.bytes > 0
    assert sample("qwen3_embed_cache_hits_total") == 3 and sample("qwen3_embed_cache_limit_bytes") == 64 * 1024
    with pytest.raises(ValueError):
        EmbeddingCache(0)


@pytest.mark.parametrize("width", [64, 1024, 4096])
def test_memory_stays_under_the_bound_under_a_unique_text_flood(width: int) -> None:
    """What the process really allocates for the cache (tracemalloc) stays under the bound and under what
    the cache charges itself, with evictions going on, for short texts (where the overhead weighs most)
    and model widths from the dev model's to the 8B's."""
    bound = 2 * 1024 * 1024
    metrics = Metrics()
    row = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = EmbeddingCache(bound, metrics)
        peak_entries = 0
        for i in range(6 * bound // (width * 4 + 100)):  # several times what fits
            found = cache.lookup("m", "Instruct: x\nQuery:", [f"query number {i}"], Truncate.END)
            cache.store(found.fill(row, [5]))
            peak_entries = max(peak_entries, len(cache))
            assert cache.bytes <= bound
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert metrics.registry.get_sample_value("qwen3_embed_cache_evictions_total") > 0
    assert used <= bound, f"{used} bytes allocated for a {bound}-byte cache"
    assert used <= cache.bytes + 64 * 1024, f"{used} allocated, {cache.bytes} charged"  # + fixed-size parts
    assert cache.bytes > bound * 0.9 and len(cache) > 0.9 * peak_entries  # the bound is used, not wasted


# ---------------------------------------------------------------------------------- inside the Embedder


@pytest.fixture(scope="module")
def tokenizer(dev_model_dir: Path) -> TextTokenizer:
    return TextTokenizer(load_tokenizer(dev_model_dir, 151669))


@pytest.fixture(scope="module")
def backends() -> tuple[FakeBackend, FakeBackend]:
    other = FakeBackend(16)
    other.table = other.table[::-1].copy()  # another model: same facts, other weights
    return FakeBackend(16), other


def embedder_of(tokenizer: TextTokenizer, backend: FakeBackend, cache: EmbeddingCache | None) -> Embedder:
    model = Embedder(info(), tokenizer, backend, Metrics(), max_batch_inputs=8, token_budget=64)  # type: ignore[arg-type]
    model.use_cache(cache)
    return model


def run(embedder: Embedder, params: EmbedParams) -> tuple[np.ndarray, int, tuple[int, ...]]:
    result = asyncio.run(embedder.embed(params, time.monotonic() + 30))
    return result.vectors, result.prompt_tokens, result.token_counts


def outcome(embedder: Embedder, params: EmbedParams) -> tuple[np.ndarray, int, tuple[int, ...]] | str:
    try:
        return run(embedder, params)
    except ServiceError as exc:
        return f"{exc.kind}: {exc.message} ({exc.param})"


POOL = ["short", "a somewhat longer text", "中文 text", "word " * 70, "tail " * 30 + "end " * 50, "x"]
request = st.fixed_dictionaries(
    {
        "texts": st.lists(st.sampled_from(POOL), min_size=1, max_size=6).map(tuple),
        "instruction": st.sampled_from(["", "find it", "find it "]),
        "prompt_name": st.sampled_from(["", "query", "document"]),
        "truncate": st.sampled_from([Truncate.END, Truncate.START]),
        "dimensions": st.sampled_from([0, 4, 9, 16]),
        "normalize": st.booleans(),
        # vLLM's truncate_prompt_tokens: a per-request limit under the model's changes the cut, hence the vector
        "max_tokens": st.sampled_from([0, 12, 40]),
        "encoding": st.sampled_from([Encoding.FLOAT, Encoding.INT8, Encoding.BINARY]),
    }
).filter(lambda p: not (p["instruction"] and p["prompt_name"]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=st.lists(st.tuples(st.booleans(), request), min_size=1, max_size=8))
def test_cached_requests_equal_uncached_ones_for_every_key_component(
    tokenizer: TextTokenizer, backends: tuple[FakeBackend, FakeBackend], requests: list[tuple[bool, dict]]
) -> None:
    """Two models (same facts, other weights) share one cache; each request, on either, with any template,
    truncation (texts past the limit, so END and START give other vectors), dimensions and normalisation,
    equals the same request on an uncached embedder of that model: bit for bit, token counts included."""
    cache = EmbeddingCache(1 << 20)
    cached = [embedder_of(tokenizer, b, cache) for b in backends]
    plain = [embedder_of(tokenizer, b, None) for b in backends]
    try:
        for which, fields in requests:
            params = EmbedParams(**fields)
            got, want = outcome(cached[which], params), outcome(plain[which], params)
            if isinstance(want, str) or isinstance(got, str):
                assert got == want  # the same refusal, e.g. int8 of a vector that is not normalised
                continue
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1:] == want[1:]
    finally:
        for model in (*cached, *plain):
            model.close()


def test_a_partly_cached_request_sends_only_its_misses(
    tokenizer: TextTokenizer, backends: tuple[FakeBackend, FakeBackend]
) -> None:
    backend = FakeBackend(16)
    metrics = Metrics()
    cache = EmbeddingCache(1 << 20, metrics)
    model = embedder_of(tokenizer, backend, cache)
    plain = embedder_of(tokenizer, backends[0], None)
    first = EmbedParams(texts=("alpha", "beta"), prompt_name="query")
    run(model, first)
    backend.calls.clear()
    mixed = EmbedParams(texts=("gamma", "alpha", "gamma", "beta", "delta"), prompt_name="query", dimensions=8)
    got = run(model, mixed)
    assert sum(rows for rows, _ in backend.calls) == 2  # gamma once, delta: the hits and the repeat stay home
    want = run(plain, mixed)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:]
    backend.calls.clear()
    again = run(model, mixed)
    assert backend.calls == [] and again[1] == want[1]
    np.testing.assert_array_equal(again[0], want[0])
    sample = metrics.registry.get_sample_value
    assert (sample("qwen3_embed_cache_hits_total"), sample("qwen3_embed_cache_misses_total")) == (2 + 5, 2 + 3)
    # A model load that closes takes its entries along; a new load of the same facts starts empty.
    model.close()
    assert len(cache) == 0
    fresh = embedder_of(tokenizer, backend, cache)
    assert fresh.cache_model != model.cache_model
    run(fresh, mixed)
    assert sum(rows for rows, _ in backend.calls) == 4
    fresh.close()
    plain.close()


@pytest.mark.parametrize(
    ("texts", "truncate", "limit"),
    [
        (("cached one", "cached two", "new", ""), Truncate.END, 1 << 20),  # empty input 3
        (("cached one", "cached two", "word " * 80), Truncate.NONE, 1 << 20),  # input 2 over the model's limit
        (("cached one", "cached two", "new"), Truncate.END, 7),  # 8 tokens: over max_request_tokens
        (("cached one", "cached two", "\ud800"), Truncate.END, 1 << 20),  # a lone surrogate
    ],
)
def test_errors_are_the_uncached_ones_with_cached_inputs_in_the_request(
    tokenizer: TextTokenizer, texts: tuple[str, ...], truncate: Truncate, limit: int
) -> None:
    cache = EmbeddingCache(1 << 20)
    model = embedder_of(tokenizer, FakeBackend(16), cache)
    plain = embedder_of(tokenizer, FakeBackend(16), None)
    run(model, EmbedParams(texts=("cached one", "cached two"), truncate=truncate))
    for m in (model, plain):
        m.max_request_tokens = limit
    params = EmbedParams(texts=texts, truncate=truncate)
    with pytest.raises(ServiceError) as cached_error:
        run(model, params)
    with pytest.raises(ServiceError) as plain_error:
        run(plain, params)
    assert cached_error.value.message == plain_error.value.message
    assert (cached_error.value.kind, cached_error.value.param) == (plain_error.value.kind, plain_error.value.param)
    model.close()
    plain.close()


def test_token_id_input_bypasses_the_cache(tokenizer: TextTokenizer) -> None:
    backend = FakeBackend(16)
    cache = EmbeddingCache(1 << 20)
    model = embedder_of(tokenizer, backend, cache)
    ids = EmbedParams(token_ids=((1, 2, 3), (4, 5)))
    first, second = run(model, ids), run(model, ids)
    np.testing.assert_array_equal(first[0], second[0])
    assert len(cache) == 0 and len(backend.calls) == 2
    model.close()
