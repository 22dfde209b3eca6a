"""What one long TRUNCATE_START text costs to tokenize: `.venv/bin/python -m benchmarks.truncate_start
[--megabytes 15] [--cap 32768]`.

Two ways to get its last `cap` tokens, each in a fresh process (peak RSS is per process): `window`, the
service's tail window (TextTokenizer.tail_ids), and `whole`, the reference's way (tokenize all of it, keep
the end), which is what the service did before. Prints seconds, peak RSS growth and whether both agree.
The tokenizer is the offline Qwen3 one (export/qwen_tokenizer_offline.py): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEXT_UNIT = "The quick brown fox, 42 times, jumps over the lazy dog.\n"


def text_of(megabytes: float) -> str:
    return TEXT_UNIT * max(1, int(megabytes * 1e6 / len(TEXT_UNIT)))


def measure(directory: str, mode: str, megabytes: float, cap: int) -> dict[str, object]:
    """One mode in this process: seconds and peak RSS growth (MiB) of getting the last `cap` ids."""
    from service.pipeline.tokenization import TextTokenizer, load_tokenizer

    tok = TextTokenizer(load_tokenizer(Path(directory), 151669))
    text = text_of(megabytes)
    tok.content_ids(["warm up " * 100])
    tok.tail_ids("warm up " * 10_000, 64)
    # The process's resident size now, against its peak afterwards: the peak of loading the tokenizer may be
    # higher than what the text costs, so the figure is max(0, peak - now), an upper bound on the text's cost.
    page = resource.getpagesize()
    now_mib = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**20
    start = time.perf_counter()
    ids = tok.tail_ids(text, cap) if mode == "window" else tok.content_ids([text])[0][-cap:]
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux
    grown = max(0.0, peak_mib - now_mib)
    if ids is None:
        raise SystemExit("the tail window declined this text")
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    return {
        "mode": mode,
        "chars": len(text),
        "seconds": round(seconds, 3),
        "peak_rss_mib": round(peak_mib),
        "peak_over_start_mib": round(grown),
        "ids": digest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=15.0)
    parser.add_argument("--cap", type=int, default=32768, help="tokens kept (the model's input limit)")
    parser.add_argument("--child", nargs=2, metavar=("DIR", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.megabytes, args.cap)))
        return
    from export.qwen_tokenizer_offline import build_tokenizer

    with tempfile.TemporaryDirectory() as directory:
        build_tokenizer().save(str(Path(directory) / "tokenizer.json"))
        rows = []
        for mode in ("window", "whole"):
            command = [sys.executable, "-m", "benchmarks.truncate_start", "--megabytes", str(args.megabytes)]
            command += ["--cap", str(args.cap), "--child", directory, mode]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    where = platform.processor() or platform.system()
    print(f"machine: {platform.machine()}, {where}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    for row in rows:
        print(json.dumps(row))
    print("same ids" if rows[0]["ids"] == rows[1]["ids"] else "DIFFERENT IDS")
    if rows[0]["ids"] != rows[1]["ids"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
