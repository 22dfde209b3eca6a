"""`qwen3-embed bench --sweep 1,2,4,8,16,32`: the same workload at each concurrency, per protocol, and where
throughput stops growing (the knee), as JSON and a PNG: inputs/s and p50/p99 latency against concurrency."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

# A point's run: (protocol, concurrency) -> run_bench's report.
RunPoint = Callable[[str, int], Awaitable[dict[str, Any]]]

# The knee: the smallest concurrency that reaches this share of the best throughput measured. Past it, more
# requests in flight mostly add queueing (latency) rather than throughput.
KNEE_SHARE = 0.9


def parse_concurrencies(text: str) -> list[int]:
    """"1,2,4,8" -> [1, 2, 4, 8]: ascending, distinct, each >= 1."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--sweep takes comma-separated concurrencies like 1,2,4,8, not {text!r}") from None
    if not values or values[0] < 1:
        raise ValueError(f"--sweep needs concurrencies >= 1, not {text!r}")
    return values


def parse_protocols(text: str) -> list[str]:
    protocols = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in protocols if p not in ("grpc", "http")]
    if bad or not protocols:
        raise ValueError(f"--protocol must be grpc, http or (with --sweep) grpc,http, not {text!r}")
    return protocols


def knee(points: Sequence[tuple[int, float]], share: float = KNEE_SHARE) -> int | None:
    """The smallest concurrency whose throughput is at least `share` of the best of `points`
    ((concurrency, inputs/s)); None when nothing was served."""
    best = max((tput for _, tput in points), default=0.0)
    if best <= 0:
        return None
    return min(c for c, tput in points if tput >= share * best)


async def run_sweep(protocols: Sequence[str], concurrencies: Sequence[int], run_point: RunPoint) -> dict[str, Any]:
    """Every protocol at every concurrency, one after another; one report per point, plus each protocol's knee."""
    points: list[dict[str, Any]] = []
    for protocol in protocols:
        for c in concurrencies:
            points.append({**(await run_point(protocol, c)), "protocol": protocol, "concurrency": c})
    knees = {
        p: knee([(r["concurrency"], r["inputs_per_s"] or 0.0) for r in points if r["protocol"] == p])
        for p in protocols
    }
    return {"concurrencies": list(concurrencies), "knee_share": KNEE_SHARE, "knee": knees, "points": points}


def format_sweep(sweep: dict[str, Any]) -> str:
    """A terminal table: one row per point, then each protocol's knee."""
    head = f"{'protocol':<8} {'conc.':>5} {'inputs/s':>10} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}  errors"
    lines = [head, "-" * len(head)]
    for r in sweep["points"]:
        errs = ", ".join(f"{k}={v}" for k, v in r["errors"].items()) or "none"
        lines.append(
            f"{r['protocol']:<8} {r['concurrency']:>5} {r['inputs_per_s']:>10.1f} {r['requests_per_s']:>9.1f} "
            f"{_ms(r['p50_ms']):>9} {_ms(r['p99_ms']):>9}  {errs}"
        )
    share = round(sweep["knee_share"] * 100)
    for protocol, c in sweep["knee"].items():
        where = f"concurrency {c}" if c is not None else "none (no successful requests)"
        lines.append(f"knee ({protocol}): {where}, the first to reach {share}% of the best throughput")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_sweep(sweep: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """`stem`.json (the whole sweep) and `stem`.png (the plot); returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    json_path.write_text(json.dumps(sweep, indent=1))
    plot_sweep(sweep, png_path)
    return json_path, png_path


def plot_sweep(sweep: dict[str, Any], path: Path) -> None:
    """Two panels over concurrency (log2 axis): inputs/s, and p50 (solid) / p99 (dashed) latency; the knee
    as a dotted vertical line in the protocol's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tput_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"grpc": "tab:blue", "http": "tab:orange"}
    for protocol, knee_c in sweep["knee"].items():
        rows = [r for r in sweep["points"] if r["protocol"] == protocol]
        xs = [r["concurrency"] for r in rows]
        color = colors.get(protocol)
        tput_ax.plot(xs, [r["inputs_per_s"] or 0.0 for r in rows], marker="o", color=color, label=protocol)
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            pts = [(r["concurrency"], r[key]) for r in rows if r[key] is not None]
            lat_ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                style,
                marker="o",
                color=color,
                label=f"{protocol} {key.split('_')[0]}",
            )
        if knee_c is not None:
            for ax in (tput_ax, lat_ax):
                ax.axvline(knee_c, linestyle=":", color=color, alpha=0.7)
    ticks = sweep["concurrencies"]
    for ax, ylabel, title in (
        (tput_ax, "inputs/s", "Throughput (dotted: knee)"),
        (lat_ax, "latency, ms", "Latency p50 (solid) / p99 (dashed)"),
    ):
        if len(ticks) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    tput_ax.set_ylim(bottom=0)
    lat_ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
