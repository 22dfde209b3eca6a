"""What the facade costs per request, measured as CPU time (robust on a shared, noisy machine where
throughput and latency are not): the facade process, Triton and the load generator, in CPU ms per successful
request, for the facade over gRPC (and HTTP) and for a client calling Triton directly with the same
(pre-tokenized, bucketed) requests. Optionally a second facade from another source tree (`--baseline DIR`, a
directory holding a `service` package, e.g. a copy taken before a change) runs against the same Triton, the
systems measured in alternating rounds so drift on the machine hits both alike; `--profile` then records
each facade with py-spy under the same load and prints its top frames.

    .venv/bin/python -m benchmarks.facade_profile --out /tmp/fp --concurrency 8 [--baseline /tmp/base] [--profile]

Uses the dev model export (.cache/bench/index-throughput/model_repository; see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks import systems
from devtools.bench.runner import LoadSpec
from devtools.bench.stats import Summary
from devtools.bench.workload import WORKLOADS, LengthSpec, make_texts
from devtools.launch import FacadeProcess, launch_facade
from service.triton.runtime import start_triton

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = ROOT / ".cache/bench/index-throughput/model_repository"
MODEL = "qwen3_embedding"
HIDDEN = 64  # the dev model's hidden size


def process_cpu(process: psutil.Process) -> float:
    """User + system seconds of a process and its children."""
    times = process.cpu_times()
    total = times.user + times.system
    for child in process.children(recursive=True):
        try:
            t = child.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Tally:
    """Sums over the rounds of one system."""

    ok: int = 0
    wall_s: float = 0.0
    facade_s: float = 0.0
    triton_s: float = 0.0
    client_s: float = 0.0
    p50_ms: list[float] = field(default_factory=list)

    def row(self, name: str) -> dict[str, Any]:
        n = max(self.ok, 1)
        return {
            "system": name,
            "ok": self.ok,
            "inputs_per_s": self.ok / self.wall_s if self.wall_s else 0.0,
            "p50_ms_median": sorted(self.p50_ms)[len(self.p50_ms) // 2] if self.p50_ms else None,
            "facade_cpu_ms": 1000 * self.facade_s / n,
            "triton_cpu_ms": 1000 * self.triton_s / n,
            "client_cpu_ms": 1000 * self.client_s / n,
        }


def top_frames(raw: Path, count: int = 25) -> dict[str, list[tuple[float, str]]]:
    """py-spy raw (collapsed) stacks -> the `count` frames with the most self and inclusive samples (%)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not n_text.isdigit():
            continue
        n = int(n_text)
        total += n
        frames = [re.sub(r" \(.*/site-packages/", " (", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    total = max(total, 1)
    return {
        "self": [(100 * n / total, f[:140]) for f, n in own.most_common(count)],
        "inclusive": [(100 * n / total, f[:140]) for f, n in inclusive.most_common(count)],
    }


def per_call_us(work: Callable[[], object], seconds: float = 0.3) -> float:
    """Median over 5 runs of the mean CPU microseconds (this process's) one call of `work` takes."""
    runs = []
    for _ in range(5):
        n, start = 0, time.process_time()
        while (elapsed := time.process_time() - start) < seconds / 5:
            work()
            n += 1
        runs.append(elapsed / n * 1e6)
    return sorted(runs)[2]


def micro() -> list[tuple[str, str, float, float]]:
    """In-process timings of the per-request steps this profile changed, old way vs new way (CPU microseconds
    per request; robust where the end-to-end figures are noisy): (step, case, old_us, new_us)."""
    from service.metrics import Metrics

    rows: list[tuple[str, str, float, float]] = []
    for n, dims in ((1, 64), (1, 1024), (32, 1024)):
        rows.extend(_micro_case(n, dims))
    metrics = Metrics()
    child = metrics.requests.labels("grpc", "Embed", "OK")
    old_labels = per_call_us(lambda: metrics.requests.labels("grpc", "Embed", "OK").inc())
    rows.append(("metric labels() per use", "-", old_labels, per_call_us(child.inc)))
    return rows


def _micro_case(n: int, dims: int) -> list[tuple[str, str, float, float]]:
    import json as stdlib_json

    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import _utils as triton_utils
    from tritonclient.grpc import service_pb2

    from service.api.grpc.servicer import encode_response
    from service.api.http.embeddings import embeddings_json
    from service.lifecycle import EmbedOutcome
    from service.pipeline.embedder import EmbedResult
    from service.pipeline.params import EmbedParams
    from service.triton.client import output_array
    from tests.oracles import response_from_result

    rng = np.random.default_rng(n * dims)
    case = f"{n}x{dims}"
    vectors = rng.standard_normal((n, dims)).astype(np.float32)
    item = EmbedOutcome(EmbedParams(texts=("x",) * n), EmbedResult(vectors, dims, 20 * n, 0.1, 1.0, 1.2), "m")

    def old_json() -> bytes:
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(vectors.tolist())]
        body = {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        return stdlib_json.dumps(body, separators=(",", ":")).encode()

    ids = rng.integers(0, 1000, (n, 32), dtype=np.int64)
    mask = np.ones_like(ids)
    output = service_pb2.ModelInferResponse.InferOutputTensor(name="embedding", datatype="FP32", shape=[n, dims])
    wire = service_pb2.ModelInferResponse(outputs=[output], raw_output_contents=[vectors.tobytes()]).SerializeToString()

    def old_triton() -> object:
        inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
                  grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")]  # fmt: skip
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        request = triton_utils._get_inference_request(
            model_name="m", inputs=inputs, model_version="", request_id="",
            outputs=[grpcclient.InferRequestedOutput("embedding")], sequence_id=0, sequence_start=False,
            sequence_end=False, priority=0, timeout=None, parameters=None,
        )  # fmt: skip
        request.SerializeToString()
        return grpcclient.InferResult(service_pb2.ModelInferResponse.FromString(wire)).as_numpy("embedding")

    def new_triton() -> object:
        tensor = service_pb2.ModelInferRequest.InferInputTensor
        request = service_pb2.ModelInferRequest(
            model_name="m",
            inputs=[tensor(name="input_ids", datatype="INT64", shape=ids.shape),
                    tensor(name="attention_mask", datatype="INT64", shape=mask.shape)],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="embedding")],
            raw_input_contents=[ids.tobytes(), mask.tobytes()],
        )  # fmt: skip
        request.SerializeToString()
        return output_array(service_pb2.ModelInferResponse.FromString(wire), "embedding")

    return [
        (
            "gRPC EmbedResponse",
            case,
            per_call_us(lambda: response_from_result(item).SerializeToString()),
            per_call_us(lambda: encode_response(item)),
        ),
        ("HTTP JSON body", case, per_call_us(old_json), per_call_us(lambda: embeddings_json(vectors, "float", "m", 1))),
        ("Triton request + response", case, per_call_us(old_triton), per_call_us(new_triton)),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/facade-profile"))
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per system per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="a directory holding another `service` package")
    parser.add_argument("--http", action="store_true", help="also measure the facade over HTTP")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct Triton client")
    parser.add_argument("--profile", action="store_true", help="then py-spy each facade under the same load")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the facade(s)")
    parser.add_argument("--micro", action="store_true", help="only the in-process step timings, old vs new")
    args = parser.parse_args(argv)
    if args.micro:
        print(f"{'step':28} {'case':8} {'old us':>8} {'new us':>8}")
        for step, case, old_us, new_us in micro():
            print(f"{step:28} {case:8} {old_us:8.1f} {new_us:8.1f}")
        return
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = dict(item.split("=", 1) for item in args.env)
    texts = make_texts(LengthSpec(*WORKLOADS["short"]), 512, seed=0)
    requests = [[t] for t in texts]
    tokenize = systems.Tokenize(args.repository / MODEL)
    plans = systems.plan_requests(requests, tokenize, [16, 32, 64, 128], 16384, 32)
    spec = LoadSpec(concurrency=args.concurrency, requests=0, duration_s=args.duration)

    triton = start_triton(args.repository, out / "triton.log")
    with ExitStack() as stack:
        stack.callback(triton.stop)
        triton_process = psutil.Process(triton.process.pid)
        facades: dict[str, FacadeProcess] = {
            "facade": stack.enter_context(launch_facade(args.repository, triton.grpc_url, out, env=env))
        }
        if args.baseline is not None:
            facades["baseline"] = stack.enter_context(
                launch_facade(args.repository, triton.grpc_url, out, env=env, cwd=args.baseline.resolve())
            )

        def load(name: str, protocol: str) -> Callable[[], Summary]:
            if name == "direct":
                return lambda: asyncio.run(systems.run_direct_triton(triton.grpc_url, MODEL, HIDDEN, plans, spec))
            f = facades[name]
            if protocol == "http":
                return lambda: asyncio.run(systems.run_http(f.base_url, MODEL, HIDDEN, requests, spec))[0]
            return lambda: asyncio.run(systems.run_grpc(f.target, HIDDEN, requests, spec))

        def runs() -> Iterator[tuple[str, str]]:
            for name in facades:
                yield name, "grpc"
                if args.http:
                    yield name, "http"
            if not args.no_direct:
                yield "direct", "grpc"

        tallies: dict[str, Tally] = collections.defaultdict(Tally)
        for round_ in range(args.rounds):
            for name, protocol in runs():
                fp = psutil.Process(facades[name].process.pid) if name in facades else None
                before = (process_cpu(fp) if fp else 0.0, process_cpu(triton_process), self_cpu())
                summary = load(name, protocol)()
                after = (process_cpu(fp) if fp else 0.0, process_cpu(triton_process), self_cpu())
                tally = tallies[f"{name} {protocol}" if name != "direct" else "direct triton"]
                tally.ok += summary.ok
                tally.wall_s += summary.wall_s
                tally.p50_ms.append(summary.p50_ms)
                tally.facade_s += after[0] - before[0]
                tally.triton_s += after[1] - before[1]
                tally.client_s += after[2] - before[2]
                n = max(summary.ok, 1)
                print(
                    f"round {round_} {name:8} {protocol:4} inputs/s {summary.inputs_per_s:7.0f} "
                    f"p50 {summary.p50_ms:6.2f} ms  cpu ms/request: facade {1000 * (after[0] - before[0]) / n:.3f} "
                    f"triton {1000 * (after[1] - before[1]) / n:.3f} client {1000 * (after[2] - before[2]) / n:.3f}",
                    flush=True,
                )
        rows = [tally.row(name) for name, tally in tallies.items()]
        print("\nsummary (CPU ms per request, summed over rounds):")
        for row in rows:
            print(
                f"  {row['system']:16} facade {row['facade_cpu_ms']:.3f}  triton {row['triton_cpu_ms']:.3f}  "
                f"client {row['client_cpu_ms']:.3f}  inputs/s {row['inputs_per_s']:.0f}  "
                f"p50 {row['p50_ms_median']:.2f} ms"
            )
        report: dict[str, Any] = {"concurrency": args.concurrency, "rows": rows, "profiles": {}}

        if args.profile:
            py_spy = str(Path(sys.executable).parent / "py-spy")
            for name, f in facades.items():
                for protocol in ("grpc", "http") if args.http else ("grpc",):
                    raw = out / f"{name}-{protocol}.pyspy.txt"
                    spy = subprocess.Popen(
                        [py_spy, "record", "--pid", str(f.process.pid), "--duration", str(int(args.duration)),
                         "--rate", "200", "--format", "raw", "-o", str(raw), "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    load(name, protocol)()
                    spy.wait()
                    frames = top_frames(raw)
                    report["profiles"][f"{name} {protocol}"] = frames
                    print(f"\n{name} {protocol}: top self frames (% of samples)")
                    for pct, frame in frames["self"][:15]:
                        print(f"  {pct:5.1f}% {frame}")
                    print(f"{name} {protocol}: top inclusive frames")
                    for pct, frame in frames["inclusive"][:25]:
                        print(f"  {pct:5.1f}% {frame}")
        (out / "facade_profile.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
