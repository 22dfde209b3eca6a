"""docs/export.md's `python -m benchmarks.quant_layer` commands (float32 and float16 activations), on a layer small
enough for the unit suite: every variant runs and prints its time, and with float16 activations its error against
the float64 product, which stays that of 4- and 8-bit weights (the figures themselves are the doc's, measured)."""

from __future__ import annotations

import re
import sys

import pytest

from benchmarks import quant_layer


@pytest.mark.parametrize("activations", ["fp32", "fp16"])
def test_the_layer_benchmark_runs_every_variant(
    activations: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["quant_layer", "--k", "64", "--n", "96", "--threads", "1", "--activations", activations]
    monkeypatch.setattr(sys, "argv", argv)
    quant_layer.main()
    out = capsys.readouterr().out
    assert f"K=64 N=96, 1 threads, {activations} activations" in out
    rows = [line for line in out.splitlines() if line.startswith("M=")]
    assert [int(r.split("=")[1].split()[0]) for r in rows] == [1, 20, 160, 640]
    for row in rows:
        for variant in ("int8 fp32 compute", "int8 int8 compute", "int4 fp32 compute", "int4 int8 compute"):
            assert f"{variant} " in row
        if activations == "fp16":
            errors = [float(e) for e in re.findall(r"err ([0-9.]+)\)", row)]
            # The float16 MatMul rounds its output only; the quantized weights cost more, but stay close.
            assert len(errors) == 5 and errors[0] < 0.01 and all(0 < e < 0.2 for e in errors[1:]), row
