"""export/gptq.py: the MatMulNBits it writes computes exactly with the weights it describes (ONNX Runtime against
numpy), and GPTQ's error compensation lowers the layer's output error against round to nearest on correlated
inputs (what ONNX Runtime 1.32's own GPTQ fails to do: its codes equal round to nearest's)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.gptq import dequantize, gptq, matmul_nbits


def correlated_inputs(rng: np.random.Generator, k: int) -> np.ndarray:
    x = rng.standard_normal((400, k))
    x[:, :4] *= 10  # a few outlier channels, as trained models have
    return x @ rng.standard_normal((k, k)) * 0.3


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("k", "n", "block"), [(64, 48, 32), (96, 40, 32), (80, 24, 16)])
def test_matmul_nbits_equals_the_dequantized_weights(bits: int, k: int, n: int, block: int) -> None:
    rng = np.random.default_rng(bits * 1000 + k)
    weight = rng.standard_normal((k, n)).astype(np.float32)
    x = correlated_inputs(rng, k)
    codes, scales, zeros = gptq(weight, x.T @ x / len(x), bits, block)
    assert codes.max() <= 2**bits - 1
    node = helper.make_node("MatMul", ["A", "W"], ["Y"], name="mm")
    new, inits = matmul_nbits(node, codes, scales, zeros, bits, block)
    graph = helper.make_graph(
        [new],
        "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = x[:7].astype(np.float32)
    got = session.run(["Y"], {"A": a})[0]
    np.testing.assert_allclose(got, a @ dequantize(codes, scales, zeros, block), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_lowers_the_output_error_of_round_to_nearest(bits: int) -> None:
    rng = np.random.default_rng(bits)
    k, n, block = 64, 96, 32
    weight = rng.standard_normal((k, n)).astype(np.float32)
    x = correlated_inputs(rng, k)
    aware = dequantize(*gptq(weight, x.T @ x / len(x), bits, block), block)
    # An identity Hessian compensates nothing: round to nearest on the same per-block grid.
    nearest = dequantize(*gptq(weight, np.eye(k), bits, block), block)
    error_aware, error_nearest = np.linalg.norm(x @ (aware - weight)), np.linalg.norm(x @ (nearest - weight))
    assert error_aware < 0.6 * error_nearest
