"""Pure functions that summarise a load run: percentiles, throughput, errors by status code."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One finished request. `status` is "OK" or the error's code (gRPC name or HTTP number)."""

    start: float  # seconds since the run began
    latency_s: float
    status: str
    inputs: int
    tokens: int


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of unsorted values; NaN for none.

    Same definition as numpy's default ("linear"), written out so the stats stay dependency-free."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside [0, 100]")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Summary:
    requests: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    requests_per_s: float = 0.0
    inputs_per_s: float = 0.0
    tokens_per_s: float = 0.0
    mean_ms: float = math.nan
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        # JSON has no NaN: absent latencies (no successful request) become null.
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def summarize(samples: Iterable[Sample], wall_s: float) -> Summary:
    """Throughput counts successful requests only (an error is not work done); latency likewise."""
    items = list(samples)
    ok = [s for s in items if s.status == "OK"]
    errors = Counter(s.status for s in items if s.status != "OK")
    lat_ms = [s.latency_s * 1000 for s in ok]
    per_s = (lambda n: n / wall_s) if wall_s > 0 else (lambda n: 0.0)
    return Summary(
        requests=len(items),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        wall_s=wall_s,
        requests_per_s=per_s(len(ok)),
        inputs_per_s=per_s(sum(s.inputs for s in ok)),
        tokens_per_s=per_s(sum(s.tokens for s in ok)),
        mean_ms=sum(lat_ms) / len(lat_ms) if lat_ms else math.nan,
        p50_ms=percentile(lat_ms, 50),
        p90_ms=percentile(lat_ms, 90),
        p99_ms=percentile(lat_ms, 99),
        max_ms=max(lat_ms) if lat_ms else math.nan,
    )


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when undefined (a system that did no work has no ratio)."""
    if denominator == 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


def padding_ratio(padded_tokens: float, real_tokens: float) -> float:
    """Padded / real tokens: 1.0 means no padding at all."""
    return ratio(padded_tokens, real_tokens)


def format_summary(summary: Summary, label: str = "") -> str:
    """A human-readable block for the terminal."""
    head = f"{label}: " if label else ""
    errs = ", ".join(f"{code}={n}" for code, n in summary.errors.items()) or "none"
    return (
        f"{head}{summary.ok}/{summary.requests} ok in {summary.wall_s:.2f} s | "
        f"{summary.requests_per_s:.1f} req/s, {summary.inputs_per_s:.1f} inputs/s, "
        f"{summary.tokens_per_s:.0f} tokens/s | latency ms p50 {summary.p50_ms:.2f} p90 {summary.p90_ms:.2f} "
        f"p99 {summary.p99_ms:.2f} max {summary.max_ms:.2f} | errors: {errs}"
    )


@dataclass(frozen=True)
class Bin:
    """Latencies up to `upper_ms` (above the previous bin's upper bound) and how many requests had them."""

    upper_ms: float
    count: int


def latency_histogram(latencies_ms: Sequence[float], bins: int = 10) -> list[Bin]:
    """ghz's "Response time histogram": `bins` equal-width bins from the fastest to the slowest latency, each
    labelled by its upper edge; the counts add up to len(latencies_ms). One bin when all are equal, none for
    no latencies."""
    if not latencies_ms:
        return []
    if bins < 1:
        raise ValueError("bins must be >= 1")
    low, high = min(latencies_ms), max(latencies_ms)
    if high == low:
        return [Bin(high, len(latencies_ms))]
    width = (high - low) / bins
    counts = [0] * bins
    for value in latencies_ms:
        # A latency on an edge counts in the bin that edge labels ("up to upper_ms").
        counts[min(max(math.ceil((value - low) / width) - 1, 0), bins - 1)] += 1
    return [Bin(low + width * (i + 1), n) for i, n in enumerate(counts)]


def format_histogram(hist: Sequence[Bin], bar_width: int = 40) -> str:
    """The text block ghz prints: upper bound in ms, [count], a bar scaled to the largest bin."""
    if not hist:
        return "Response time histogram: no successful requests"
    top = max(b.count for b in hist) or 1
    label_width = max(len(f"{b.upper_ms:.3f}") for b in hist)
    count_width = max(len(str(b.count)) for b in hist)
    lines = ["Response time histogram (ms):"]
    for b in hist:
        bar = "∎" * (round(bar_width * b.count / top) if b.count else 0)
        lines.append(f"  {b.upper_ms:>{label_width}.3f} [{b.count:>{count_width}}]\t|{bar}")
    return "\n".join(lines)


DISTRIBUTION = (10, 25, 50, 75, 90, 95, 99)


def latency_distribution(latencies_ms: Sequence[float]) -> list[tuple[int, float]]:
    """(percent, ms) for ghz's "Latency distribution" percents; empty for no latencies."""
    return [(q, percentile(latencies_ms, q)) for q in DISTRIBUTION] if latencies_ms else []


def format_distribution(distribution: Sequence[tuple[int, float]]) -> str:
    """ghz's "Latency distribution" block: the latency under which each share of requests finished."""
    if not distribution:
        return "Latency distribution: no successful requests"
    return "\n".join(["Latency distribution:", *(f"  {q}% in {ms:.2f} ms" for q, ms in distribution)])
