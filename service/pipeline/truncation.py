"""Fits token ids into the model's input limit; the last real token is always the EOS the model pools."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import invalid
from service.pipeline.params import Truncate


def fit(
    content: Sequence[int],
    max_tokens: int,
    policy: Truncate,
    eos_id: int,
    keep_prefix: int = 0,
    index: int = 0,
) -> tuple[list[int], bool]:
    """content (no EOS) -> (ids ending in EOS, truncated?).

    `keep_prefix` tokens at the start (the instruction) survive START truncation, so a query truncated
    from the start is still a query. NONE raises INVALID_ARGUMENT naming the input and its length.
    """
    limit = max_tokens - 1  # room for EOS
    if len(content) <= limit:
        return [*content, eos_id], False
    if policy is Truncate.NONE:
        raise invalid(
            f"input {index} has {len(content) + 1} tokens, more than the model's limit of {max_tokens}; "
            "shorten it or set truncate to END or START",
            "input",
        )
    if policy is Truncate.END:
        return [*content[:limit], eos_id], True
    keep = max(0, min(keep_prefix, limit - 1))  # a limit too small for the instruction keeps none of it
    tail = limit - keep
    return [*content[:keep], *content[len(content) - tail :], eos_id], True
