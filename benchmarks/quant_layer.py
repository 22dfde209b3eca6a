"""One linear layer, float MatMul against ONNX Runtime's MatMulNBits (8 / 4 bits, fp32 or int8 compute), all
sessions in one process and run in turns (best of several), so that every comparison sees the same load of a
shared machine: the kernels alone, without the rest of the graph.

    .venv/bin/python -m benchmarks.quant_layer [--k 2560] [--n 19456] [--threads 2]

The default shape is the 4B model's merged gate/up projection. Prints ms per run and the ratio to fp32 for 1, 20,
160 and 640 rows (one token, one short query, a few, 32 short queries).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.quantize import COMPUTE_LEVELS


def float_model(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"], name="mm")],
        "layer",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, None, n])],
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
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((args.k, args.n)) * 0.02).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads

    def session(model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    sessions = {"fp32": session(float_model(weight))}
    for bits in (8, 4):
        for compute in ("fp32", "int8"):
            sessions[f"int{bits} {compute} compute"] = session(quantized_model(weight, bits, compute))
    print(f"K={args.k} N={args.n}, {args.threads} threads, ONNX Runtime {ort.__version__}")
    for rows in (1, 20, 160, 640):
        a = rng.standard_normal((1, rows, args.k)).astype(np.float32)
        best = dict.fromkeys(sessions, float("inf"))
        for _ in range(7 if rows < 640 else 4):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {"A": a})
                best[name] = min(best[name], time.perf_counter() - start)
        print(f"M={rows:4d} " + "  ".join(f"{k} {v * 1e3:.2f} ms ({best['fp32'] / v:.2f}x)" for k, v in best.items()))


if __name__ == "__main__":
    main()
