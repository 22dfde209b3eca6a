"""The GPU kit's `measure` run whole on CPU (issue 22): the dev model through this project's exporter, ONNX
Runtime against torch SDPA in process, a real tritonserver and real facades under load, every section the H200
run executes, with CPU in place of CUDA (measure.Device is the only difference) and tiny sizes. So the GPU
never meets a typo; the figures here are CPU's and only checked for sense, never compared with a GPU's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.gpu_kit import measure, quantized
from tests.helpers import ROOT

SECTIONS = [
    "export dev",
    "in process dev: ONNX Runtime vs torch",
    "quantized dev: int4 vs fp16",
    "direct Triton, short",
    "facade (default workers): short, mixed, long",
    "in-process ceiling, mixed and long",
    "facade worker sweep, short",
]


def test_measure_dry_run_on_cpu_writes_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "devtools.gpu_kit.measure", "--provider", "cpu", "--preset", "cpu-dry",
        "--work", str(tmp_path / "work"), "--out-dir", str(out), "--set", "point_s=0.5",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    # Device run 1 starts the checkpoints' build in the background; the last run's measure reuses it. Here in
    # this process (torch is imported already), through the same command line.
    assert measure.main(["--prebuild", "--preset", "cpu-dry", "--work", str(tmp_path / "work")]) == 0
    assert " built in " in capsys.readouterr().out
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [json_path] = out.glob("gpu-service-*.json")
    r = json.loads(json_path.read_text())
    text = json_path.with_suffix(".txt").read_text()
    assert text.count("| grpc |") == 2
    assert "## quantized dev: int4 (rtn, fp16 activations) vs fp16" in text and text.count("| int4 rtn b") == 2

    # The keys other tools read, with sane values.
    assert r["provider"] == "cpu" and r["device"].startswith("CPU")
    assert r["skipped"] == [] and r["errors"] == []
    assert list(r["section_s"]) == SECTIONS  # nothing left out: every section ran
    assert r["cosine_min"] >= 0.999 and r["cosine_min_all_shapes"] >= 0.999
    assert set(r["in_process"]["dev"]["cosine"]) == {"1x32", "1x128", "1x256"}
    # The dev model keeps different inputs apart, so agreeing at >= 0.999 means something here.
    assert r["cosine_between_inputs_max"] < 0.99 and r["cosine_min_centered"] >= 0.999
    assert set(r["ort_vs_torch"]) == {"4x64", "1x256"} and all(v > 0 for v in r["ort_vs_torch"].values())
    for cell in r["in_process"]["dev"]["cells"].values():
        assert cell["torch_tokens_per_s"] > 0 and cell["ort_tokens_per_s"] > 0 and cell["cosine_min"] >= 0.999
    assert set(r["peak_gib_at_long"]) == {"ort", "torch"}
    assert r["export"]["dev"]["verified_on"] == "CPUExecutionProvider"
    assert r["export"]["dev"]["checkpoint"] == "prebuilt" and r["export"]["dev"]["reused"] is False
    assert r["export"]["dev"]["worst_cosine"] >= 0.999

    # Issue 27's section: the dev checkpoint exported again in int4 (blocks of 32 and 256) by the exporter, each
    # graph timed against the fp16 graph in its own session on the same ids. The dev model's graph is mostly its
    # float16 embedding table and float32 rotary caches, so int4 is not smaller or faster there: only that the
    # figures exist and are sane is checked, not which graph wins.
    q = r["quantized"]
    assert (q["shape"], q["precision"], q["method"], q["provider"]) == ("dev", "int4", "rtn", "cpu")
    # The GPU presets' graph: float16 activations (float compute, their default), all of it on the run's provider.
    assert q["activations"] == "fp16"
    assert q["gate"] == "lowered" and q["gate_values"] == quantized.LOWERED_GATE
    assert q["cells"] == ["4x16", "2x64", "1x128"]
    base, variants = q["baseline"], q["variants"]
    assert [v["block_size"] for v in variants] == [32, 256]
    assert base["onnx_bytes"] == r["export"]["dev"]["onnx_bytes"]
    for g in [base, *variants]:
        assert g["provider"] == "CPUExecutionProvider" and g["heavy_elsewhere"] == {} and g["errors"] == [], g
        assert set(g["placement"]) == {"CPUExecutionProvider"}
        assert g["onnx_bytes"] > 0 and g["peak_gib_at_long"] >= 0
        assert list(g["cells"]) == q["cells"]
        for cell in g["cells"].values():
            assert cell["tokens_per_s"] > 0 and -1 <= cell["cosine_vs_torch_min"] <= 1
        assert g["cosine_vs_torch_min"] == min(c["cosine_vs_torch_min"] for c in g["cells"].values())
    assert base["cosine_vs_torch_min"] >= 0.999 and base["placement"]["CPUExecutionProvider"]["MatMul"] > 0
    for v in variants:
        assert v["placement"]["CPUExecutionProvider"]["MatMulNBits"] > 0 and "MatMul" not in v["placement"]
        assert v["verified_on"] == "CPUExecutionProvider" and v["reused"] is False and v["export_s"] > 0
        assert 0 < v["bytes_vs_baseline"] < 2 and v["embedding_table"] == "fp16"
        assert (v["activations"], v["compute"], v["accuracy_level"]) == ("fp16", "fp32", 0)
        assert v["placement"]["CPUExecutionProvider"]["GroupQueryAttention"] == 2
        for cell in v["cells"].values():
            assert cell["vs_baseline"] > 0 and -1 <= cell["cosine_vs_baseline_min"] <= 1
        # Against the fp16 graph and fp16 torch alike: int4 drifts (the dev model's inputs sit at cosine 0.4-0.9
        # from each other), but stays the same vector.
        assert 0.95 <= v["cosine_vs_baseline_min"] < 1 and 0.95 <= v["cosine_vs_torch_min"] < 1
        agreement = v["agreement"]
        assert set(agreement) == {"worst_cosine", "overlap_at_10", "spearman"}
        assert 0.98 <= agreement["worst_cosine"] < 1 and 0 < agreement["overlap_at_10"] <= 1
        # The dev model passes the project's own int4 gate at both block sizes (docs/export.md).
        assert v["project_gate"] == {"passes": True, "failed": [], "thresholds": {
            "worst_cosine": 0.98, "overlap_at_10": 0.8, "spearman": 0.9}}  # fmt: skip

    # The service: every short point served every request, over both protocols.
    assert sorted((p["protocol"], p["concurrency"]) for p in r["short"]) == [
        ("grpc", 1), ("grpc", 8), ("http", 1), ("http", 8),
    ]  # fmt: skip
    for p in [*r["short"], r["direct_triton_short"], r["mixed"]["service"], r["long"]["service"], *r["workers"]]:
        assert p["ok"] == p["requests"] > 0 and p["inputs_per_s"] > 0 and p["errors"] == {}, p
    assert 0 < r["short_p50_ms_c1"] < 5000
    assert r["service_vs_ceiling_mixed"] > 0 and r["service_vs_ceiling_long"] > 0
    assert r["mixed"]["ceiling"]["tokens_per_s"] > 0 and r["long"]["ceiling"]["tokens_per_s"] > 0
    assert sorted(p["workers"] for p in r["workers"]) == sorted({1, 2, r["default_workers"]})
    assert all(p["vs_direct_triton"] > 0 for p in r["workers"])
    assert all(0 < p["client_cpu_share"] < 4 for p in [*r["short"], r["direct_triton_short"]])
    assert r["triton"]["library_dirs"] == [] and r["triton_errors"] == ""
    assert set(r["goals_met"]) == {
        "ort_vs_torch", "cosine", "service_vs_ceiling_mixed", "short_p50_ms_c1", "card_limits_at_default_workers",
    }  # fmt: skip

    # A rerun (--reuse-exports) takes the finished export instead of exporting again.
    sizes = measure.PRESETS["cpu-dry"]
    again = measure.Run(
        sizes=sizes, device=measure.Device.for_provider("cpu"), work=tmp_path / "work",
        out_json=tmp_path / "again.json", out_txt=tmp_path / "again.txt", reuse_exports=True,
    )  # fmt: skip
    ckpt, model_dir = measure.export_shape(again, "dev")
    assert (ckpt / measure.DONE).is_file()
    assert again.result["export"]["dev"]["reused"] is True and again.result["export"]["dev"]["checkpoint"] == "prebuilt"
    assert model_dir == tmp_path / "work" / "repo-dev" / measure.MODEL and (model_dir / "config.pbtxt").is_file()

    # A gate that refuses: the refusal and the agreement it names are the variant's result, with no graph to
    # measure (the kit's lowered gate, raised here past what int4 reaches, through the real exporter).
    row, kept = measure.export_quantized(again, "dev", ckpt, 32)  # --reuse-exports takes the int4 export too
    assert row["reused"] is True and row["agreement"] == variants[0]["agreement"] and kept is not None
    assert 0 < row["export_s"] <= variants[0]["export_s"]  # the export's own time, from its report
    again.reuse_exports = False
    monkeypatch.setattr(quantized, "LOWERED_GATE", {"min_cosine": 0.99999})
    row, none = measure.export_quantized(again, "dev", ckpt, 32)
    assert none is None and row["refused"].startswith("verification failed: worst cosine"), row
    assert row["agreement"]["worst_cosine"] < 0.99999 and row["label"] == "int4 rtn b32"
    again.result.update(quantized={**q, "variants": [row]})
    assert "| int4 rtn b32 | - |" in measure.text_report(again.result)


def test_the_int4_preset_shape_of_run_dry_on_cpu(tmp_path: Path) -> None:
    """What `--preset h200-int4` runs (no service part: the shape's export, the in-process section, then the
    quantized section), on CPU with the dev model: the path issue 27's GPU session takes, with no Triton."""
    out = tmp_path / "out"
    # docs/gpu-kit.md's command (its section seconds are the doc's CPU figure), with this test's folders.
    argv = ["--provider", "cpu", "--preset", "cpu-dry", "--set", "service_shape=",
            "--work", str(tmp_path / "work"), "--out-dir", str(out)]  # fmt: skip
    assert measure.main(argv) == 0
    [json_path] = out.glob("gpu-service-*.json")
    r = json.loads(json_path.read_text())
    assert list(r["section_s"]) == SECTIONS[:3] and r["errors"] == [] and r["skipped"] == []
    assert "short" not in r and "triton" not in r and "quantized dev: int4" in json_path.with_suffix(".txt").read_text()
    assert r["goals_met"]["cosine"] is True and r["goals_met"]["service_vs_ceiling_mixed"] is None
    variants = r["quantized"]["variants"]
    assert [v["block_size"] for v in variants] == [32, 256]
    for v in variants:
        assert v["project_gate"]["passes"] and v["cosine_vs_baseline_min"] >= 0.95
        assert all(c["vs_baseline"] > 0 for c in v["cells"].values())
