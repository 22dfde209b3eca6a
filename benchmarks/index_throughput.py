"""`qwen3-embed index` against the built-in load generator's best on the same texts, same facade, one run.

    .venv/bin/python -m benchmarks.index_throughput [--rows 8000]

Exports the dev model (default settings), starts Triton and a facade on loopback, then measures:
- the load generator (`python -m devtools.bench --file`) over a grid of batch sizes and concurrencies, keeping
  the best inputs/s;
- `qwen3-embed index` on the same texts (JSONL, document prompt = no prefix, as the load generator sends),
  wall time of the whole command (start-up, reading, Parquet writing included), with its defaults and with the
  load generator's best batch and concurrency.
Prints a markdown table and the ratio index / best load generator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench" / "index-throughput"
WORDS = ("retrieval", "index", "vector", "search", "query", "document", "passage", "model", "embedding", "token")


def corpus_texts(rows: int, seed: int = 0) -> list[str]:
    """Distinct document-like texts of 20-200 words (no duplicates: `index` would embed those once)."""
    rng = random.Random(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200))) for i in range(rows)]


def prepare(work: Path) -> Path:
    from rich.console import Console

    from export.dev_model import build_dev_model
    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings

    repo = work / "model_repository"
    if not (repo / "qwen3_embedding" / "config.pbtxt").exists():
        model = build_dev_model(work / "dev-model")
        run_export(ExportOptions(model=str(model), output=repo, repo=RepoSettings()), Console(quiet=True))
    return repo


def bench(target: str, texts_file: Path, batch: int, concurrency: int, requests: int) -> float:
    out = subprocess.run(
        [
            sys.executable, "-m", "devtools.bench", "--target", target, "--file", str(texts_file),
            "--batch", str(batch), "--concurrency", str(concurrency), "--requests", str(requests), "--json",
        ],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout.strip().splitlines()[-1])
    return float(report["inputs_per_s"])


def index(target: str, corpus: Path, out: Path, extra: list[str]) -> float:
    for stale in (out, out.with_name(out.name + ".parts")):
        if stale.is_dir():
            import shutil

            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable, "-m", "service.cli", "index", str(corpus), str(out),
            "--target", target, "--no-progress", *extra,
        ],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args()
    from devtools.launch import launch_facade
    from service.triton.runtime import start_triton

    args.work.mkdir(parents=True, exist_ok=True)
    repo = prepare(args.work)
    texts = corpus_texts(args.rows)
    texts_file, corpus = args.work / "texts.txt", args.work / "corpus.jsonl"
    texts_file.write_text("\n".join(texts) + "\n")
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n" for i, t in enumerate(texts)))

    triton = start_triton(repo, args.work / "triton.log")
    try:
        with launch_facade(repo, triton.grpc_url, args.work) as facade:
            rows: list[tuple[str, float]] = []
            best, best_at = 0.0, (0, 0)
            for batch in (32, 128):
                for concurrency in (2, 4, 8):
                    requests = max(8, args.rows // batch)
                    rate = bench(facade.target, texts_file, batch, concurrency, requests)
                    rows.append((f"load generator, batch {batch}, concurrency {concurrency}", rate))
                    if rate > best:
                        best, best_at = rate, (batch, concurrency)
            wall = index(facade.target, corpus, args.work / "out.parquet", [])
            rows.append(("qwen3-embed index (defaults: batch 128, concurrency 4)", args.rows / wall))
            batch, concurrency = best_at
            wall_best = index(
                facade.target, corpus, args.work / "out.parquet",
                ["--batch-size", str(batch), "--concurrency", str(concurrency)],
            )  # fmt: skip
            rows.append((f"qwen3-embed index (batch {batch}, concurrency {concurrency})", args.rows / wall_best))
    finally:
        triton.stop()
    print(f"dev model, {args.rows} distinct texts of 20-200 words, {platform.machine()}, {os.cpu_count()} cores")
    print("| system | inputs/s |")
    print("|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} |")
    print(f"index (defaults) / best load generator: {rows[-2][1] / best:.2f}")
    print(f"index (same batch and concurrency) / best load generator: {rows[-1][1] / best:.2f}")


if __name__ == "__main__":
    main()
