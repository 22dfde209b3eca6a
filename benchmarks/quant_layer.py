"""One linear layer, float MatMul against ONNX Runtime's MatMulNBits (8 / 4 bits, fp32 or int8 compute), all
sessions in one process and run in turns (best of several), so that every comparison sees the same load of a
shared machine: the kernels alone, without the rest of the graph.

    .venv/bin/python -m benchmarks.quant_layer [--k 2560] [--n 19456] [--threads 2] [--activations fp16]

The default shape is the 4B model's merged gate/up projection. Prints ms per run and the ratio to fp32 for 1, 20,
160 and 640 rows (one token, one short query, a few, 32 short queries). `--activations fp16`: the layer as
--quant-activations fp16 writes it (float16 input, weights quantized from the float16 graph, float16 scales),
against a float16 MatMul, at the basic optimization level the export gate and the python backend run at; each
variant's largest error relative to the float64 product is printed too (`err`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from export.quantize import COMPUTE_LEVELS


def float_model(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    elem = helper.np_dtype_to_tensor_dtype(weight.dtype)  # float32, or float16 for --activations fp16
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"], name="mm")],
        "layer",
        [helper.make_tensor_value_info("A", elem, [None, None, k])],
        [helper.make_tensor_value_info("Y", elem, [None, None, n])],
        [numpy_helper.from_array(weight, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantized_model(weight: np.ndarray, bits: int, compute: str) -> onnx.ModelProto:
    """The export's quantizer settings (round to nearest, asymmetric, blocks of 32) and accuracy_level."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.quantization.quant_utils import QuantFormat

    config = DefaultWeightOnlyQuantConfig(
        block_size=32,
        is_symmetric=False,
        bits=bits,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(
        float_model(weight), bits=bits, block_size=32, is_symmetric=False, algo_config=config
    )
    quantizer.process()
    model: onnx.ModelProto = quantizer.model.model
    for node in model.graph.node:
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if COMPUTE_LEVELS[compute]:
            node.attribute.append(helper.make_attribute("accuracy_level", COMPUTE_LEVELS[compute]))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=2560)
    parser.add_argument("--n", type=int, default=19456)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--activations", choices=("fp32", "fp16"), default="fp32")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    dtype = np.float16 if args.activations == "fp16" else np.float32
    weight = (rng.standard_normal((args.k, args.n)) * 0.02).astype(dtype)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    if args.activations == "fp16":
        # What the gate verifies and model.py serves at; the result of float16 MatMulNBits with int8 compute
        # depends on it (docs/export.md, "Quantized models").
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC

    def session(model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    base = "fp16" if args.activations == "fp16" else "fp32"
    sessions = {base: session(float_model(weight))}
    for bits in (8, 4):
        for compute in ("fp32", "int8"):
            sessions[f"int{bits} {compute} compute"] = session(quantized_model(weight, bits, compute))
    print(f"K={args.k} N={args.n}, {args.threads} threads, {args.activations} activations, ORT {ort.__version__}")
    for rows in (1, 20, 160, 640):
        a = rng.standard_normal((1, rows, args.k)).astype(dtype)
        exact = a.astype(np.float64) @ weight.astype(np.float64)
        best = dict.fromkeys(sessions, float("inf"))
        err = {}
        for _ in range(7 if rows < 640 else 4):
            for name, s in sessions.items():
                start = time.perf_counter()
                y = s.run(None, {"A": a})[0]
                best[name] = min(best[name], time.perf_counter() - start)
                err[name] = float(np.abs(y.astype(np.float64) - exact).max() / np.abs(exact).max())
        shown = [f"{k} {v * 1e3:.2f} ms ({best[base] / v:.2f}x" + (f", err {err[k]:.3f})" if base == "fp16" else ")")
                 for k, v in best.items()]  # fmt: skip
        print(f"M={rows:4d} " + "  ".join(shown))


if __name__ == "__main__":
    main()
