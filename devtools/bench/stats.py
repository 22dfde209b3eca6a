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
