"""GPTQ (Frantar et al., 2022) for the linear layers of a float32 ONNX graph, written as MatMulNBits.

Why here and not ONNX Runtime's: onnxruntime.quantization's GPTQ (vendored from Intel Neural Compressor, ORT 1.32)
compensates each row's rounding error with a column of the upper-triangular Cholesky factor below its diagonal,
which is all zeros: its codes equal round-to-nearest's bit for bit (docs/export.md, "Quantized models").

Data-aware: the Hessian H = sum x^T x of each linear layer's inputs on calibration texts (one run of the float graph
per text, every layer's input fetched at once) weighs the rounding of each input row, and the error of each
quantized row is spread over the rows not yet quantized, in proportion to how the inputs correlate. Pure numpy on
[K, N] weights (the graph's MatMul layout); ONNX only at the edges."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from service.contract import ATTENTION_MASK, INPUT_IDS

# Dampening of H's diagonal, as a share of its mean (the paper's 1%): keeps H invertible for dead channels.
PERCDAMP = 0.01


def layer_hessians(
    model: onnx.ModelProto,
    matmuls: Sequence[str],
    calibration: Sequence[Sequence[int]],
    source: Path | None = None,
) -> dict[str, np.ndarray]:
    """H (float64 [K, K], mean over tokens) of the input of each named MatMul, from one run per calibration text
    (unpadded, batch 1). The model gets the inputs as extra outputs for the runs and loses them after.

    `source`: the graph's file on disk (with its model.onnx.data beside it). Given, the session is made from a
    graph-only copy written beside it that points at the same data file: a graph past protobuf's 2 GB (the 0.6B
    shape and up in fp32) cannot be serialized in one piece, and a second in-memory copy of its weights would
    double the export's peak."""
    import onnxruntime as ort

    nodes = {n.name: n for n in model.graph.node}
    inputs = sorted({nodes[name].input[0] for name in matmuls})
    outputs = [helper.make_empty_tensor_value_info(name) for name in inputs]
    if source is not None:
        graph_only = onnx.load(str(source), load_external_data=False)
        graph_only.graph.output.extend(outputs)
        tap = source.with_name(".hessian-taps.onnx")
        onnx.save_model(graph_only, str(tap))
        del graph_only
        try:
            session = ort.InferenceSession(str(tap), providers=["CPUExecutionProvider"])
        finally:
            tap.unlink()
    else:
        original = len(model.graph.output)
        model.graph.output.extend(outputs)
        try:
            session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        finally:
            while len(model.graph.output) > original:
                model.graph.output.pop()
    sums: dict[str, np.ndarray] = {}
    tokens = 0
    for seq in calibration:
        ids = np.asarray([list(seq)], dtype=np.int64)
        outs = session.run(inputs, {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)})
        for name, x in zip(inputs, outs, strict=True):
            x2 = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0) + x2.T @ x2
        tokens += ids.shape[1]
    del session
    return {name: sums[nodes[name].input[0]] / max(tokens, 1) for name in matmuls}


