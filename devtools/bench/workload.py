"""Texts of controlled token length, drawn from a length distribution, or read from a file.

A text of n tokens is n-1 common English words, each with a leading space: the Qwen tokenizer's
pre-tokenizer splits at every space and each of these words is one BPE token, so the length is exact
(the model's EOS makes the n-th token). `tests/service/test_bench_smoke.py` checks this against the real tokenizer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Each " word" is a single token in the Qwen2 vocabulary; varied so that texts differ from each other.
WORDS: tuple[str, ...] = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "people",
    "water",
    "world",
    "house",
    "river",
    "city",
    "music",
    "light",
    "green",
    "small",
    "large",
    "number",
    "system",
    "data",
    "model",
    "search",
    "query",
)

# Named workloads from the issue: (min tokens, max tokens), drawn log-uniformly.
WORKLOADS: dict[str, tuple[int, int]] = {
    "short": (8, 32),
    "mixed": (8, 512),
    "long": (1024, 4096),
}


@dataclass(frozen=True)
class LengthSpec:
    min_tokens: int
    max_tokens: int

    def __post_init__(self) -> None:
        if not 2 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 2 <= min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")


def spec_for(workload: str) -> LengthSpec:
    """`short`, `mixed`, `long`, `fixed:N` or `A-B` (log-uniform between A and B tokens)."""
    if workload in WORKLOADS:
        return LengthSpec(*WORKLOADS[workload])
    if workload.startswith("fixed:"):
        n = int(workload.split(":", 1)[1])
        return LengthSpec(n, n)
    if "-" in workload:
        low, high = workload.split("-", 1)
        return LengthSpec(int(low), int(high))
    raise ValueError(f"unknown workload {workload!r}: use short, mixed, long, fixed:N or A-B")


def sample_lengths(spec: LengthSpec, count: int, rng: random.Random) -> list[int]:
    """Log-uniform token lengths in [min, max]: many short inputs and a long tail, like real traffic."""
    low, high = math.log(spec.min_tokens), math.log(spec.max_tokens + 1)
    return [min(spec.max_tokens, int(math.exp(rng.uniform(low, high)))) for _ in range(count)]


def text_of(tokens: int, rng: random.Random) -> str:
    """A text that the Qwen tokenizer turns into `tokens` ids once EOS is appended."""
    return "".join(" " + rng.choice(WORDS) for _ in range(max(1, tokens - 1)))


def make_texts(spec: LengthSpec, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [text_of(n, rng) for n in sample_lengths(spec, count, rng)]


def read_texts(path: Path) -> list[str]:
    """One text per non-empty line."""
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"{path} has no non-empty lines")
    return texts


def approx_tokens(text: str) -> int:
    """Tokens of a generated text (words + EOS); for file texts a rough count, used if the server says none."""
    return len(text.split()) + 1


def batches(texts: Sequence[str], batch: int) -> list[list[str]]:
    """Requests of `batch` inputs each, cycling through the texts so any count of requests is possible."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    return [list(texts[i : i + batch]) for i in range(0, len(texts) - batch + 1, batch)] or [list(texts)]
