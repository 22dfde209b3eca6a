"""The embedding cache: a request's texts already embedded by the same model load skip tokenization and Triton.

What is stored: per (model load, templated prefix, text, truncation mode) the model's full float32 pooled vector,
before Matryoshka slicing and normalisation, and the input's token count (usage stays exact on a hit).
Dimensions, normalisation and the wire encoding are pure functions of that vector (postprocess.finalize,
encoding.pack), applied after the cache exactly as on the uncached path: one entry answers every variant of
them, and a hit returns the same bytes a miss would have (same row in, same functions).

Keys are compared whole: the dict key is the tuple itself, so Python compares the full key on every hash match
and a vector computed for another key is never returned. The model part of the key (`model_key`) is unique to
one Embedder, i.e. one load of one model's facts: an export that changes anything Triton's config says (source,
revision, precision, width, prompts, limits) makes the facade build a new Embedder, whose key has never been
seen; the retired one's entries are dropped when it closes and age out under LRU before that.

Bounded in bytes: each entry is charged the memory it holds (key strings, vector bytes object, entry tuples, its
share of the dict) measured with sys.getsizeof plus ENTRY_OVERHEAD for the dict and linked-list slots
(tests/unit/test_embedding_cache.py measures the real allocation against the charge with tracemalloc). Least
recently used entries go first. Used from the event loop; a lock makes it safe from threads too."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from service.pipeline.params import Truncate

# Per-entry memory not visible to sys.getsizeof: the OrderedDict's hash-table slot and index (up to twice the
# steady size just after a resize) and its linked-list node. Measured on CPython 3.11 at about 100-150 bytes;
# charged with a margin so the bound holds over, never under.
ENTRY_OVERHEAD = 256
# No single entry may take more than this share of the bound: one long document must not flush many queries.
MAX_ENTRY_SHARE = 16

# (model load, prefix, text, truncation mode, per-request token limit: 0 = the model's)
Key = tuple[str, str, str, Truncate, int]

_LOADS = itertools.count(1)


def model_key(identity: dict[str, Any]) -> str:
    """The model part of every key of one model load: a process-unique load number plus the identity (served
    and Triton name, source, revision, precision, width, prompts, ...) it was built from. The number alone makes
    keys of different loads differ; the identity makes the key say what it is for."""
    return f"{next(_LOADS)}:{json.dumps(identity, sort_keys=True, default=str)}"


def identity_of(info: Any) -> dict[str, Any]:
    """Every fact of a ModelInfo dataclass, as plain values."""
    return asdict(info)


def entry_bytes(key: Key, vector: bytes) -> int:
    """The memory one entry holds: the key's tuple and its own strings, the vector's bytes object, the value
    tuple and its ints, and the dict overhead. The model key string is shared by every entry of a model (one
    object per load), so only its pointer (inside the tuple) is charged."""
    prefix, text = key[1], key[2]
    return (
        sys.getsizeof(key)
        + sys.getsizeof(prefix)
        + sys.getsizeof(text)
        + sys.getsizeof(vector)
        + sys.getsizeof((vector, 0, 0))
        + 2 * sys.getsizeof(1 << 40)  # token count and size: ints, charged as large ones
        + ENTRY_OVERHEAD
    )


@dataclass
class Lookup:
    """One request's texts against the cache: the rows found, and the distinct texts left to compute."""

    keys: list[Key]
    rows: list[bytes | None]  # per input: the cached vector, or None until filled
    tokens: list[int]  # per input: its token count (0 until filled)
    missing: list[str] = field(default_factory=list)  # distinct texts to compute, in first-seen order
    missing_at: list[list[int]] = field(default_factory=list)  # per missing text: the inputs it answers

    @property
    def hits(self) -> int:
        return len(self.keys) - sum(len(at) for at in self.missing_at)

    def fill(self, vectors: np.ndarray, token_counts: Sequence[int]) -> list[tuple[Key, bytes, int]]:
        """The computed rows of `missing` (in its order) put in place; returns them as entries to store."""
        if len(vectors) != len(self.missing) or len(token_counts) != len(self.missing):
            raise ValueError(f"{len(self.missing)} texts were computed, {len(vectors)} rows came back")
        out: list[tuple[Key, bytes, int]] = []
        for row, count, at in zip(vectors, token_counts, self.missing_at, strict=True):
            data = np.ascontiguousarray(row, dtype="<f4").tobytes()
            for i in at:
                self.rows[i], self.tokens[i] = data, int(count)
            out.append((self.keys[at[0]], data, int(count)))
        return out

    def assemble(self, width: int) -> np.ndarray:
        """[inputs, width] float32, in input order; every row must be filled."""
        out = np.empty((len(self.rows), width), dtype=np.float32)
        for i, data in enumerate(self.rows):
            if data is None:
                raise ValueError(f"input {i} has no vector")
            out[i] = np.frombuffer(data, dtype="<f4")
        return out


