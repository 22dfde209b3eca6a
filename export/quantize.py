"""Weight-only quantization of an exported fused graph: every linear layer's MatMul (a float weight initializer
[in, out]) becomes ONNX Runtime's com.microsoft.MatMulNBits with 8- or 4-bit weights in blocks of `block_size`
input rows, each block with its own scale and zero point. Norms, attention (GroupQueryAttention) and the reranker's
two-row head stay as they are, in float32; the token embedding table is stored in float16 (its rows cast back to
float32 after the Gather), and every weight goes to model.onnx.data, which ONNX Runtime maps (save_quantized).

Activations (--quant-activations): fp32 (above; what ONNX Runtime's CPU provider runs fastest) or fp16: the graph
quantized is the float16 fused graph (--precision fp16's), so MatMulNBits takes float16 inputs with float16 scales
and GroupQueryAttention runs in float16, the only types ONNX Runtime's CUDA provider has GroupQueryAttention
kernels for: with float32 activations every layer's attention falls back to the CPU provider on a GPU
(docs/gpu-kit.md). The float16 graph's table is float16 already; its output is cast to float32 as the fp16 export's.

Methods (onnxruntime.quantization.matmul_nbits_quantizer, no other library):
- rtn: round to nearest per block (no data); int8 and int4.
- hqq: half-quadratic quantization (no data): per block, the zero point and scale are optimised to minimise the
  weights' reconstruction error under a sparsity-promoting norm, instead of taken from min/max; int4 only.
- gptq: data-aware (export/gptq.py): the rounding error of each input row is spread over the rows not yet
  quantized, weighted by the Hessian of the layer's inputs on calibration texts; int8 and int4. Our own: ONNX
  Runtime 1.32's GPTQ (vendored from Intel Neural Compressor) spreads it along the wrong axis of its Cholesky factor
  (all zeros there), so its codes equal round-to-nearest's bit for bit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from export.errors import ExportError
from service.contract import Precision

METHODS = ("rtn", "hqq", "gptq")
# Per precision, the methods ONNX Runtime can write as MatMulNBits.
METHODS_FOR = {Precision.INT8: ("rtn", "gptq"), Precision.INT4: ("rtn", "hqq", "gptq")}
# Calibration texts are cut to this many tokens: the Hessians need the channels' correlations, not long context,
# and every linear layer's input of the whole text is held at once.
CALIBRATION_MAX_TOKENS = 512
# 32 input rows per scale: ONNX Runtime GenAI's model builder default for int4; 128 halves the scale overhead
# (one fp32 scale + a zero point per block) at some accuracy.
DEFAULT_BLOCK_SIZE = 32
BLOCK_SIZES = (16, 32, 64, 128, 256)
# --quant-compute -> MatMulNBits' accuracy_level attribute (0: unset, fp32 compute on CPU; 4: int8 compute).
COMPUTE_LEVELS = {"fp32": 0, "int8": 4}
EMBEDDING_DTYPES = ("fp16", "fp32")
# --quant-activations: the dtype of the graph the linear layers are quantized in (see the module's docstring).
ACTIVATIONS = ("fp32", "fp16")
# --quant-compute when it is not given, per activations. fp16: float compute (accuracy_level unset), because
# MatMulNBits with float16 activations and accuracy_level 4 on ONNX Runtime 1.32's CPU provider, at the basic
# optimization level the gate verifies at, lost the dev int4 graph's accuracy (worst cosine 0.906 against fp32,
# 0.995 unset; docs/export.md "Quantized models"): refused in validate. CUDA is what fp16 activations are for.
DEFAULT_COMPUTE = {"fp32": "int8", "fp16": "fp32"}


@dataclass(frozen=True)
class QuantSettings:
    precision: Precision
    method: str = "rtn"
    block_size: int = DEFAULT_BLOCK_SIZE
    # What MatMulNBits multiplies in: "int8" (activations quantized per block on the fly, integer dot products:
    # ONNX Runtime's accuracy_level 4) or "fp32" (weights dequantized, float activations). int8 by default: on
    # ONNX Runtime 1.32's CPU provider it was faster at every batch size measured (one 2560 x 19456 layer, 4-bit:
    # 13x fp32's MatMul at 1 token, 2x at 20, 1.25x at 640), while 8-bit weights with fp32 compute have no MLAS
    # kernel and are dequantized whole on every call (0.03x at 1 token). docs/export.md, "Quantized models".
    compute: str = "int8"
    # The token embedding table's dtype in the quantized graph: float16 by default (half the bytes; the rows are
    # cast back to float32 after the Gather, each value rounded to float16), or float32 as in the float graph.
    embedding: str = "fp16"
    # The activations' dtype (ACTIVATIONS): "fp16" for GPUs (float16 GroupQueryAttention and MatMulNBits), "fp32"
    # for the CPU provider (float32 everywhere but the quantized weights).
    activations: str = "fp32"

    @property
    def bits(self) -> int:
        return self.precision.weight_bits


def validate(settings: QuantSettings) -> None:
    """One clear line per wrong combination (the user's to fix)."""
    if settings.precision not in METHODS_FOR:
        raise ExportError(f"--quant-method applies to --precision int8/int4, not {settings.precision}")
    allowed = METHODS_FOR[settings.precision]
    if settings.method not in allowed:
        raise ExportError(
            f"--quant-method {settings.method!r} is not available for {settings.precision} "
            f"(choose {', '.join(allowed)})"
        )
    if settings.compute not in COMPUTE_LEVELS:
        raise ExportError(f"--quant-compute must be one of {', '.join(COMPUTE_LEVELS)}, not {settings.compute!r}")
    if settings.embedding not in EMBEDDING_DTYPES:
        raise ExportError(
            f"the embedding table's dtype must be one of {', '.join(EMBEDDING_DTYPES)}, not {settings.embedding!r}"
        )
    if settings.block_size not in BLOCK_SIZES:
        raise ExportError(f"--quant-block-size must be one of {', '.join(map(str, BLOCK_SIZES))}")
    if settings.activations not in ACTIVATIONS:
        raise ExportError(
            f"--quant-activations must be one of {', '.join(ACTIVATIONS)}, not {settings.activations!r}"
        )
    if settings.activations == "fp16" and settings.compute == "int8":
        raise ExportError(
            "--quant-compute int8 is refused with --quant-activations fp16: ONNX Runtime's CPU provider computes "
            "float16 MatMulNBits with accuracy_level 4 inaccurately (dev int4: worst cosine 0.906 against fp32); "
            "use --quant-compute fp32 (the default with fp16 activations)"
        )
    if settings.activations == "fp16" and settings.embedding != "fp16":
        # The float16 graph's table is float16 like everything else in it; there is no float32 table to keep.
        raise ExportError("--quant-activations fp16 keeps the embedding table in float16 (the float16 graph's own)")


def linear_matmuls(model: onnx.ModelProto, min_out: int = 16) -> list[str]:
    """Names of the MatMuls whose second input is a 2-D float weight initializer with at least `min_out` output
    columns: the linear layers. The reranker head ([hidden, 2]) is below min_out and stays float."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        dims = shapes.get(node.input[1])
        if dims is not None and len(dims) == 2 and dims[1] >= min_out:
            names.append(node.name)
    return names


def quantize_graph(
    onnx_path: Path, settings: QuantSettings, calibration: Sequence[Sequence[int]] = ()
) -> int:
    """Rewrites the float graph at `onnx_path` (float32, or float16 for settings.activations "fp16") in place with
    quantized linear layers; returns how many MatMuls it quantized. `calibration`: token ids of the calibration
    texts (gptq)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )
    from onnxruntime.quantization.quant_utils import QuantFormat

    validate(settings)
    model = onnx.load(str(onnx_path))  # external data (model.onnx.data) is read in too
    include = linear_matmuls(model)
    exclude = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in include]
    if not include:
        raise ExportError("the graph has no linear-layer MatMul to quantize")
    expected = FLOAT_TYPES[settings.activations]
    weight_types = {t.name: t.data_type for t in model.graph.initializer}
    wrong = {weight_types[n.input[1]] for n in model.graph.node if n.name in include} - {expected}
    if wrong:
        raise ExportError(
            f"--quant-activations {settings.activations} quantizes a {onnx.TensorProto.DataType.Name(expected)} "
            f"graph; its linear layers are {', '.join(onnx.TensorProto.DataType.Name(t) for t in sorted(wrong))}"
        )
    if settings.method == "gptq":
        if not calibration:
            raise ExportError("--quant-method gptq needs calibration texts")
        from export.gptq import quantize_model

        out = quantize_model(model, include, calibration, settings.bits, settings.block_size, source=onnx_path)
        return _check_and_save(out, include, onnx_path, settings)
    config: object
    if settings.method == "hqq":
        config = HQQWeightOnlyQuantConfig(
            block_size=settings.block_size, bits=settings.bits, quant_format=QuantFormat.QOperator
        )
    else:
        config = DefaultWeightOnlyQuantConfig(
            block_size=settings.block_size,
            is_symmetric=False,
            bits=settings.bits,
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=("MatMul",),
        )
    # The quantizer logs a line per node at INFO on the root logger it configures; keep the export's output.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=settings.bits,
        block_size=settings.block_size,
        is_symmetric=False,
        nodes_to_exclude=exclude,
        algo_config=config,  # type: ignore[arg-type]
    )
    quantizer.process()
    return _check_and_save(quantizer.model.model, include, onnx_path, settings)


