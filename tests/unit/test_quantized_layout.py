"""How export/quantize.py writes a quantized graph: the token embedding table in float16 with a Cast back to float32
after its Gather (the same values as a float32 table holding the float16-rounded rows), every weight in
model.onnx.data beside model.onnx whatever the size, so that ONNX Runtime maps the table instead of copying it into
the heap (checked on the process's anonymous memory), and the one-line refusals of what it cannot convert."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.onnx_graph import save_with_external_data
from export.quantize import EMBED_TABLE, QuantSettings, quantize_graph, validate
from service.contract import Precision

ROOT = Path(__file__).resolve().parents[2]


def write_graph(path: Path, vocab: int, hidden: int, out: int, tied: bool = False) -> np.ndarray:
    """input_ids -> Gather(table) -> MatMul [hidden, out] (a linear layer the quantizer converts), written as the
    fused export writes a large graph (external data); with `tied`, the table also feeds a second MatMul (as a
    tied LM head would). Returns the float32 table."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, hidden), dtype=np.float32)
    weight = rng.standard_normal((hidden, out), dtype=np.float32) * 0.05
    nodes = [
        helper.make_node("Gather", [EMBED_TABLE, "input_ids"], ["rows"], name="embed", axis=0),
        helper.make_node("MatMul", ["rows", "W"], ["y"], name="linear"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, out])]
    if tied:
        nodes.append(helper.make_node("MatMul", ["rows", "T"], ["head"], name="tied"))
        nodes.append(helper.make_node("Transpose", [EMBED_TABLE], ["T"], name="t", perm=[1, 0]))
        outputs.append(helper.make_tensor_value_info("head", TensorProto.FLOAT, [None, None, vocab]))
    graph = helper.make_graph(
        nodes,
        "layout",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
        outputs,
        [numpy_helper.from_array(table, EMBED_TABLE), numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_with_external_data(model, path)
    return table


def run(path: Path, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"input_ids": ids})[0])


def test_the_table_is_float16_and_gives_its_rounded_rows(tmp_path: Path) -> None:
    graph = tmp_path / "q" / "model.onnx"
    table = write_graph(graph, vocab=300, hidden=64, out=96)
    assert quantize_graph(graph, QuantSettings(Precision.INT4)) == 1
    model = onnx.load(str(graph))
    stored = next(t for t in model.graph.initializer if t.name == EMBED_TABLE)
    assert stored.data_type == TensorProto.FLOAT16
    np.testing.assert_array_equal(numpy_helper.to_array(stored), table.astype(np.float16))
    (cast,) = [n for n in model.graph.node if n.op_type == "Cast"]
    assert cast.input[0] == next(n for n in model.graph.node if n.op_type == "Gather").output[0]
    assert onnx.helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT
    # The same graph with a float32 table of the rounded values: the Cast makes them exactly that.
    stored.CopyFrom(numpy_helper.from_array(table.astype(np.float16).astype(np.float32), EMBED_TABLE))
    model.graph.node.remove(cast)
    next(n for n in model.graph.node if n.op_type == "Gather").output[0] = cast.output[0]
    reference = tmp_path / "r" / "model.onnx"
    reference.parent.mkdir()
    onnx.save_model(model, str(reference))
    ids = np.array([[0, 5, 299, 17]], dtype=np.int64)
    np.testing.assert_array_equal(run(graph, ids), run(reference, ids))
    # fp32 keeps the float graph's table.
    kept = tmp_path / "k" / "model.onnx"
    write_graph(kept, vocab=300, hidden=64, out=96)
    quantize_graph(kept, QuantSettings(Precision.INT4, embedding="fp32"))
    stored = next(t for t in onnx.load(str(kept)).graph.initializer if t.name == EMBED_TABLE)
    assert stored.data_type == TensorProto.FLOAT


def test_a_small_graph_is_written_with_external_data(tmp_path: Path) -> None:
    """Under protobuf's 2 GB too: the weights are in model.onnx.data (the float graph's data file replaced)."""
    graph = tmp_path / "model.onnx"
    write_graph(graph, vocab=300, hidden=64, out=96)
    quantize_graph(graph, QuantSettings(Precision.INT8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    bare = onnx.load(str(graph), load_external_data=False)
    external = {t.name for t in bare.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert EMBED_TABLE in external and any(name.startswith("W") for name in external)
    assert graph.stat().st_size < 64 * 1024


ANON_PROBE = """
import json, sys
import numpy as np, onnxruntime as ort

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

before = anon()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
session.run(None, {"input_ids": np.arange(8, dtype=np.int64)[None, :]})
print(json.dumps({"anon": anon() - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc memory fields")
def test_loading_maps_the_table_instead_of_copying_it(tmp_path: Path) -> None:
    """A 128 MiB float16 table: loading the graph and running it grows the process's anonymous memory by far less
    than the table (ONNX Runtime maps model.onnx.data; only the packed linear layer is copied), where the same
    graph in one protobuf copies the whole table into the heap."""
    graph = tmp_path / "ext" / "model.onnx"
    write_graph(graph, vocab=32768, hidden=2048, out=64)
    quantize_graph(graph, QuantSettings(Precision.INT4))
    inline = tmp_path / "inline" / "model.onnx"
    inline.parent.mkdir()
    onnx.save_model(onnx.load(str(graph)), str(inline))
    table_bytes = 32768 * 2048 * 2

    def anon_growth(path: Path) -> int:
        done = subprocess.run([sys.executable, "-c", ANON_PROBE, str(path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300, check=True)  # fmt: skip
        return int(json.loads(done.stdout.strip().splitlines()[-1])["anon"])

    mapped, copied = anon_growth(graph), anon_growth(inline)
    assert copied >= table_bytes, copied  # the control: inline, the table is in the heap
    assert mapped < table_bytes / 4, (mapped, table_bytes)


def test_what_cannot_be_converted_is_refused(tmp_path: Path) -> None:
    graph = tmp_path / "model.onnx"
    write_graph(graph, vocab=300, hidden=64, out=96, tied=True)
    with pytest.raises(ExportError, match="read only by a Gather"):
        quantize_graph(graph, QuantSettings(Precision.INT4))
    with pytest.raises(ExportError, match="dtype must be one of fp16, fp32"):
        validate(QuantSettings(Precision.INT4, embedding="bf16"))
