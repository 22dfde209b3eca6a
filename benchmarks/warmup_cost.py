"""What Triton's model warm-up costs and buys: `.venv/bin/python -m benchmarks.warmup_cost [--model dev]`.

For each warm-up set (none, powers of two to 8192, every rung of the default ladder to 8192), one Triton start
on a copy of the cached benchmark export: seconds until READY, then the first and the second direct-Triton
call (batch 1, every Triton instance in turn) at lengths that are rungs of the default ladder but not powers of
two, and at one power of two. Decides which rungs `qwen3-embed export` warms up (export/triton_config.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run import CACHE, ROOT, clean, log, machine, model_facts, prepare_model
from export.triton_config import WARMUP_MAX_TOKENS, parse_pbtxt, to_pbtxt, warmup_file
from service.contract import ATTENTION_MASK, INPUT_IDS, default_buckets

PROBES = (40, 80, 320, 1288, 5160, 1024)  # rungs of the 3/octave ladder, not powers of two but 1024


def warmup_sets(max_tokens: int, per_octave: int) -> dict[str, list[int]]:
    top = min(max_tokens, WARMUP_MAX_TOKENS)
    return {
        "none": [],
        "powers of two": default_buckets(top, per_octave=1),
        "every rung": [b for b in default_buckets(max_tokens, per_octave=per_octave) if b <= top],
    }


def repo_with_warmup(repo: Path, tag: str, lengths: list[int]) -> Path:
    """A hard-linked copy of the repository whose config.pbtxt warms up `lengths` (as export writes it)."""
    from tritonclient.grpc import model_config_pb2 as mc

    out = repo.parent / f"{repo.name}-warmup-{tag}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repo, out, copy_function=os.link)
    model = out / "qwen3_embedding"
    cfg = parse_pbtxt((model / "config.pbtxt").read_text())
    del cfg.model_warmup[:]
    (model / "warmup").mkdir(exist_ok=True)
    for length in lengths:
        np.ones(length, dtype="<i8").tofile(model / "warmup" / warmup_file(length))
        warm = cfg.model_warmup.add(name=f"warmup_len_{length}", batch_size=1)
        for name in (INPUT_IDS, ATTENTION_MASK):
            warm.inputs[name].data_type = mc.TYPE_INT64
            warm.inputs[name].dims.append(length)
            warm.inputs[name].input_data_file = warmup_file(length)
    (model / "config.pbtxt").unlink()  # a hard link: never write through it into the original
    (model / "config.pbtxt").write_text(to_pbtxt(cfg))
    return out


def call_ms(client: Any, length: int, hidden: int) -> float:
    import tritonclient.grpc as grpcclient

    ids = np.ones((1, length), dtype=np.int64)
    inputs = [
        grpcclient.InferInput(INPUT_IDS, [1, length], "INT64"),
        grpcclient.InferInput(ATTENTION_MASK, [1, length], "INT64"),
    ]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(ids)
    start = time.perf_counter()
    out = client.infer("qwen3_embedding", inputs).as_numpy("embedding")
    if out is None or out.shape != (1, hidden):
        raise RuntimeError(f"bad output {None if out is None else out.shape}")
    return (time.perf_counter() - start) * 1000


def measure(model: str, logs: Path, per_octave: int) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from service.triton.runtime import start_triton

    _, repo = prepare_model(model, 8192)
    hidden, _ = model_facts(repo)
    cfg = parse_pbtxt((repo / "qwen3_embedding" / "config.pbtxt").read_text())
    instances = cfg.instance_group[0].count
    rows = []
    for tag, lengths in warmup_sets(8192, per_octave).items():
        variant = repo_with_warmup(repo, tag.replace(" ", "_"), lengths)
        started = time.perf_counter()
        triton = start_triton(variant, logs / f"triton-warmup-{tag.replace(' ', '_')}.log")
        ready_s = time.perf_counter() - started
        try:
            client = grpcclient.InferenceServerClient(triton.grpc_url)
            probes = {}
            for n in PROBES:
                # Calls one after another go to the instances in turn: `instances` first calls, then as many more.
                calls = [call_ms(client, n, hidden) for _ in range(2 * instances)]
                probes[str(n)] = {"first_ms": calls[:instances], "again_ms": calls[instances:]}
            client.close()
        finally:
            triton.stop()
            shutil.rmtree(variant, ignore_errors=True)
        rows.append({"warmup": tag, "lengths": lengths, "ready_s": ready_s, "probes": probes})
        first = {n: round(max(p["first_ms"]), 1) for n, p in probes.items()}
        again = {n: round(max(p["again_ms"]), 1) for n, p in probes.items()}
        log(f"{model} warm-up {tag} ({len(lengths)} lengths): ready in {ready_s:.1f} s; first {first} again {again}")
    return {"model": model, "instances": instances, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dev", choices=("dev", "0.6B"))
    parser.add_argument("--per-octave", type=int, default=3, help="the ladder whose every rung is warmed up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    logs = CACHE / "logs" / f"warmup-{run_id}"
    result = measure(args.model, logs, args.per_octave)
    command = f".venv/bin/python -m benchmarks.warmup_cost --model {args.model} --per-octave {args.per_octave}"
    result.update(run=run_id, machine=machine(), command=command)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"warmup-{args.model}-{run_id}.json"
    path.write_text(json.dumps(clean(result), indent=1))
    log(f"results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
