"""docs/benchmarks.md and docs/img/*.png from one results file; the analysis text is benchmarks/notes.md."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FACADE = "facade gRPC"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)


def pick(rows: list[dict[str, Any]], system: str, workload: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["system"] == system and r["workload"] == workload), None)


def best(rows: list[dict[str, Any]], system: str, workload: str) -> dict[str, Any] | None:
    found = [r for r in rows if r["system"] == system and r["workload"] == workload and r.get("inputs_per_s")]
    return max(found, key=lambda r: r["inputs_per_s"]) if found else None


def rate(r: dict[str, Any] | None) -> float | None:
    return None if r is None else r.get("inputs_per_s")


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(results: dict[str, Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    real = results.get("0.6B", {})
    if real:
        rows = real.get("throughput", []) + real.get("sweep", [])
        ceil, fac = best(rows, "ceiling (ORT in-process)", "mixed"), best(rows, FACADE, "mixed")
        r = div(rate(fac), rate(ceil))
        out.append(
            [
                "0.6B-config mixed: facade / in-process ceiling (best concurrency)",
                ">= 0.95",
                fmt(r, 3),
                "met" if r and r >= 0.95 else "missed",
            ]
        )
    dev = results.get("dev", {})
    if dev:
        rows = dev.get("throughput", []) + dev.get("sweep", [])
        fac, direct = best(rows, FACADE, "short"), best(rows, "direct Triton", "short")
        r = div(rate(fac), rate(direct))
        out.append(
            [
                "dev short: facade / direct Triton (best of each)",
                ">= 0.7",
                fmt(r, 3),
                "met" if r and r >= 0.7 else "missed",
            ]
        )
        sweep = dev.get("sweep", [])
        f1 = next((x for x in sweep if x["system"] == FACADE and x["concurrency"] == 1), None)
        d1 = next((x for x in sweep if x["system"] == "direct Triton" and x["concurrency"] == 1), None)
        if f1 and d1 and f1["p50_ms"] is not None and d1["p50_ms"] is not None:
            added = f1["p50_ms"] - d1["p50_ms"]
            out.append(
                [
                    "dev short: added p50 at concurrency 1 (facade - direct Triton)",
                    "<= 2 ms",
                    f"{added:.2f} ms",
                    "met" if added <= 2 else "missed",
                ]
            )
    for name, res in (("dev", dev), ("0.6B", real)):
        pr = pick(res.get("throughput", []), FACADE, "mixed") if res else None
        if pr and pr.get("padding_ratio"):
            out.append(
                [
                    f"{name} mixed: padding ratio (padded / real tokens)",
                    "<= 1.15",
                    fmt(pr["padding_ratio"], 3),
                    "met" if pr["padding_ratio"] <= 1.15 else "missed",
                ]
            )
    for name, res in (("dev", dev), ("0.6B", real)):
        rows = res.get("throughput", []) if res else []
        for other in ("sentence-transformers (torch)", "Infinity (torch)"):
            for wl in ("short", "mixed", "long"):
                f, o = pick(rows, FACADE, wl), pick(rows, other, wl)
                if f and o and o.get("inputs_per_s"):
                    r = div(f["inputs_per_s"], o["inputs_per_s"])
                    out.append(
                        [
                            f"{name} {wl}: facade / {other}",
                            "> 1",
                            fmt(r, 2),
                            "met" if r and r > 1 else "missed",
                        ]
                    )
    return out


def throughput_table(res: dict[str, Any]) -> str:
    rows = []
    for r in res.get("throughput", []):
        rows.append(
            [
                r["workload"],
                r["system"],
                r.get("concurrency"),
                r["inputs_per_s"],
                r["tokens_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                fmt(r.get("vs_ceiling"), 2),
                fmt(r.get("padding_ratio"), 3),
                ", ".join(f"{k}={v}" for k, v in (r.get("errors") or {}).items()) or "0",
            ]
        )
    order = {"short": 0, "mixed": 1, "long": 2}
    rows.sort(key=lambda x: order.get(str(x[0]), 9))
    return table(
        [
            "workload",
            "system",
            "conc.",
            "inputs/s",
            "tokens/s",
            "p50 ms",
            "p99 ms",
            "x ceiling",
            "padding",
            "errors",
        ],
        rows,
    )


def sweep_table(res: dict[str, Any]) -> str:
    rows = [
        [
            r["concurrency"],
            r["system"],
            r["inputs_per_s"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            ", ".join(f"{k}={v}" for k, v in (r.get("errors") or {}).items()) or "0",
        ]
        for r in res.get("sweep", [])
    ]
    return table(["concurrency", "system", "inputs/s", "p50 ms", "p90 ms", "p99 ms", "errors"], rows)


def lengths_table(res: dict[str, Any]) -> str:
    rows = [
        [r["tokens"], r["batch"], r["system"], r["p50_ms"], div(r["p50_ms"], r["batch"]), r["tokens_per_s"]]
        for r in res.get("lengths", [])
    ]
    return table(["tokens", "batch", "system", "p50 ms / request", "ms / input", "tokens/s"], rows)


def tuning_table(res: dict[str, Any]) -> str:
    base = {r["workload"]: r["inputs_per_s"] for r in res.get("tuning", []) if r["variant"] == "default"}
    rows = [
        [
            r["variant"],
            r["workload"],
            r["inputs_per_s"],
            fmt(div(r["inputs_per_s"], base.get(r["workload"])), 2),
            r["p50_ms"],
            r["p99_ms"],
            fmt(r.get("padding_ratio"), 3),
        ]
        for r in res.get("tuning", [])
    ]
    return table(["variant", "workload", "inputs/s", "x default", "p50 ms", "p99 ms", "padding"], rows)


def plots(results: dict[str, Any], img: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    names = []
    for model in ("dev", "0.6B"):
        res = results.get(model)
        if not res or not res.get("sweep"):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for system in sorted({r["system"] for r in res["sweep"]}):
            pts = sorted(
                (r["concurrency"], r["inputs_per_s"] or 0) for r in res["sweep"] if r["system"] == system
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system)
        wl = res["sweep"][0]["workload"]
        ax.set(
            xscale="log",
            xlabel="concurrency (closed loop)",
            ylabel="inputs/s",
            title=f"{model} model, {wl} workload: throughput vs concurrency",
        )
        ax.set_xticks(sorted({r["concurrency"] for r in res["sweep"]}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.legend()
        ax.grid(alpha=0.3)
        name = f"throughput_vs_concurrency_{model}.png"
        fig.tight_layout()
        fig.savefig(img / name, dpi=110)
        plt.close(fig)
        names.append(name)
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for model in ("dev", "0.6B"):
        res = results.get(model)
        for system in ("ceiling (ORT in-process)", FACADE):
            for batch_kind in ("batch 1", "best batch"):
                lrows = [
                    r
                    for r in (res or {}).get("lengths", [])
                    if r["system"] == system
                    and ((r["batch"] == 1) == (batch_kind == "batch 1"))
                    and r["p50_ms"] is not None
                ]
                if not lrows:
                    continue
                lrows.sort(key=lambda r: r["tokens"])
                ax.plot(
                    [r["tokens"] for r in lrows],
                    [r["p50_ms"] / r["batch"] for r in lrows],
                    marker="o",
                    linestyle="-" if system == FACADE else "--",
                    label=f"{model} {system} {batch_kind}",
                )
                drawn = True
    if drawn:
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="input tokens",
            ylabel="p50 ms per input",
            title="latency vs input length (per input)",
        )
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(img / "latency_vs_length.png", dpi=110)
        names.append("latency_vs_length.png")
    plt.close(fig)
    return names


def write_report(results: dict[str, Any], doc: Path, img: Path) -> None:
    m = results["machine"]
    images = plots(results, img)
    notes_path = ROOT / "benchmarks" / "notes.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks.run` from benchmarks/results/"
        f"{results['run']}.json and benchmarks/notes.md; edit those, not this file. -->",
        "",
        f"Run `{results['run']}`, {results['wall_s']:.0f} s wall. "
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), "
        f"{m['ram_gib']} GiB RAM, no GPU, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_at_start'])}.",
        "",
        "Every figure below comes from this one run: the systems ran one after another on the same texts, so "
        "only the ratios mean anything beyond this machine.",
        "",
        "## Command",
        "",
        "```bash",
        ".venv/bin/pip install -e '.[dev]'          # bench extra: aiohttp, httpx, matplotlib",
        "bash benchmarks/peers.sh                   # Infinity in .cache/peers/infinity (optional)",
        f".venv/bin/{results['command']}",
        "```",
        "",
        "## Targets",
        "",
        table(["target", "goal", "measured", ""], targets(results)),
        "",
    ]
    if notes:
        parts += [notes.strip(), ""]
    for model in ("dev", "0.6B"):
        res = results.get(model)
        if not res:
            continue
        sizes = results["sizes"][model]
        wl = ", ".join(
            f"{k}: {v['texts']} texts, batch {v['batch']}, concurrency {v['concurrency']}"
            for k, v in sizes["workloads"].items()
        )
        parts += [
            f"## {model} model",
            "",
            f"Buckets {res['buckets']}, token budget {res['token_budget']}, hidden {res['hidden']}. "
            f"Workloads: {wl}.",
            "",
            "### Throughput by system (same texts; ratios to the in-process ceiling)",
            "",
            throughput_table(res),
            "",
            "### Throughput vs concurrency",
            "",
            sweep_table(res),
            "",
        ]
        if f"throughput_vs_concurrency_{model}.png" in images:
            parts += [f"![throughput vs concurrency, {model}](img/throughput_vs_concurrency_{model}.png)", ""]
        parts += ["### Cost vs input length (concurrency 1)", "", lengths_table(res), ""]
        if res.get("tuning"):
            parts += [
                "### Tuning (facade gRPC; each variant against the default in the same run)",
                "",
                tuning_table(res),
                "",
            ]
        if res.get("peers"):
            parts += ["### Peers", ""] + [f"- {k}: {v}" for k, v in res["peers"].items()] + [""]
    if "latency_vs_length.png" in images:
        parts += [
            "## Latency vs input length",
            "",
            "![latency vs input length](img/latency_vs_length.png)",
            "",
        ]
    doc.write_text("\n".join(parts))


if __name__ == "__main__":  # re-render from a results file: python -m benchmarks.report results.json
    write_report(
        json.loads(Path(sys.argv[1]).read_text()), ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "img"
    )
