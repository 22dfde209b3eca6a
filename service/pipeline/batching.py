"""Length buckets and the split of a request into Triton calls.

Triton batches only requests of equal shape, so every call is padded to one of a few bucket lengths, on the
side the exported graph wants (the model contract's padding_side: left for the eager graph, right for the fused
one); a token budget bounds each call's padded size.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The default ladder (docs/benchmarks.md, "Length buckets"; benchmarks/ladders.py): 4 rungs per doubling on
# multiples of 8. Against powers of two, measured side by side: mixed lengths (8-512 tokens) pad 1.10x instead of
# 1.38-1.43x, with throughput 1.1x (dev model, overhead-bound) to 1.8x (0.6B config, compute-bound), no loss on
# short or long inputs. 3 per octave padded 1.13-1.15x (too close to the 1.15 target on small samples).
BUCKETS_PER_OCTAVE = 4
BUCKET_ALIGN = 8
SMALLEST_BUCKET = 16


def default_buckets(
    max_tokens: int,
    smallest: int = SMALLEST_BUCKET,
    per_octave: int = BUCKETS_PER_OCTAVE,
    align: int = BUCKET_ALIGN,
) -> list[int]:
    """The padded lengths, ascending, ending exactly at max_tokens: a geometric ladder from `smallest`,
    `per_octave` rungs to each doubling, every rung `smallest * 2**(k / per_octave)` rounded to the nearest
    multiple of `align` (GPU-friendly shapes; duplicates dropped). per_octave=1 gives powers of two.

    Guarantee (tests/unit/test_buckets.py): with r = 2**(1 / per_octave), every length n in
    [smallest, max_tokens] lands in a bucket b < r * (n + align), so no input pads more than about r times
    (1.19x at 4 per octave, once n is large against `align`), and a log-uniform mix of lengths pads about
    r * ln(r) / (r - 1) (1.39x at 1 per octave, 1.07x at 4, plus the rounding); shorter inputs pad to the
    first rung."""
    if max_tokens < 1 or smallest < 1 or per_octave < 1 or align < 1:
        raise ValueError("max_tokens, smallest, per_octave and align must be >= 1")
    out: list[int] = []
    k = 0
    while (point := smallest * 2 ** (k / per_octave)) < max_tokens:
        edge = max(align, align * round(point / align))
        if edge < max_tokens and (not out or edge > out[-1]):
            out.append(edge)
        k += 1
    out.append(max_tokens)
    return out


def worst_padding(buckets: Sequence[int], shortest: int = 1) -> float:
    """The largest padded / real ratio any single length in [shortest, buckets[-1]] can get: the worst is
    always one token past a rung (or `shortest` itself in the first bucket)."""
    worst, low = 0.0, shortest
    for edge in buckets:
        if edge >= low:
            worst = max(worst, edge / low)
            low = edge + 1
    return worst


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length (buckets sorted ascending; the last is the model's max)."""
    i = bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


@dataclass(frozen=True)
class Chunk:
    """One Triton call: input positions (into the request) and the padded width."""

    indices: tuple[int, ...]
    width: int

    @property
    def padded_tokens(self) -> int:
        return len(self.indices) * self.width


def plan_chunks(
    lengths: Sequence[int], buckets: Sequence[int], token_budget: int, max_rows: int
) -> list[Chunk]:
    """Sort by length, group by bucket, split groups so rows * width <= budget (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(bucket_for(lengths[i], buckets), []).append(i)
    chunks: list[Chunk] = []
    for width, members in sorted(groups.items()):
        rows = max(1, min(max_rows, token_budget // width))
        for start in range(0, len(members), rows):
            chunks.append(Chunk(tuple(members[start : start + rows]), width))
    return chunks


def left_pad(sequences: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and mask [len(sequences), width], real tokens at the right (left padding)."""
    return pad(sequences, width, pad_id, "left")


def pad(
    sequences: Sequence[Sequence[int]], width: int, pad_id: int, side: str = "left"
) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and mask [len(sequences), width]; `side` is where the padding goes ("left" or "right")."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be left or right, not {side!r}")
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        n = len(seq)
        cols = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, cols] = seq
        mask[row, cols] = 1
    return ids, mask