class EmbeddingCache:
    """LRU map Key -> (vector bytes, token count), at most `max_bytes` of charged memory."""

    def __init__(self, max_bytes: int, metrics: Any = None) -> None:
        if max_bytes <= 0:
            raise ValueError("the cache needs a positive byte bound")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // MAX_ENTRY_SHARE
        self.bytes = 0
        self._entries: OrderedDict[Key, tuple[bytes, int, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._metrics = metrics
        # The bound is published by the first lookup: a process that builds the models without serving them
        # (the parent of N workers, at preflight) must not add its bound to the workers' sum.
        self._limit_published = metrics is None

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, model: str, prefix: str, texts: Sequence[str], truncate: Truncate, max_tokens: int = 0) -> Lookup:
        """Each text's entry, marked most recently used; the rest gathered once each (a text repeated in the
        request is computed once). `max_tokens` is a per-request token limit (vLLM's truncate_prompt_tokens):
        it changes where a text is cut, hence the vector."""
        keys: list[Key] = [(model, prefix, text, truncate, max_tokens) for text in texts]
        rows: list[bytes | None] = [None] * len(keys)
        tokens = [0] * len(keys)
        result = Lookup(keys, rows, tokens)
        pending: dict[Key, int] = {}
        with self._lock:
            for i, key in enumerate(keys):
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    rows[i], tokens[i] = found[0], found[1]
                    continue
                slot = pending.get(key)
                if slot is None:
                    pending[key] = len(result.missing)
                    result.missing.append(key[2])
                    result.missing_at.append([i])
                else:
                    result.missing_at[slot].append(i)
        if self._metrics is not None:
            if not self._limit_published:
                self._metrics.cache_limit_bytes.set(self.max_bytes)
                self._limit_published = True
            self._metrics.cache_hits.inc(result.hits)
            self._metrics.cache_misses.inc(len(keys) - result.hits)
        return result

    def store(self, entries: Sequence[tuple[Key, bytes, int]]) -> None:
        """Inserts (or refreshes) entries as most recently used, evicting the least recently used beyond the
        bound. An entry larger than max_bytes / MAX_ENTRY_SHARE is not kept."""
        evicted = 0
        with self._lock:
            for key, data, count in entries:
                size = entry_bytes(key, data)
                if size > self.max_entry_bytes:
                    continue
                old = self._entries.pop(key, None)
                if old is not None:
                    self.bytes -= old[2]
                self._entries[key] = (data, count, size)
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, (_, _, freed) = self._entries.popitem(last=False)
                    self.bytes -= freed
                    evicted += 1
            self._report(evicted)

    def drop_model(self, model: str) -> int:
        """Removes every entry of one model load (it was retired); returns how many."""
        with self._lock:
            gone = [k for k in self._entries if k[0] == model]
            for key in gone:
                self.bytes -= self._entries.pop(key)[2]
            self._report(0)
        return len(gone)

    def _report(self, evicted: int) -> None:
        m = self._metrics
        if m is None:
            return
        if evicted:
            m.cache_evictions.inc(evicted)
        m.cache_bytes.set(self.bytes)
        m.cache_entries.set(len(self._entries))
