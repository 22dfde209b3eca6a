"""model.plan from the verified ONNX graph with trtexec (NGC TensorRT / Triton containers ship it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from export.errors import ExportError
from service.contract import ATTENTION_MASK, INPUT_IDS, Precision


def trtexec_command(
    onnx_path: Path, plan_path: Path, precision: Precision, max_batch: int, max_tokens: int, opt_tokens: int = 512
) -> list[str]:
    def shape(batch: int, seq: int) -> str:
        return f"{INPUT_IDS}:{batch}x{seq},{ATTENTION_MASK}:{batch}x{seq}"

    cmd = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        f"--minShapes={shape(1, 1)}",
        f"--optShapes={shape(max(1, max_batch // 2), min(opt_tokens, max_tokens))}",
        f"--maxShapes={shape(max_batch, max_tokens)}",
    ]
    if precision == Precision.FP16:
        cmd.append("--fp16")
    elif precision == Precision.BF16:
        cmd.append("--bf16")
    return cmd


def build_plan(onnx_path: Path, plan_path: Path, precision: Precision, max_batch: int, max_tokens: int) -> Path:
    if shutil.which("trtexec") is None:
        raise ExportError(
            "--backend tensorrt needs `trtexec` (TensorRT) on PATH, which this host lacks. Run the export in "
            "the NGC TensorRT or Triton container on a GPU host, or use --backend onnxruntime "
            "--accelerator tensorrt to let Triton build engines at load time."
        )
    cmd = trtexec_command(onnx_path, plan_path, precision, max_batch, max_tokens)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not plan_path.exists():
        raise ExportError(f"trtexec failed ({done.returncode}): {done.stderr[-2000:] or done.stdout[-2000:]}")
    return plan_path
