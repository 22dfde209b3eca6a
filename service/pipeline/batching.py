"""Length buckets and the split of a request into Triton calls.

Triton batches only requests of equal shape, so every call is padded to one of a few bucket lengths (the
ladder and the padding rule are the model contract's: service/contract.py, default_buckets and pad); a token
budget bounds each call's padded size.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass


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