def _grid(block: np.ndarray, maxq: int) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric min/max grid of each column of `block` ([rows, N]): scale and integer zero point [N]."""
    lo = np.minimum(block.min(axis=0), 0.0)
    hi = np.maximum(block.max(axis=0), 0.0)
    scale = (hi - lo) / maxq
    scale[scale == 0] = 1.0
    zero = np.clip(np.round(-lo / scale), 0, maxq)
    return scale, zero


def gptq(weight: np.ndarray, hessian: np.ndarray, bits: int, block_size: int) -> tuple[np.ndarray, ...]:
    """weight [K, N] float, hessian [K, K] -> codes [K, N] uint8, scales [k_blocks, N] float32, zero points
    [k_blocks, N] uint8. Each block's grid is taken from its rows after the error of the blocks before it was
    spread onto them (the paper's per-group grid)."""
    maxq = 2**bits - 1
    w = weight.astype(np.float64).copy()
    k, n = w.shape
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0
    h[np.diag_indices(k)] += PERCDAMP * np.mean(np.diag(h))
    # Upper Cholesky factor of H^-1: row i holds how row i's error moves the rows after it.
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T
    k_blocks = -(-k // block_size)
    codes = np.zeros((k, n), dtype=np.uint8)
    scales = np.zeros((k_blocks, n), dtype=np.float32)
    zeros = np.zeros((k_blocks, n), dtype=np.uint8)
    for b in range(k_blocks):
        i1, i2 = b * block_size, min((b + 1) * block_size, k)
        scale, zero = _grid(w[i1:i2], maxq)
        scales[b], zeros[b] = scale, zero
        err = np.zeros((i2 - i1, n))
        for i in range(i1, i2):
            q = np.clip(np.round(w[i] / scale) + zero, 0, maxq)
            codes[i] = q
            e = (w[i] - (q - zero) * scale) / hinv[i, i]
            w[i + 1 : i2] -= np.outer(hinv[i, i + 1 : i2], e)
            err[i - i1] = e
        w[i2:] -= hinv[i1:i2, i2:].T @ err
    return codes, scales, zeros


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, block_size: int) -> np.ndarray:
    """The float [K, N] weights MatMulNBits computes with."""
    rows = np.arange(codes.shape[0]) // block_size
    return ((codes.astype(np.float32) - zeros[rows].astype(np.float32)) * scales[rows]).astype(np.float32)


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., m] -> [..., m * bits / 8] (4 bits: element 2j in the low nibble, 2j + 1 in the high one)."""
    if bits == 8:
        return values.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return (values[..., ::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def matmul_nbits(
    node: onnx.NodeProto, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, block_size: int
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The com.microsoft.MatMulNBits node replacing `node` (inputs: A, B [N, k_blocks, blob], scales [N, k_blocks],
    zero points [N, ceil(k_blocks * bits / 8)]) and its initializers."""
    k, n = codes.shape
    k_blocks = scales.shape[0]
    padded = np.zeros((k_blocks * block_size, n), dtype=np.uint8)
    padded[:k] = codes
    padded[k:] = zeros[-1]  # rows past K: dequantize to 0 (the input has no such columns anyway)
    blob = _pack(padded.T.reshape(n, k_blocks, block_size), bits)
    base = node.input[1]
    inits = [
        numpy_helper.from_array(blob, f"{base}_Q{bits}"),
        numpy_helper.from_array(np.ascontiguousarray(scales.T), f"{base}_scales"),
        numpy_helper.from_array(_pack(np.ascontiguousarray(zeros.T), bits), f"{base}_zero_points"),
    ]
    new = helper.make_node(
        "MatMulNBits",
        [node.input[0], *(t.name for t in inits)],
        list(node.output),
        name=f"{node.name}_Q{bits}",
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block_size,
    )
    return new, inits


def quantize_model(
    model: onnx.ModelProto,
    matmuls: Sequence[str],
    calibration: Sequence[Sequence[int]],
    bits: int,
    block_size: int,
    source: Path | None = None,
) -> onnx.ModelProto:
    """Replaces the named MatMuls of `model` (float32 or float16 weight initializers [K, N]) by GPTQ-quantized
    MatMulNBits (scales in the weights' type).
    `source`: `model`'s file on disk, if it has one (see layer_hessians)."""
    hessians = layer_hessians(model, matmuls, calibration, source)
    weights = {t.name: t for t in model.graph.initializer}
    wanted = set(matmuls)
    nodes: list[onnx.NodeProto] = []
    used: set[str] = set()
    added: list[onnx.TensorProto] = []
    for node in model.graph.node:
        if node.name not in wanted:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        codes, scales, zeros = gptq(weight, hessians[node.name], bits, block_size)
        # MatMulNBits' scales have its activations' type: float16 in a float16 graph (--quant-activations fp16).
        scales = scales.astype(weight.dtype) if weight.dtype == np.float16 else scales
        new, inits = matmul_nbits(node, codes, scales, zeros, bits, block_size)
        nodes.append(new)
        added.extend(inits)
        used.add(node.input[1])
    still = {i for n in nodes for i in n.input}
    keep = [t for t in model.graph.initializer if t.name not in used or t.name in still]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend([*keep, *added])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model
