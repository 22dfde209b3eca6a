"""Causal attention alone, on CPU: the routes an ONNX graph can take against torch SDPA (issue 10).

    .venv/bin/python -m benchmarks.attention_kernels --shape dev --lengths 2048,4096,8192
    .venv/bin/python -m benchmarks.attention_kernels --shape 0.6B --lengths 4096

One process, 2 intra-op threads for every system, random q/k/v (already rotated and normalised, as the fused
graph feeds them), batch 1, best of `--repeat` runs after one warm-up. Systems:

- `gqa`: com.microsoft.GroupQueryAttention over the whole prompt, as export/fused_graph.py uses it.
- `gqa-noflash`: the same op with ONNX Runtime's CPU flash path switched off (ORT_GQA_DISABLE_FLASH_ATTENTION).
- `gqa-chunked`: the same op called per query chunk with the earlier keys as past key/value (a prefill in
  chunks), so that no chunk computes scores for keys after its last query.
- `loop`: standard ONNX ops in a Loop over query chunks (MatMul, causal bias, Softmax, MatMul against the key
  prefix): only the causal half of the scores is computed, and memory is heads x chunk x length per step.
- `mha-full`: com.microsoft.MultiHeadAttention without a causal mask (its CPU flash kernel). NOT the same
  function: it computes every score, twice a causal kernel's work; shown as the speed ONNX Runtime's fastest
  CPU attention kernel reaches.
- `torch-sdpa`: torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True).

Every causal system's output is compared with `gqa`'s (max abs difference).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

SHAPES = {"dev": (4, 2, 32), "0.6B": (16, 8, 128), "4B": (32, 8, 128)}
MS_DOMAIN = "com.microsoft"


def _session(model: onnx.ModelProto, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str]) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes, "attention", inputs, [oh.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 9
    return model


def _const(name: str, value: Any) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], value=nh.from_array(np.asarray(value), name))


def gqa_model(heads: int, kv_heads: int, head_dim: int, past: bool) -> onnx.ModelProto:
    f = TensorProto.FLOAT
    inputs = [
        oh.make_tensor_value_info("q", f, [1, None, heads * head_dim]),
        oh.make_tensor_value_info("k", f, [1, None, kv_heads * head_dim]),
        oh.make_tensor_value_info("v", f, [1, None, kv_heads * head_dim]),
    ]
    names = ["q", "k", "v", "pk", "pv"] if past else ["q", "k", "v", "", ""]
    if past:
        inputs += [oh.make_tensor_value_info(n, f, [1, kv_heads, None, head_dim]) for n in ("pk", "pv")]
    inputs += [
        oh.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        oh.make_tensor_value_info("total", TensorProto.INT32, []),
    ]
    node = oh.make_node(
        "GroupQueryAttention", [*names, "seqlens_k", "total"], ["y", "present_k", "present_v"],
        domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads,
    )  # fmt: skip
    return _model([node], inputs, ["y", "present_k", "present_v"])


def loop_model(heads: int, kv_heads: int, head_dim: int, chunk: int) -> onnx.ModelProto:
    """q [1, H, L, D] (pre-scaled), k/v [1, KV, L, D] -> y [1, L, H*D], query chunks of `chunk` rows."""
    group = heads // kv_heads
    body = oh.make_graph(
        [
            _const("C", np.array(chunk, np.int64)), _const("one", np.array(1, np.int64)),
            _const("zero", np.array(0, np.int64)), _const("zero1", np.array([0], np.int64)),
            _const("ax3", np.array([3], np.int64)), _const("ax_last", np.array([-1], np.int64)),
            _const("col", np.array([-1, 1], np.int64)),
            _const("neg", np.array(np.finfo(np.float32).min, np.float32)), _const("fzero", np.array(0.0, np.float32)),
            oh.make_node("Mul", ["i", "C"], ["s"]), oh.make_node("Add", ["s", "C"], ["e"]),
            oh.make_node("Unsqueeze", ["s", "zero1"], ["s1"]), oh.make_node("Unsqueeze", ["e", "zero1"], ["e1"]),
            oh.make_node("Slice", ["q5", "s1", "e1", "ax3"], ["qc"]),  # [1, KV, G, C, D]
            oh.make_node("Slice", ["kT", "zero1", "e1", "ax_last"], ["kc"]),  # [1, KV, 1, D, e]
            oh.make_node("Slice", ["v5", "zero1", "e1", "ax3"], ["vc"]),  # [1, KV, 1, e, D]
            oh.make_node("MatMul", ["qc", "kc"], ["scores"]),  # [1, KV, G, C, e]
            oh.make_node("Range", ["s", "e", "one"], ["rows"]), oh.make_node("Range", ["zero", "e", "one"], ["cols"]),
            oh.make_node("Reshape", ["rows", "col"], ["rows2"]), oh.make_node("Less", ["rows2", "cols"], ["future"]),
            oh.make_node("Where", ["future", "neg", "fzero"], ["bias"]),
            oh.make_node("Add", ["scores", "bias"], ["masked"]),
            oh.make_node("Softmax", ["masked"], ["probs"], axis=-1),
            oh.make_node("MatMul", ["probs", "vc"], ["out"]),  # [1, KV, G, C, D]
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "chunk",
        [oh.make_tensor_value_info("i", TensorProto.INT64, []),
         oh.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         oh.make_tensor_value_info("out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    nodes = [
        _const("Cv", np.array([chunk], np.int64)), _const("Cm1", np.array([chunk - 1], np.int64)),
        _const("i2", np.array([2], np.int64)), _const("i3", np.array([3], np.int64)),
        _const("z0", np.array([0], np.int64)), _const("z1", np.array([1], np.int64)),
        _const("z6", np.zeros(6, np.int64)),
        oh.make_node("Shape", ["q"], ["qs"]), oh.make_node("Slice", ["qs", "i2", "i3"], ["L"]),
        # Pad the length to whole chunks: padded keys come after every real query, so the causal bias hides them.
        oh.make_node("Add", ["L", "Cm1"], ["Lc"]), oh.make_node("Div", ["Lc", "Cv"], ["n1"]),
        oh.make_node("Mul", ["n1", "Cv"], ["Lp"]), oh.make_node("Sub", ["Lp", "L"], ["pad"]),
        oh.make_node("Concat", ["z6", "pad", "z0"], ["pads"], axis=0),
        oh.make_node("Pad", ["q", "pads"], ["qp"]), oh.make_node("Pad", ["k", "pads"], ["kp"]),
        oh.make_node("Pad", ["v", "pads"], ["vp"]),
        oh.make_node("Unsqueeze", ["kp", "i2"], ["k5"]),
        oh.make_node("Transpose", ["k5"], ["kT"], perm=[0, 1, 2, 4, 3]),
        oh.make_node("Unsqueeze", ["vp", "i2"], ["v5"]),
        _const("q5shape", np.array([0, kv_heads, group, -1, head_dim], np.int64)),
        oh.make_node("Reshape", ["qp", "q5shape"], ["q5"]),
        oh.make_node("Squeeze", ["n1", "z0"], ["n"]), _const("true", np.array(True)),
        oh.make_node("Loop", ["n", "true"], ["chunks"], body=body),  # [n, 1, KV, G, C, D]
        oh.make_node("Transpose", ["chunks"], ["ct"], perm=[1, 0, 4, 2, 3, 5]),
        _const("yshape", np.array([0, -1, heads * head_dim], np.int64)),
        oh.make_node("Reshape", ["ct", "yshape"], ["y3"]),
        oh.make_node("Slice", ["y3", "z0", "L", "z1"], ["y"]),
    ]  # fmt: skip
    f = TensorProto.FLOAT
    inputs = [
        oh.make_tensor_value_info("q", f, [1, heads, None, head_dim]),
        oh.make_tensor_value_info("k", f, [1, kv_heads, None, head_dim]),
        oh.make_tensor_value_info("v", f, [1, kv_heads, None, head_dim]),
    ]
    return _model(nodes, inputs, ["y"])


def mha_model(heads: int, head_dim: int) -> onnx.ModelProto:
    inputs = [oh.make_tensor_value_info(n, TensorProto.FLOAT, [1, None, heads * head_dim]) for n in "qkv"]
    node = oh.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain=MS_DOMAIN, num_heads=heads)
    return _model([node], inputs, ["y"])


def systems(
    heads: int, kv_heads: int, head_dim: int, chunk: int, threads: int, q: np.ndarray, k: np.ndarray, v: np.ndarray
) -> dict[str, Callable[[], np.ndarray]]:
    """q [1, H, L, D], k/v [1, KV, L, D] -> a callable per system returning [1, L, H*D]."""
    length = q.shape[2]
    qs, ks, vs = (x.transpose(0, 2, 1, 3).reshape(1, length, -1).copy() for x in (q, k, v))
    lens = {"seqlens_k": np.array([length - 1], np.int32), "total": np.array(length, np.int32)}
    gqa = _session(gqa_model(heads, kv_heads, head_dim, past=False), threads)
    os.environ["ORT_GQA_DISABLE_FLASH_ATTENTION"] = "1"  # read when the kernel is created
    gqa_noflash = _session(gqa_model(heads, kv_heads, head_dim, past=False), threads)
    del os.environ["ORT_GQA_DISABLE_FLASH_ATTENTION"]
    gqa_past = _session(gqa_model(heads, kv_heads, head_dim, past=True), threads)
    loop = _session(loop_model(heads, kv_heads, head_dim, chunk), threads)
    mha = _session(mha_model(heads, head_dim), threads)
    kv_rep = heads // kv_heads

    def chunked() -> np.ndarray:
        parts = []
        for s in range(0, length, chunk):
            e = min(length, s + chunk)
            feeds = {
                "q": qs[:, s:e], "k": ks[:, s:e], "v": vs[:, s:e],
                "pk": np.ascontiguousarray(k[:, :, :s]), "pv": np.ascontiguousarray(v[:, :, :s]),
                "seqlens_k": np.array([e - 1], np.int32), "total": np.array(e, np.int32),
            }  # fmt: skip
            parts.append(gqa_past.run(["y"], feeds)[0])
        return np.concatenate(parts, axis=1)

    def torch_sdpa() -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = torch.nn.functional.scaled_dot_product_attention(
                torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), is_causal=True, enable_gqa=True
            )
        return out.transpose(1, 2).reshape(1, length, -1).numpy()

    scaled_q = q / np.float32(np.sqrt(head_dim))
    mha_k, mha_v = (np.repeat(x, kv_rep, axis=1).transpose(0, 2, 1, 3).reshape(1, length, -1).copy() for x in (k, v))
    return {
        "gqa": lambda: gqa.run(["y"], {"q": qs, "k": ks, "v": vs, **lens})[0],
        "gqa-noflash": lambda: gqa_noflash.run(["y"], {"q": qs, "k": ks, "v": vs, **lens})[0],
        "gqa-chunked": chunked,
        "loop": lambda: loop.run(["y"], {"q": scaled_q, "k": k, "v": v})[0],
        "mha-full": lambda: mha.run(["y"], {"q": qs, "k": mha_k, "v": mha_v})[0],
        "torch-sdpa": torch_sdpa,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="dev")
    parser.add_argument("--lengths", default="2048,4096,8192")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    heads, kv_heads, head_dim = SHAPES[args.shape]
    print(f"shape {args.shape}: {heads} heads, {kv_heads} KV heads, head_dim {head_dim}; chunk {args.chunk}")
    print("| tokens | system | best s | vs gqa | vs torch | max abs diff to gqa |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for length in (int(x) for x in args.lengths.split(",")):
        q = rng.standard_normal((1, heads, length, head_dim), dtype=np.float32)
        k = rng.standard_normal((1, kv_heads, length, head_dim), dtype=np.float32)
        v = rng.standard_normal((1, kv_heads, length, head_dim), dtype=np.float32)
        runs = systems(heads, kv_heads, head_dim, args.chunk, args.threads, q, k, v)
        best: dict[str, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for name, fn in runs.items():
            outputs[name] = fn()  # warm-up
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            best[name] = min(times)
        for name in runs:
            diff = "not causal" if name == "mha-full" else f"{float(np.abs(outputs[name] - outputs['gqa']).max()):.1e}"
            print(
                f"| {length} | {name} | {best[name]:.3f} | {best['gqa'] / best[name]:.2f}x | "
                f"{best['torch-sdpa'] / best[name]:.2f}x | {diff} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
