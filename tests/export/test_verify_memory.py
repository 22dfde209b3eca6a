"""An fp16 graph on ONNX Runtime's CPU provider: the verification session must not hold fp32 copies of every
weight at once. The CPU provider has no fp16 MatMul, so each fp16 weight is cast to fp32 at run time. In the
default execution order all those Casts run first; a 4B fp16 export was killed at 24 GiB in its verification.
Measured in a fresh process: the peak RSS growth of one run over the loaded session."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LAYERS, WIDTH = 32, 1024  # 32 fp16 weights of 2 MiB each: 128 MiB as fp32 copies if all live at once
MIB = 1024**2

PROBE = """
import json, resource, sys
import numpy as np
from export.verify import ort_session
from service.contract import Precision
session, _ = ort_session(__import__("pathlib").Path(sys.argv[1]), Precision.FP16)
x = np.ones((1, {width}), np.float16)
session.run(None, {{"x": x}})  # first run: allocations that stay (arena)
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
loaded = hwm()
out = session.run(None, {{"x": x}})[0]
print(json.dumps({{"loaded": loaded, "peak": hwm(), "finite": bool(np.isfinite(out).all())}}))
"""


def chain_of_matmuls(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float16)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, WIDTH])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT16, [1, WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))


def test_fp16_verification_session_casts_one_weight_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "chain.onnx"
    chain_of_matmuls(path)
    probe = PROBE.format(width=WIDTH)
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    growth = result["peak"] - result["loaded"]
    print(f"fp16 chain of {LAYERS} MatMuls: peak growth of a run {growth / MIB:.1f} MiB")
    assert result["finite"]
    # All casts first would hold 128 MiB of fp32 weights; one at a time holds a few MiB.
    assert growth < 32 * MIB
