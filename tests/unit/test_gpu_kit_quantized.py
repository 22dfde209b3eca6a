"""The GPU kit's quantized section, its pure parts (devtools/gpu_kit/quantized.py) and its settings' checks: what
the lent GPU's one run must not meet for the first time (a typo in a cell or a gate, an int4 graph whose attention
ran on the CPU under a CUDA label). The section itself runs whole in tests/service/test_gpu_kit_measure.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devtools.gpu_kit import driver, measure, quantized
from devtools.gpu_kit.parts import split

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def node(name: str, op: str, provider: str) -> dict[str, Any]:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ph": "X", "args": {"op_name": op, "provider": provider}}


def test_cells_and_gates_parse_or_name_the_mistake() -> None:
    assert quantized.parse_cell("32x1024") == (32, 1024) and quantized.parse_cell("1X4096") == (1, 4096)
    for bad in ("32*1024", "x1024", "32x", "0x64", "4x1", "4x6.5"):
        with pytest.raises(ValueError, match="BATCHxTOKENS"):
            quantized.parse_cell(bad)
    assert quantized.gate_options("project") == {}
    assert quantized.gate_options("lowered") == {"min_cosine": 0.5, "min_overlap": 0.01, "min_spearman": 0.01}
    with pytest.raises(ValueError, match="project, lowered"):
        quantized.gate_options("off")


def test_presets_and_overrides_of_the_quantized_section() -> None:
    h200, dry = measure.PRESETS["h200"], measure.PRESETS["cpu-dry"]
    assert (h200.quant_shape, h200.quant_precision, h200.quant_method) == ("0.6B", "int4", "rtn")
    assert h200.quant_block_sizes == (32, 256) and h200.quant_shape in h200.shapes and h200.quant_gate == "lowered"
    assert [quantized.parse_cell(c) for c in h200.quant_cells] == [(32, 32), (8, 1024), (1, 4096)]
    assert dry.quant_shape == "dev" and dry.quant_block_sizes == (32, 256)
    # Both measure the graph the GPU presets serve: float16 activations.
    assert h200.quant_activations == dry.quant_activations == "fp16"
    for sizes in (h200, dry):
        measure.check_quant_sizes(sizes)  # nothing to fix in either preset
    assert measure.parse_override(h200, "quant_block_sizes=128").quant_block_sizes == (128,)
    assert measure.parse_override(h200, "quant_cells=4x16,1x128").quant_cells == ("4x16", "1x128")
    off = measure.parse_override(h200, "quant_shape=")
    assert off.quant_shape == "" and measure.check_quant_sizes(off) is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("quant_shape=4B-typo", "not among shapes"),
        ("quant_block_sizes=48", "--quant-block-size must be one of"),
        ("quant_method=awq", "--quant-method 'awq' is not available"),
        ("quant_precision=fp16", "applies to --precision int8/int4"),
        ("quant_gate=none", "quant_gate must be one of"),
        ("quant_cells=32x32,8*1024", "BATCHxTOKENS"),
        ("quant_cells=1x65536", "at most max_input_tokens"),
        ("quant_block_sizes=", "needs block sizes"),
        ("quant_activations=bf16", "--quant-activations must be one of"),
    ],
)
def test_a_wrong_quantized_setting_stops_the_run_before_any_device_time(override: str, message: str) -> None:
    sizes = measure.parse_override(measure.PRESETS["h200"], override)
    with pytest.raises(SystemExit, match=message):
        measure.check_quant_sizes(sizes)


def test_the_project_gate_verdict_on_agreement_measured_under_a_lowered_gate() -> None:
    passing = quantized.project_gate("int4", {"worst_cosine": 0.9919, "overlap_at_10": 0.8875, "spearman": 0.9729})
    assert passing["passes"] and passing["failed"] == []
    assert passing["thresholds"] == {"worst_cosine": 0.98, "overlap_at_10": 0.8, "spearman": 0.9}
    # The 0.6B shape's random weights at int4 rtn, blocks of 32 (docs/benchmarks.md, run 2).
    failing = quantized.project_gate("int4", {"worst_cosine": 0.9103, "overlap_at_10": 0.775, "spearman": 0.868})
    assert not failing["passes"]
    assert failing["failed"] == ["worst_cosine 0.9103 < 0.98", "overlap_at_10 0.775 < 0.8", "spearman 0.868 < 0.9"]
    assert quantized.project_gate("int8", {"worst_cosine": 0.9999})["failed"] == [
        "not measured: overlap_at_10, spearman"
    ]


def test_a_refusal_is_a_result_any_other_failure_is_not() -> None:
    # The exporter's two refusals (export/exporter.py); the real one is met in the dry run.
    cosine = quantized.refusal(
        "verification failed: worst cosine 0.9132000 < 0.98 or non-finite outputs; nothing was written"
    )
    assert cosine is not None and cosine["agreement"] == {"worst_cosine": 0.9132}
    assert cosine["refused"].startswith("verification failed")
    retrieval = quantized.refusal(
        "retrieval check failed: overlap@10 0.775 (needs >= 0.8) or Spearman 0.8680 (needs >=\n 0.9) against the "
        "fp32 reference; nothing was written"
    )
    assert retrieval is not None and retrieval["agreement"] == {"overlap_at_10": 0.775, "spearman": 0.868}
    assert "\n" not in retrieval["refused"]
    assert quantized.refusal("not enough memory: exporting ... needs about 9 GiB") is None


def test_placement_shows_an_int4_graph_whose_attention_left_the_gpu(tmp_path: Path) -> None:
    """What the CUDA provider does with the exporter's int4 graph (float32 activations): MatMulNBits runs there,
    GroupQueryAttention (float16/bfloat16 only on CUDA) falls back to the CPU provider. The profile shows it."""
    events = [
        node("l0_qkv", "MatMulNBits", CUDA), node("l1_qkv", "MatMulNBits", CUDA),
        node("l0_attn", "GroupQueryAttention", CPU), node("l1_attn", "GroupQueryAttention", CPU),
        node("ids_shape", "Shape", CPU), node("copy_0", "MemcpyToHost", CUDA),
        node("l0_qkv", "MatMulNBits", CUDA),  # a second event of one node counts once
        {"cat": "Session", "name": "model_run", "args": {}},
    ]  # fmt: skip
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(events))
    where = quantized.placement(profile)
    assert where == {CPU: {"GroupQueryAttention": 2, "Shape": 1}, CUDA: {"MatMulNBits": 2, "MemcpyToHost": 1}}
    assert quantized.heavy_elsewhere(where, CUDA) == {"GroupQueryAttention on CPUExecutionProvider": 2}
    assert quantized.heavy_elsewhere({CUDA: {"MatMulNBits": 2}, CPU: {"Shape": 1}}, CUDA) == {}
    profile.write_text("[]")
    with pytest.raises(RuntimeError, match="no node events"):
        quantized.placement(profile)


def graph(label: str, speed: float, **extra: Any) -> dict[str, Any]:
    return {"label": label, "onnx_bytes": 2**20 * 10, "export_s": 9.0, "peak_gib_at_long": 1.5,
            "cells": {"32x32": {"tokens_per_s": speed}}, "cosine_vs_torch_min": 0.99, **extra}  # fmt: skip


def test_the_table_shows_ratios_refusals_and_what_left_the_provider() -> None:
    q = {
        "shape": "0.6B", "precision": "int4", "method": "rtn", "provider": "cuda", "gate": "lowered",
        "gate_values": quantized.LOWERED_GATE, "cells": ["32x32"],
        "baseline": graph("fp16", 1000.0, precision="fp16"),
        "variants": [
            graph("int4 rtn b32", 500.0, bytes_vs_baseline=0.5, cosine_vs_baseline_min=0.91,
                  agreement={"worst_cosine": 0.91}, heavy_elsewhere={"GroupQueryAttention on CPU": 28},
                  project_gate={"passes": False, "failed": ["worst_cosine 0.91 < 0.98"]}),
            {"label": "int4 rtn b256", "refused": "verification failed: worst cosine 0.5 < 0.6", "export_s": 3.0},
        ],
    }  # fmt: skip
    text = "\n".join(quantized.table(q))
    assert "## quantized 0.6B: int4 (rtn, fp32 activations) vs fp16, ONNX Runtime on cuda" in text
    assert "| int4 rtn b32 | 10.0 (0.50x) | 9 | 500 (0.50x) | 1.500 | 0.910000 | 0.990000 |" in text
    assert "(project gate would refuse: worst_cosine 0.91 < 0.98)" in text
    assert "| int4 rtn b256 | - | 3 | - | - | - | - | refused: verification failed" in text
    assert "int4 rtn b32: not all on cuda: {'GroupQueryAttention on CPU': 28}" in text


def test_the_int4_preset_measures_only_the_quantized_shape_and_the_driver_passes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`driver --preset h200-int4`: the same device runs, with the preset in the background checkpoint build (only
    0.6B, no 4B competing for the cores) and in measure (0.6B, its quantized section, no service part)."""
    assert set(driver.PRESETS) == set(measure.PRESETS) - {"cpu-dry"}
    sizes = measure.PRESETS["h200-int4"]
    assert (sizes.shapes, sizes.service_shape, sizes.quant_shape) == (("0.6B",), "", "0.6B")
    assert measure.shape_order(sizes) == ["0.6B"] and measure.shape_order(measure.PRESETS["h200"]) == ["4B", "0.6B"]
    measure.check_quant_sizes(sizes)
    # Without a service part, its goals are not judged (None), rather than "not met".
    met = measure.goals_met({"sizes": {"service_shape": ""}, "cosine_min_all_shapes": 0.9995})
    assert met == {"ort_vs_torch": None, "cosine": True, "service_vs_ceiling_mixed": None, "short_p50_ms_c1": None,
                   "card_limits_at_default_workers": None}  # fmt: skip
    assert measure.goals_met({"sizes": {"service_shape": "4B"}})["service_vs_ceiling_mixed"] is False

    root = tmp_path / "repo"
    wheel = tmp_path / "dl" / "w-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"\0" * 3000)
    split([wheel], 1024, root)
    runs = driver.plan(root, "abc123", "h200-int4")
    assert len(runs) == 3 and "--prebuild --preset h200-int4 " in runs[0].command
    assert "--provider cuda --preset h200-int4 --commit abc123 " in runs[-1].command
    rerun = driver.rerun_measure("abc123", "h200-int4")
    assert "--preset h200-int4 --commit abc123 --reuse-exports" in rerun.command
    assert all(len(r.command) <= driver.MAX_COMMAND_CHARS for r in [*runs, rerun])
    assert driver.main(["--root", str(root), "--commit", "abc123", "--preset", "h200-int4"]) == 0
    assert capsys.readouterr().out.count("--preset h200-int4") == 3  # runs 1 and 3, and the rerun
