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


def default_buckets(max_tokens: int, smallest: int = 16) -> list[int]:
    """Powers of two from `smallest`, ending exactly at max_tokens."""
    out, edge = [], smallest
    while edge < max_tokens:
        out.append(edge)
        edge *= 2
    out.append(max_tokens)
    return out


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
