"""Bounded soak (not in CI): starts Triton and a facade on loopback, drives gRPC and HTTP load for a fixed
time while sampling RSS and open file descriptors of the facade and of Triton (with its Python-backend
stubs), and writes a CSV of the samples plus a markdown summary.

    .venv/bin/python scripts/soak.py --model-repository /path/to/model_repository --seconds 120

Every OK response is compared with the input's single-call vector; the summary counts requests by
outcome and the wrong vectors (must be 0). A dev model repository comes from the test fixtures or
`qwen3-embed dev-model` + `qwen3-embed export`.
"""

from __future__ import annotations

import argparse
import csv
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.launch import launch_facade  # noqa: E402
from service.gen.embedding.v1 import embedding_pb2 as pb  # noqa: E402
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc  # noqa: E402
from service.triton.runtime import start_triton  # noqa: E402

TEXTS = [f"soak text {i}: " + "lorem ipsum dolor sit amet " * (1 + i % 9) for i in range(32)]


def tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def usage(procs: list[psutil.Process]) -> tuple[float, int]:
    rss, fds = 0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.Error:
            pass
    return rss / 2**20, fds


class Driver:
    def __init__(self, grpc_target: str, http_base: str, model: str, expected: np.ndarray) -> None:
        self.grpc_target, self.http_base, self.model, self.expected = grpc_target, http_base, model, expected
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.wrong = 0

    def _verify(self, got: np.ndarray, picked: list[int]) -> None:
        bad = 0
        for row, i in zip(got, picked, strict=True):
            e = self.expected[i]
            if float(row @ e / (np.linalg.norm(row) * np.linalg.norm(e))) < 0.99999:
                bad += 1
        with self.lock:
            self.wrong += bad

    def _count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1

    def grpc_worker(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            while not self.stop.is_set():
                picked = [int(i) for i in rng.integers(0, len(TEXTS), size=int(rng.integers(1, 9)))]
                try:
                    r = stub.Embed(pb.EmbedRequest(inputs=[TEXTS[i] for i in picked]), timeout=30)
                except grpc.RpcError as exc:
                    self._count(f"grpc {exc.code().name}")
                    continue
                self._verify(np.array([list(e.values) for e in r.embeddings], dtype=np.float32), picked)
                self._count("grpc OK")

    def stream_worker(self) -> None:
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            while not self.stop.is_set():
                reqs = [pb.EmbedRequest(inputs=[TEXTS[i % len(TEXTS)]], request_id=str(i)) for i in range(50)]
                try:
                    for r in stub.EmbedStream(iter(reqs), timeout=60):
                        i = int(r.request_id) % len(TEXTS)
                        self._verify(np.array([list(r.embeddings[0].values)], dtype=np.float32), [i])
                        self._count("stream OK")
                except grpc.RpcError as exc:
                    self._count(f"stream {exc.code().name}")

    def http_worker(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.http_base, timeout=30) as client:
            while not self.stop.is_set():
                picked = [int(i) for i in rng.integers(0, len(TEXTS), size=int(rng.integers(1, 5)))]
                try:
                    r = client.post("/v1/embeddings", json={"model": self.model, "input": [TEXTS[i] for i in picked]})
                except httpx.HTTPError as exc:
                    self._count(f"http {type(exc).__name__}")
                    continue
                if r.status_code != 200:
                    self._count(f"http {r.status_code}")
                    continue
                self._verify(np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32), picked)
                self._count("http OK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-repository", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between resource samples")
    ap.add_argument("--grpc-workers", type=int, default=6)
    ap.add_argument("--http-workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "soak")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    triton = start_triton(args.model_repository, args.out / "triton.log")
    samples: list[dict[str, float]] = []
    try:
        with launch_facade(args.model_repository, triton.grpc_url, args.out) as facade:
            base, target = facade.base_url, facade.target
            model = httpx.get(f"{base}/v1/models").json()["data"][0]["id"]
            with grpc.insecure_channel(target) as channel:
                stub = pb_grpc.EmbeddingServiceStub(channel)
                expected = np.array([list(stub.Embed(pb.EmbedRequest(inputs=[t]), timeout=30).embeddings[0].values)
                                     for t in TEXTS], dtype=np.float32)
            driver = Driver(target, base, model, expected)
            threads = [threading.Thread(target=driver.grpc_worker, args=(s,)) for s in range(args.grpc_workers)]
            threads += [threading.Thread(target=driver.http_worker, args=(100 + s,)) for s in range(args.http_workers)]
            threads.append(threading.Thread(target=driver.stream_worker))
            fproc, tproc = psutil.Process(facade.process.pid), psutil.Process(triton.process.pid)
            started = time.monotonic()
            for t in threads:
                t.start()
            while True:
                elapsed = time.monotonic() - started
                f_rss, f_fds = usage(tree(fproc))
                t_rss, t_fds = usage(tree(tproc))
                with driver.lock:
                    done = sum(driver.outcomes.values())
                samples.append({"t_s": round(elapsed, 1), "facade_rss_mib": round(f_rss, 1), "facade_fds": f_fds,
                                "triton_rss_mib": round(t_rss, 1), "triton_fds": t_fds, "requests": done})
                print(samples[-1], flush=True)
                if elapsed >= args.seconds:
                    break
                time.sleep(min(args.interval, max(0.0, args.seconds - elapsed)))
            driver.stop.set()
            for t in threads:
                t.join(timeout=60)
            duration = time.monotonic() - started
            # The exit code after SIGTERM: a graceful drain ends in 0.
            facade.process.terminate()
            code = facade.process.wait(timeout=30)
    finally:
        triton.stop()

    with open(args.out / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(samples[0]))
        writer.writeheader()
        writer.writerows(samples)
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    ok = sum(v for k, v in driver.outcomes.items() if k.endswith(" OK"))
    lines = [
        f"# Soak: {duration:.0f} s, {args.grpc_workers} gRPC + {args.http_workers} HTTP workers + 1 stream",
        "",
        f"- requests: {sum(driver.outcomes.values())} ({ok / duration:.1f} OK/s); outcomes: {dict(driver.outcomes)}",
        f"- wrong vectors: {driver.wrong}; requests lost (not OK): {sum(driver.outcomes.values()) - ok}",
        f"- facade exit code after SIGTERM: {code}",
        "",
        "| | first sample under load | last sample | max |",
        "|---|---|---|---|",
    ]
    for key in ("facade_rss_mib", "facade_fds", "triton_rss_mib", "triton_fds"):
        lines.append(f"| {key} | {first[key]} | {last[key]} | {max(s[key] for s in samples)} |")
    summary = "\n".join(lines) + "\n"
    (args.out / "soak.md").write_text(summary)
    print(summary)
    print(f"samples: {args.out / 'soak.csv'}", file=sys.stderr)
    if driver.wrong or code != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
