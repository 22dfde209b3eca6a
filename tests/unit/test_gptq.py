"""export/gptq.py: the MatMulNBits it writes computes exactly with the weights it describes (ONNX Runtime against
numpy), and GPTQ's error compensation lowers the layer's output error against round to nearest on correlated
inputs (what ONNX Runtime 1.32's own GPTQ fails to do: its codes equal round to nearest's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.gptq import dequantize, gptq, layer_hessians, matmul_nbits
from service.contract import ATTENTION_MASK, INPUT_IDS


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


@pytest.mark.parametrize("on_disk", [False, True])
def test_layer_hessians_are_the_inputs_second_moments(tmp_path: Path, on_disk: bool) -> None:
    """Each MatMul's H is x^T x / tokens of its own input over all calibration texts (numpy computes the
    reference); with `source`, from the graph on disk whose weights live in model.onnx.data (as a graph past 2 GB
    must: the 0.6B-shape gptq export failed serializing it in one piece), and no tap file is left behind."""
    rng = np.random.default_rng(3)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    w1, w2 = rng.standard_normal((8, 6)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", INPUT_IDS], ["x1"], name="embed"),
        helper.make_node("MatMul", ["x1", "w1"], ["x2"], name="mm1"),
        helper.make_node("MatMul", ["x2", "w2"], ["y"], name="mm2"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, [1, None]) for n in (INPUT_IDS, ATTENTION_MASK)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((table, "table"), (w1, "w1"), (w2, "w2"))]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = None
    if on_disk:
        source = tmp_path / "model.onnx"
        onnx.save_model(model, str(source), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
        model = onnx.load(str(source))
    texts = [[1, 5, 7, 9], [2, 3], [40, 41, 42]]
    got = layer_hessians(model, ["mm1", "mm2"], texts, source)
    x1 = np.concatenate([table[t] for t in texts]).astype(np.float64)
    x2 = x1 @ w1
    np.testing.assert_allclose(got["mm1"], x1.T @ x1 / len(x1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["mm2"], x2.T @ x2 / len(x1), rtol=1e-4, atol=1e-5)
    assert len(model.graph.output) == 1  # the taps are gone from the model that is then quantized
    assert sorted(f.name for f in tmp_path.iterdir()) == (["model.onnx", "model.onnx.data"] if on_disk else [])
