"""GPU reference point (issue 10): torch SDPA forward of the real Qwen3-Embedding shapes, random weights, bf16.

Run once on a lent GPU machine (not in CI; the GPU image has torch and transformers, nothing to install):

    python3 -m benchmarks.gpu_reference --out results/gpu-reference.json

For each shape it times a forward (last-token pooling and L2 normalisation included) on batches of 1k-token
inputs, a few longer single inputs up to 32k, and a batch of short queries, with CUDA events (median of
`--repeat` after warm-up). It reports tokens/s, the model FLOPs those tokens cost (linear layers plus causal
attention), the fraction of the bf16 matrix-product rate measured on the same card in the same run, and the peak
GPU memory of each cell over the loaded weights. Inputs are random token ids of equal length, so no padding mask
is passed and SDPA runs its causal fused kernel.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from export.dev_model import REAL_SHAPES, DevModelShape, qwen3_config


@dataclass
class Cell:
    shape: str
    batch: int
    tokens: int
    seconds: float
    tokens_per_s: float
    tflops: float
    mfu_measured: float
    peak_gib_over_weights: float


def model_flops(shape: DevModelShape, batch: int, length: int) -> float:
    """Forward FLOPs: 2 per weight per token in the linear layers, plus causal attention (QK^T, PV; half the square)."""
    h, d = shape.hidden_size, shape.head_dim
    q, kv = shape.heads * d, shape.kv_heads * d
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * shape.intermediate_size
    linear = 2.0 * per_layer * shape.layers * batch * length
    attention = 2.0 * 2.0 * shape.heads * d * shape.layers * batch * (length * (length + 1) / 2)
    return linear + attention


def matmul_rate(device: torch.device, n: int = 8192, repeat: int = 10) -> float:
    """bf16 matrix-product rate of this card (TFLOP/s, random data), the ceiling MFU is measured against."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeat
    return 2 * n**3 / seconds / 1e12


def build(shape: DevModelShape, device: torch.device) -> torch.nn.Module:
    from transformers import Qwen3Model

    config = qwen3_config(shape, "bfloat16")
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with device:
        model = Qwen3Model(config).bfloat16()
    return model.eval()


def embed(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=ids, use_cache=False).last_hidden_state
    return F.normalize(hidden[:, -1].float(), dim=-1)


def time_cell(model: torch.nn.Module, batch: int, length: int, vocab: int, warmup: int, repeat: int) -> float:
    device = next(model.parameters()).device
    # Fresh random ids per run (never zeros); EOS-like pooling position is the last one.
    inputs = [torch.randint(0, vocab, (batch, length), device=device) for _ in range(warmup + repeat)]
    times: list[float] = []
    for i, ids in enumerate(inputs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = embed(model, ids)
        end.record()
        torch.cuda.synchronize()
        if not torch.isfinite(out).all():
            raise RuntimeError(f"non-finite output at batch {batch} x {length}")
        if i >= warmup:
            times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shapes", default="0.6B,4B,8B")
    parser.add_argument("--batches-1k", default="1,8,32")
    parser.add_argument("--long", default="8192,32768", help="single inputs of these lengths")
    parser.add_argument("--short", default="256x32", help="BATCHxTOKENS of short queries")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    rate = matmul_rate(device)
    props = torch.cuda.get_device_properties(device)
    print(f"{props.name}: bf16 8192^3 matmul {rate:.0f} TFLOP/s; torch {torch.__version__}", flush=True)

    short_batch, short_len = (int(x) for x in args.short.split("x"))
    plan = [(b, 1024) for b in map(int, args.batches_1k.split(","))]
    plan += [(1, int(n)) for n in args.long.split(",")]
    plan.append((short_batch, short_len))

    cells: list[Cell] = []
    loaded: dict[str, dict[str, float]] = {}
    for name in args.shapes.split(","):
        shape = REAL_SHAPES[name]
        t0 = time.perf_counter()
        model = build(shape, device)
        torch.cuda.synchronize()
        weights = torch.cuda.memory_allocated(device)
        loaded[name] = {"build_s": time.perf_counter() - t0, "weights_gib": weights / 2**30}
        print(f"{name}: built in {loaded[name]['build_s']:.1f} s, weights {weights / 2**30:.2f} GiB", flush=True)
        with torch.inference_mode():
            for batch, length in plan:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                try:
                    seconds = time_cell(model, batch, length, shape.vocab_size, args.warmup, args.repeat)
                except torch.OutOfMemoryError:
                    print(f"{name} {batch}x{length}: out of memory", flush=True)
                    continue
                peak = (torch.cuda.max_memory_allocated(device) - weights) / 2**30
                flops = model_flops(shape, batch, length)
                cell = Cell(
                    name,
                    batch,
                    length,
                    seconds,
                    batch * length / seconds,
                    flops / seconds / 1e12,
                    flops / seconds / 1e12 / rate,
                    peak,
                )
                cells.append(cell)
                print(
                    f"{name:>5} {batch:>3} x {length:>5}: {seconds * 1000:9.2f} ms  {cell.tokens_per_s:>10,.0f} tok/s  "
                    f"{cell.tflops:6.1f} TFLOP/s ({cell.mfu_measured:.0%} of matmul)  +{peak:.2f} GiB",
                    flush=True,
                )
        del model
        torch.cuda.empty_cache()

    report: dict[str, Any] = {
        "device": props.name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bf16_matmul_tflops": rate,
        "loaded": loaded,
        "cells": [asdict(c) for c in cells],
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    print("\n| shape | batch x tokens | ms | tokens/s | TFLOP/s | of matmul rate | peak GiB over weights |")
    print("|---|---|---|---|---|---|---|")
    for c in cells:
        print(
            f"| {c.shape} | {c.batch} x {c.tokens} | {c.seconds * 1000:.1f} | {c.tokens_per_s:,.0f} | {c.tflops:.0f} | "
            f"{c.mfu_measured:.0%} | {c.peak_gib_over_weights:.2f} |"
        )


if __name__ == "__main__":
    main()