def _check_and_save(out: onnx.ModelProto, include: list[str], onnx_path: Path, settings: QuantSettings) -> int:
    level = COMPUTE_LEVELS[settings.compute]
    done = 0
    for node in out.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        done += 1
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if level:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
    if done != len(include):
        raise ExportError(f"quantized {done} of {len(include)} linear layers; the graph is not what was expected")
    if settings.activations == "fp16":
        _check_half_graph(out)
    elif settings.embedding == "fp16" and not half_embedding_table(out):
        raise ExportError(f"the graph has no float32 {EMBED_TABLE} read only by a Gather to store in float16")
    save_quantized(out, onnx_path)
    return done


EMBED_TABLE = "embed_tokens.weight"
FLOAT_TYPES = {"fp32": onnx.TensorProto.FLOAT, "fp16": onnx.TensorProto.FLOAT16}


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every value of a graph whose nodes are in topological order (as the exporter writes
    them), without running it: inputs and initializers as declared, a Cast's output its `to`, a Shape's int64, and
    every other node's outputs its first input's type. That last rule holds for each op the fused graph has (the
    elementwise ops, Reshape, Gather, Split, the norms, QuickGelu, GroupQueryAttention, MatMulNBits: output type =
    the data input's type); onnx's own shape inference cannot type it (no schemas for com.microsoft ops)."""
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Cast":
            out = next(a.i for a in node.attribute if a.name == "to")
        elif node.op_type == "Shape":
            out = onnx.TensorProto.INT64
        else:
            out = types.get(node.input[0], onnx.TensorProto.UNDEFINED)
        for name in node.output:
            if name:
                types[name] = out
    return types


def half_placement_errors(model: onnx.ModelProto) -> list[str]:
    """What keeps a quantized graph from running its layers in float16: each GroupQueryAttention's query, key,
    value and rotary caches and each MatMulNBits' activations and scales must be float16 (ONNX Runtime's CUDA
    provider has GroupQueryAttention kernels for float16 / bfloat16 only; MatMulNBits' scales have its activations'
    type), and the embedding table too. [] when it is all float16."""
    types = value_types(model)
    half = onnx.TensorProto.FLOAT16
    errors = []
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            checked = [node.input[i] for i in (0, 1, 2, 7, 8)]
        elif node.op_type == "MatMulNBits":
            checked = [node.input[0], node.input[2]]
        else:
            continue
        errors += [
            f"{node.op_type} {node.name} input {name} is {onnx.TensorProto.DataType.Name(types.get(name, 0))}"
            for name in checked
            if types.get(name) != half
        ]
    if types.get(EMBED_TABLE) != half:
        errors.append(f"{EMBED_TABLE} is not float16")
    return errors


def _check_half_graph(model: onnx.ModelProto) -> None:
    """A quantized float16 graph must be float16 where the GPU needs it (half_placement_errors): refused rather
    than published as a graph whose attention would run on the CPU provider under CUDA, or that ONNX Runtime
    would reject at load (scales of another type than the activations)."""
    errors = half_placement_errors(model)
    if errors:
        raise ExportError(f"the float16 quantized graph is not float16 throughout: {errors[0]} ({len(errors)} in all)")


def half_embedding_table(model: onnx.ModelProto) -> bool:
    """Stores the token embedding table in float16 and casts the gathered rows back to float32: the Gather reads
    half the bytes, and the rest of the graph sees float32 as before, each value rounded to float16 (an 11-bit
    significand; relative error <= 2**-11). Returns False when the graph has no float32 table to convert."""
    import numpy as np
    from onnx import numpy_helper

    table = next((t for t in model.graph.initializer if t.name == EMBED_TABLE), None)
    if table is None or table.data_type != onnx.TensorProto.FLOAT:
        return False
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == EMBED_TABLE]
    users = [n for n in model.graph.node if EMBED_TABLE in n.input]
    if not gathers or len(users) != len(gathers):
        return False  # the table also feeds something else (a tied head): leave it float32
    half = numpy_helper.from_array(numpy_helper.to_array(table).astype(np.float16), EMBED_TABLE)
    table.CopyFrom(half)
    for gather in gathers:
        rows = gather.output[0]
        half_rows = rows + "_fp16"
        gather.output[0] = half_rows
        cast = onnx.helper.make_node("Cast", [half_rows], [rows], name=gather.name + "_to_fp32",
                                     to=onnx.TensorProto.FLOAT)
        position = list(model.graph.node).index(gather)
        model.graph.node.insert(position + 1, cast)
    return True


def save_quantized(model: onnx.ModelProto, path: Path) -> None:
    """model.onnx and its weights in model.onnx.data, replacing the float graph and its data file, whatever the
    size: ONNX Runtime maps an external data file and copies out only what it must (MatMulNBits' weights are
    packed at load and the originals released), while a graph in one protobuf is parsed whole into the heap. One
    2,560 x 19,456 int4 layer with the 4B shape's table: 1,540 MiB of RSS after a run inline, 99 MiB external
    (`python -m benchmarks.quant_memory`; docs/export.md, "Quantized models")."""
    from export.onnx_graph import save_with_external_data

    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    save_with_external_data(model, path)
