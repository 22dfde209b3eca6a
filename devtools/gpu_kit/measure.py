"""Issue 22's figures in one run: this project's exporter on random-weight real shapes, ONNX Runtime against torch
SDPA in process (same inputs), then the whole service (tritonserver's Python backend + the facade with its
workers) against direct Triton and the in-process ceiling. All figures go to one JSON file and a text table.

On the lent GPU machine (after `devtools.gpu_kit.install`):

    python3 -m devtools.gpu_kit.measure --provider cuda --preset h200 --out-dir $OUT
    python3 -m devtools.gpu_kit.measure --provider cuda --preset h200-int4 --out-dir $OUT   # issue 27 alone

The suite runs the same code on CPU with the dev model and tiny sizes (tests/service/test_gpu_kit_measure.py):
`Device` is the one place where the provider makes a difference. Sizes are all in `Sizes`; `--set key=value`
changes one. Sections the time budget cannot fit are skipped and named in `skipped` (never silently).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from devtools.gpu_kit import quantized

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

ROOT = Path(__file__).resolve().parent.parent.parent
MODEL = "qwen3_embedding"
# Goals of issue 22 (ratios in one run); the JSON says which were met, the figures stay as measured.
GOALS = {"ort_vs_torch": 0.9, "cosine": 0.999, "service_vs_ceiling_mixed": 0.8, "short_p50_ms_c1": 10.0}
# The facade is "not the limit" once it serves this share of what direct Triton serves at the same concurrency.
CARD_LIMIT_SHARE = 0.9


@dataclass(frozen=True)
class Sizes:
    """Every size the run uses. The default is the H200 run; PRESETS["cpu-dry"] the suite's."""

    shapes: tuple[str, ...] = ("4B", "0.6B")  # export.dev_model.REAL_SHAPES names, or "dev" (the dev model)
    service_shape: str = "4B"  # the shape the service part serves (must be in `shapes`; "" = no service part)
    precision: str = "fp16"
    max_input_tokens: int = 32768  # the export's --max-tokens
    verify_long_tokens: int = 1024  # the exporter's own long sample; the long cosines are measured here
    cosine_lengths: tuple[int, ...] = (1024, 8192, 32768)
    batch_cell: tuple[int, int] = (32, 1024)  # batch x tokens
    long_cell: tuple[int, int] = (1, 32768)
    warmup: int = 2
    repeat: int = 3
    short_concurrencies: tuple[int, ...] = (1, 8, 32, 128)
    point_s: float = 3.0  # seconds per load point
    # Besides the default count (auto: 8 on 16 cores), measured in the main section.
    worker_counts: tuple[int, ...] = (1, 4, 16)
    mixed_texts: int = 512
    mixed_max_tokens: int = 512
    mixed_batch: int = 8
    mixed_concurrency: int = 16
    long_texts: int = 24
    long_tokens: tuple[int, int] = (1024, 4096)
    long_concurrency: int = 2
    # Issue 27 on this provider: the quantized section, after the in-process section of `quant_shape` ("" = off;
    # must be in `shapes`: its `precision` export is the baseline). One export per block size (32: the
    # exporter's default; 256: the CPU speed setting of docs/benchmarks.md), each graph timed against the
    # baseline's on `quant_cells` (BATCHxTOKENS; the last, the longest, also gives the peak memory).
    quant_shape: str = "0.6B"
    quant_precision: str = "int4"
    quant_method: str = "rtn"
    # The graph the GPU presets serve (--quant-activations fp16: float16 attention and MatMulNBits, which ONNX
    # Runtime's CUDA provider runs); "fp32" measures the CPU graph, whose attention falls back to the CPU there.
    quant_activations: str = "fp16"
    quant_block_sizes: tuple[int, ...] = (32, 256)
    quant_cells: tuple[str, ...] = ("32x32", "8x1024", "1x4096")
    # "project": the exporter's own gate (a refusal is the variant's result, nothing more is measured);
    # "lowered": quantized.LOWERED_GATE, for random weights the project's gate refuses at real shapes; the result
    # records it, the agreement measured and what the project's gate would have said.
    quant_gate: str = "lowered"
    budget_s: float = 500.0  # the whole run; optional sections are skipped past it


PRESETS: dict[str, Sizes] = {
    "h200": Sizes(),
    "cpu-dry": Sizes(
        shapes=("dev",),
        service_shape="dev",
        max_input_tokens=256,
        verify_long_tokens=64,
        cosine_lengths=(32, 128, 256),
        batch_cell=(4, 64),
        long_cell=(1, 256),
        warmup=1,
        repeat=1,
        short_concurrencies=(1, 8),
        point_s=1.0,
        worker_counts=(1, 2),  # the default (1 on 2 cores with Triton beside) comes from the main section
        mixed_texts=32,
        mixed_max_tokens=128,
        mixed_batch=4,
        mixed_concurrency=4,
        long_texts=4,
        long_tokens=(48, 64),
        long_concurrency=2,
        quant_shape="dev",
        quant_cells=("4x16", "2x64", "1x128"),
        budget_s=600.0,
    ),
}
# Issue 27 alone: the 0.6B shape's export and in-process section, then its quantized section; no 4B, no service
# (the whole 500 s go to int4 vs fp16, which the h200 preset reaches only if the 4B parts leave time).
PRESETS["h200-int4"] = replace(PRESETS["h200"], shapes=("0.6B",), service_shape="", quant_shape="0.6B")


def parse_override(sizes: Sizes, text: str) -> Sizes:
    """`key=value` for one field of Sizes: ints, floats, strings, comma lists, `AxB` pairs."""
    key, _, value = text.partition("=")
    types = {f.name: f.type for f in fields(Sizes)}
    if key not in types:
        raise ValueError(f"unknown size {key!r}; one of {', '.join(types)}")
    kind = str(types[key])
    parsed: Any
    if kind.startswith("tuple[int, int]"):
        parsed = tuple(int(v) for v in value.lower().split("x"))
    elif kind.startswith("tuple[int"):
        parsed = tuple(int(v) for v in value.split(",") if v)
    elif kind.startswith("tuple[str"):
        parsed = tuple(v for v in value.split(",") if v)
    elif kind == "int":
        parsed = int(value)
    elif kind == "float":
        parsed = float(value)
    else:
        parsed = value
    return replace(sizes, **{key: parsed})


def cell_label(batch: int, tokens: int) -> str:
    """32 x 1024 -> "32x1k", 1 x 32768 -> "1x32k", 4 x 64 -> "4x64" (the keys other tools read)."""
    return f"{batch}x{tokens // 1024}k" if tokens % 1024 == 0 else f"{batch}x{tokens}"


# -- the provider: the only place CPU and GPU runs differ -------------------------------------------------


class MemorySampler:
    """Peak of `used()` over a block, sampled every 2 ms in a thread, less the reading before it."""

    def __init__(self, used: Callable[[], int]) -> None:
        self.used = used
        self.peak = 0
        self.base = 0
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.used())

    @contextmanager
    def around(self) -> Iterator[MemorySampler]:
        self.base = self.peak = self.used()
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak = max(self.peak, self.used())

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 2**30


@dataclass
class Device:
    provider: str  # "cuda" | "cpu"
    name: str
    torch_device: str
    ort_providers: list[Any]
    instance_kind: str  # Triton's: GPU runs model.py on ONNX Runtime's CUDA provider

    @classmethod
    def for_provider(cls, provider: str) -> Device:
        import torch

        if provider == "cuda":
            if not torch.cuda.is_available():
                raise SystemExit("--provider cuda: torch sees no GPU")
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise SystemExit(f"--provider cuda: ONNX Runtime has no CUDA provider ({ort.__file__})")
            cuda = {"device_id": 0, "arena_extend_strategy": "kSameAsRequested"}
            return cls("cuda", torch.cuda.get_device_name(0), "cuda", [("CUDAExecutionProvider", cuda)], "GPU")
        if provider == "cpu":
            return cls("cpu", f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
                       "cpu", ["CPUExecutionProvider"], "CPU")  # fmt: skip
        raise SystemExit(f"--provider must be cuda or cpu, not {provider!r}")

    @property
    def ort_provider(self) -> str:
        """The ONNX Runtime provider a session must run on first (its name, without the provider's options)."""
        first = self.ort_providers[0]
        return first if isinstance(first, str) else str(first[0])

    def sync(self) -> None:
        import torch

        if self.provider == "cuda":
            torch.cuda.synchronize()

    def used_bytes(self) -> int:
        """Memory in use on the device: the whole GPU's (ONNX Runtime's arena and other processes included), or
        on CPU the machine's."""
        if self.provider == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info()
            return int(total - free)
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total - vm.available)

    def library_dirs(self) -> list[str]:
        """The pip-installed CUDA libraries' folders (nvidia/*/lib: cu13, cudnn, ...). The Triton stub's ONNX
        Runtime needs them on LD_LIBRARY_PATH: its CUDA provider has no RPATH, and the stub, unlike this process,
        never imports torch (which loads them), so without them ORT would fall back to its CPU provider."""
        if self.provider != "cuda":
            return []
        import importlib.util

        spec = importlib.util.find_spec("nvidia")
        roots = list(spec.submodule_search_locations or []) if spec else []
        return sorted({str(p) for r in roots for p in Path(r).glob("*/lib") if p.is_dir()})

    def check_loaded(self, what: str, grown_bytes: int, model_bytes: int) -> None:
        """On the GPU, a model that loaded without its weights in GPU memory ran on the CPU: stop, rather than
        measure the CPU under a GPU label."""
        if self.provider == "cuda" and grown_bytes < model_bytes // 2:
            raise RuntimeError(
                f"{what}: GPU memory grew {grown_bytes / 2**30:.2f} GiB for a {model_bytes / 2**30:.2f} GiB model: "
                "ONNX Runtime fell back to its CPU provider (see the Triton log)"
            )

    def release(self) -> None:
        gc.collect()
        if self.provider == "cuda":
            import torch

            torch.cuda.empty_cache()


# -- results and the time budget ---------------------------------------------------------------------------


@dataclass
class Run:
    sizes: Sizes
    device: Device
    work: Path
    out_json: Path
    out_txt: Path
    # A rerun on the same machine: take the exports an earlier run of this work folder finished.
    reuse_exports: bool = False
    started: float = field(default_factory=time.monotonic)
    result: dict[str, Any] = field(default_factory=dict)

    def left_s(self) -> float:
        return self.sizes.budget_s - (time.monotonic() - self.started)

    def fits(self, section: str, need_s: float) -> bool:
        if self.left_s() >= need_s:
            return True
        self.result.setdefault("skipped", []).append(f"{section}: {self.left_s():.0f} s left, needs ~{need_s:.0f}")
        print(f"skipped {section}: time budget", flush=True)
        return False

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            yield
        finally:
            self.result.setdefault("section_s", {})[name] = round(time.monotonic() - t0, 1)
            self.save()  # what was measured so far survives a run cut short by the device's time limit

    def save(self) -> None:
        self.out_json.parent.mkdir(parents=True, exist_ok=True)
        self.out_json.write_text(json.dumps(self.result, indent=1, default=str) + "\n")
        try:
            text = text_report(self.result)
        except Exception as exc:  # the JSON is what counts; a table that cannot be drawn must not lose it
            text = f"no table: {type(exc).__name__}: {exc}\n"
        self.out_txt.write_text(text)


# -- 1. export with this project's exporter -------------------------------------------------------------------


def shape_of(name: str) -> Any:
    from export.dev_model import REAL_SHAPES, DevModelShape

    return DevModelShape() if name == "dev" else REAL_SHAPES[name]


DONE = ".complete"


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def checkpoint(work: Path, name: str, dtype: str) -> tuple[Path, str]:
    """The random-weight checkpoint of a shape (the dev model's builder), built once per work folder: a build
    that `--prebuild` started in an earlier device run (a process of its own session, it outlives that run) is
    waited for and reused. Returns (folder, how: built | prebuilt | waited for)."""
    from export.dev_model import build_dev_model

    ckpt = work / f"ckpt-{name}-{dtype}"
    lock = work / f"ckpt-{name}-{dtype}.building"
    how = "prebuilt"
    while not (ckpt / DONE).exists() and lock.exists() and _alive(lock):
        how = "waited for"
        time.sleep(1)
    if (ckpt / DONE).exists():
        return ckpt, how
    work.mkdir(parents=True, exist_ok=True)
    lock.write_text(str(os.getpid()))
    try:
        build_dev_model(ckpt, shape_of(name), dtype=dtype)
        (ckpt / DONE).touch()
    finally:
        lock.unlink(missing_ok=True)
    return ckpt, "built"


def shape_order(sizes: Sizes) -> list[str]:
    """The service shape first (its figures are issue 22's goals), then the others as listed."""
    first = [sizes.service_shape] if sizes.service_shape else []
    return [*first, *(n for n in sizes.shapes if n != sizes.service_shape)]


def dtype_name(precision: str) -> str:
    return {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[precision]


def prebuild(sizes: Sizes, work: Path) -> None:
    """Every shape's checkpoint, the service shape first: CPU work (torch, transformers, tokenizers; nothing from
    the kit), so a device run can start it before the kit is installed."""
    for name in shape_order(sizes):
        t0 = time.monotonic()
        ckpt, how = checkpoint(work, name, dtype_name(sizes.precision))
        print(f"{name}: {ckpt} {how} in {time.monotonic() - t0:.1f} s", flush=True)


def graph_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in (model_dir / "1").glob("model.onnx*"))


def export_shape(run: Run, name: str) -> tuple[Path, Path]:
    """Random weights of the shape (the dev model's builder, in the run's precision) -> the fused graph in a
    Triton repository, verified by the exporter. Returns (checkpoint, model dir)."""
    from rich.console import Console

    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings

    s = run.sizes
    t0 = time.monotonic()
    ckpt, how = checkpoint(run.work, name, dtype_name(s.precision))
    built = time.monotonic() - t0
    repo = RepoSettings(
        name=MODEL, backend="python", precision=s.precision,  # type: ignore[arg-type]
        max_input_tokens=s.max_input_tokens, instance_kind=run.device.instance_kind,
    )  # fmt: skip
    opts = ExportOptions(
        model=str(ckpt), output=run.work / f"repo-{name}", repo=repo, device=run.device.torch_device,
        verify_long_tokens=s.verify_long_tokens, auto_warmup=True,
    )  # fmt: skip
    t0 = time.monotonic()
    model_dir = opts.output / MODEL
    # The exporter publishes the model folder whole (a rename) once verified: a report there is a finished export.
    reused = run.reuse_exports and (model_dir / "export_report.json").exists()
    if not reused:
        model_dir = run_export(opts, Console(stderr=True, width=140))
    report = json.loads((model_dir / "export_report.json").read_text())
    run.result.setdefault("export", {})[name] = {
        "reused": reused,
        "checkpoint": how,
        "checkpoint_s": round(built, 1),
        "export_s": round(time.monotonic() - t0, 1),
        "verified_on": report.get("provider"),
        "worst_cosine": report.get("worst_cosine"),
        "onnx_bytes": graph_bytes(model_dir),
    }
    return ckpt, model_dir


# -- 2. in process: ONNX Runtime (the exported graph) against torch SDPA, same inputs ---------------------------


def random_ids(vocab: int, batch: int, tokens: int, seed: int) -> np.ndarray:
    from export.qwen_tokenizer_offline import ENDOFTEXT_ID as EOS

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(vocab, EOS), size=(batch, tokens), dtype=np.int64)
    ids[:, -1] = EOS  # pooled at EOS, as every real input is
    return ids


class Engines:
    """torch (transformers' Qwen3Model, SDPA) and ONNX Runtime (the exported model.onnx) on one device."""

    def __init__(self, device: Device, ckpt: Path, model_dir: Path, precision: str) -> None:
        import torch

        from benchmarks.systems import ort_session
        from export.graph import load_backbone

        self.device = device
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
        self.torch_model = load_backbone(str(ckpt), dtype, attention="sdpa").to(device.torch_device)
        self.session = ort_session(model_dir / "1" / "model.onnx", providers=device.ort_providers)
        expected = device.ort_provider
        if self.session.get_providers()[0] != expected:  # never a CPU figure under a GPU label
            raise RuntimeError(f"ONNX Runtime runs on {self.session.get_providers()}, not {expected}")

    def torch_run(self, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(ids).to(self.device.torch_device)
            hidden = self.torch_model(input_ids=t, use_cache=False).last_hidden_state
            out = hidden[:, -1].float().cpu().numpy()
        self.device.sync()
        return out

    def ort_run(self, ids: np.ndarray) -> np.ndarray:
        mask = np.ones_like(ids)
        return np.asarray(self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0])

    def close_torch(self) -> None:
        del self.torch_model
        self.device.release()


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return [float(x) for x in num / den]


def between_inputs(vectors: np.ndarray) -> float:
    """The highest cosine between the reference vectors of two different inputs. Random weights at real scale
    (std 0.02) can map every input to nearly one vector: if this is close to 1, a cosine of 0.999 between ORT
    and torch proves little, and the report says so."""
    v = vectors.astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -1.0)
    return float(sims.max())


def timed(fn: Callable[[np.ndarray], np.ndarray], ids: np.ndarray, warmup: int, repeat: int) -> tuple[float, Any]:
    """Median seconds of `repeat` runs after `warmup`, and the last output (outputs are checked finite)."""
    out = None
    times = []
    for i in range(warmup + repeat):
        t0 = time.perf_counter()
        out = fn(ids)
        dt = time.perf_counter() - t0
        if not np.isfinite(out).all():
            raise RuntimeError(f"non-finite output at {ids.shape}")
        if i >= warmup:
            times.append(dt)
    return statistics.median(times), out


def in_process(run: Run, name: str, engines: Engines) -> dict[str, Any]:
    s, dev = run.sizes, run.device
    vocab = shape_of(name).vocab_size
    row: dict[str, Any] = {"cosine": {}, "cells": {}, "peak_gib_at_long": {}}
    # Peak memory first, on each engine's first run of the long cell: ONNX Runtime's arena keeps what a run
    # grew it to, so a later reading would show nothing new.
    long_ids = random_ids(vocab, *s.long_cell, seed=7)
    sampler = MemorySampler(dev.used_bytes)
    with sampler.around():
        engines.ort_run(long_ids)
    row["peak_gib_at_long"]["ort"] = round(sampler.gib, 3)
    dev.release()
    with sampler.around():
        engines.torch_run(long_ids)
    row["peak_gib_at_long"]["torch"] = round(sampler.gib, 3)
    all_cos: list[float] = []
    row["errors"] = []
    for n in s.cosine_lengths:
        try:
            ids = random_ids(vocab, 1, n, seed=n)
            c = cosines(engines.ort_run(ids), engines.torch_run(ids))[0]
        except Exception as exc:  # e.g. out of memory: recorded, the other lengths still measured
            row["errors"].append(f"cosine at {n}: {type(exc).__name__}: {exc}")
            continue
        row["cosine"][cell_label(1, n)] = c
        all_cos.append(c)
    for batch, tokens in (s.batch_cell, s.long_cell):
        try:
            ids = random_ids(vocab, batch, tokens, seed=batch * tokens)
            t_torch, ref = timed(engines.torch_run, ids, s.warmup, s.repeat)
            t_ort, got = timed(engines.ort_run, ids, s.warmup, s.repeat)
        except Exception as exc:
            row["errors"].append(f"{cell_label(batch, tokens)}: {type(exc).__name__}: {exc}")
            continue
        cell_cos = cosines(got, ref)
        all_cos += cell_cos
        if batch > 1:
            row["cosine_between_inputs_max"] = between_inputs(ref)
            # The same comparison with the inputs' common direction taken out (torch's mean vector of the batch):
            # what is left is what tells the inputs apart, and ORT must agree on that too.
            center = ref.astype(np.float64).mean(axis=0)
            row["cosine_min_centered"] = min(cosines(got - center, ref - center))
        row["cells"][cell_label(batch, tokens)] = {
            "torch_tokens_per_s": batch * tokens / t_torch,
            "ort_tokens_per_s": batch * tokens / t_ort,
            "ort_vs_torch": t_torch / t_ort,
            "torch_ms": t_torch * 1000,
            "ort_ms": t_ort * 1000,
            "cosine_min": min(cell_cos),
        }
    row["cosine_min"] = min(all_cos) if all_cos else None
    return row


# -- 2b. quantized: the shape exported again in int4, against its baseline graph on the same provider -------


def quant_need_s(name: str) -> float:
    """Seconds one quantized variant needs, for the budget (an estimate): the dev model's from the CPU dry run
    (~12 s an export, a few seconds of cells); a real shape's from the 0.6B int4 export on this project's CPU
    (89-98 s on 2 cores, docs/benchmarks.md; the exporter quantizes on the host either way) plus its cells."""
    return 30.0 if name == "dev" else 150.0


def variant_label(s: Sizes, block: int) -> str:
    return f"{s.quant_precision} {s.quant_method} b{block}"


def check_quant_sizes(s: Sizes) -> None:
    """Every quantized setting checked before any device time is spent (the exporter's own checks)."""
    if not s.quant_shape:
        return
    if s.quant_shape not in s.shapes:
        raise SystemExit(f"quant_shape {s.quant_shape!r} is not among shapes {s.shapes}")
    from export.errors import ExportError
    from export.exporter import resolved_compute
    from export.quantize import QuantSettings, validate
    from service.contract import Precision

    try:
        compute = resolved_compute("", s.quant_activations)
        for block in s.quant_block_sizes or ():
            validate(
                QuantSettings(
                    Precision(s.quant_precision), s.quant_method, block, compute, activations=s.quant_activations
                )
            )
        quantized.gate_options(s.quant_gate)
        cells = [quantized.parse_cell(c) for c in s.quant_cells]
    except (ExportError, ValueError) as exc:
        raise SystemExit(f"quantized section: {exc}") from exc
    if not s.quant_block_sizes or not cells or max(n for _, n in cells) > s.max_input_tokens:
        raise SystemExit("quantized section: needs block sizes and cells of at most max_input_tokens tokens")


def export_quantized(run: Run, name: str, ckpt: Path, block: int) -> tuple[dict[str, Any], Path | None]:
    """The shape's checkpoint exported again through the project's exporter (run_export, as export_shape), in
    quant_precision with blocks of `block`, under the run's gate. Returns (figures, model dir), or (the refusal
    and the agreement it names, None) when the gate refuses."""
    from rich.console import Console

    from export.errors import ExportError
    from export.exporter import ExportOptions, run_export
    from export.triton_config import RepoSettings

    s = run.sizes
    gate = quantized.gate_options(s.quant_gate)  # 0 = the precision's own bound
    row: dict[str, Any] = {"label": variant_label(s, block), "block_size": block}
    repo = RepoSettings(
        name=MODEL, backend="python", precision=s.quant_precision,  # type: ignore[arg-type]
        max_input_tokens=s.max_input_tokens, instance_kind=run.device.instance_kind,
    )  # fmt: skip
    opts = ExportOptions(
        model=str(ckpt), repo=repo,
        output=run.work / f"repo-{name}-{s.quant_precision}-{s.quant_method}-b{block}-{s.quant_activations}",
        device=run.device.torch_device, verify_long_tokens=s.verify_long_tokens, auto_warmup=True,
        quant_method=s.quant_method, quant_block_size=block, quant_activations=s.quant_activations,
        min_cosine=gate.get("min_cosine", 0.0),
        min_overlap=gate.get("min_overlap", 0.0), min_spearman=gate.get("min_spearman", 0.0),
    )  # fmt: skip
    model_dir = opts.output / MODEL
    t0 = time.monotonic()
    reused = run.reuse_exports and (model_dir / "export_report.json").exists()
    if not reused:
        try:
            model_dir = run_export(opts, Console(stderr=True, width=140))
        except ExportError as exc:
            refused = quantized.refusal(str(exc))
            if refused is None:
                raise
            print(f"  {row['label']}: {refused['refused']}", flush=True)
            return {**row, **refused, "export_s": round(time.monotonic() - t0, 1)}, None
    report = json.loads((model_dir / "export_report.json").read_text())
    quant = report["quantization"]
    agreement = quant["quantization_agreement"]
    row |= {
        "reused": reused,
        # A reused export's own time (what the earlier run spent), not the few ms of finding it.
        "export_s": report.get("export_seconds") if reused else round(time.monotonic() - t0, 1),
        "verified_on": report.get("provider"),
        "agreement": agreement,
        "project_gate": quantized.project_gate(s.quant_precision, agreement),
        "accuracy_level": quant.get("accuracy_level"),
        "embedding_table": quant.get("embedding"),
        "activations": quant.get("activations"),
        "compute": quant.get("compute"),
    }
    return row, model_dir


def graph_figures(
    run: Run, label: str, model_dir: Path, inputs: dict[str, np.ndarray], torch_ref: dict[str, np.ndarray],
    baseline: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """One graph in a fresh session on the run's provider: its size, memory after load, the peak over it on the
    longest cell (its first run, profiled: where each node ran), tokens/s per cell (median of `repeat` after
    `warmup`, outputs checked finite), the cosines against torch and the baseline graph for the same ids.
    Returns (figures, each cell's vectors)."""
    from benchmarks.systems import ort_session

    s, dev = run.sizes, run.device
    expected = dev.ort_provider
    size = graph_bytes(model_dir)
    row: dict[str, Any] = {"onnx_bytes": size, "cells": {}, "errors": []}
    profiles = run.work / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    before = dev.used_bytes()
    session = ort_session(model_dir / "1" / "model.onnx", providers=dev.ort_providers,
                          profile_prefix=str(profiles / label.replace(" ", "-")))  # fmt: skip
    grown = dev.used_bytes() - before
    row["memory_gib_after_load"] = round(grown / 2**30, 3)
    row["provider"] = session.get_providers()[0]
    if row["provider"] != expected:  # never a CPU figure under a GPU label
        raise RuntimeError(f"{label}: ONNX Runtime runs on {session.get_providers()}, not {expected}")
    dev.check_loaded(f"{label} graph", grown, size)

    def embed(ids: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(["embedding"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0])

    # The peak on the session's first run of the longest cell (ONNX Runtime's arena keeps what a run grew it to).
    longest = max(inputs, key=lambda k: inputs[k].size)
    sampler = MemorySampler(dev.used_bytes)
    with sampler.around():
        first = embed(inputs[longest])
    row["peak_gib_at_long"] = round(sampler.gib, 3)
    where = quantized.placement(Path(session.end_profiling()))
    row["placement"] = where
    row["heavy_elsewhere"] = quantized.heavy_elsewhere(where, expected)
    if not np.isfinite(first).all():
        row["errors"].append(f"{label}: non-finite output at {inputs[longest].shape}")
    vectors: dict[str, np.ndarray] = {}
    for cell, ids in inputs.items():
        try:
            seconds, out = timed(embed, ids, s.warmup, s.repeat)
        except Exception as exc:  # e.g. out of memory: recorded, the other cells still measured
            row["errors"].append(f"{label} {cell}: {type(exc).__name__}: {exc}")
            continue
        vectors[cell] = out
        figures = {"tokens_per_s": ids.size / seconds, "ms": seconds * 1000,
                   "cosine_vs_torch_min": min(cosines(out, torch_ref[cell]))}  # fmt: skip
        if baseline is not None and cell in baseline:
            figures["cosine_vs_baseline_min"] = min(cosines(out, baseline[cell]))
        row["cells"][cell] = figures
    for key in ("cosine_vs_torch_min", "cosine_vs_baseline_min"):
        found = [c[key] for c in row["cells"].values() if key in c]
        row[key] = min(found) if found else None
    return row, vectors  # the session goes with this frame; the caller releases the device's caches


def vs_baseline(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """A variant's ratios to the baseline graph: bytes on disk, each cell's tokens/s, the peak at the long cell."""
    for cell, figures in row["cells"].items():
        if cell in base["cells"]:
            figures["vs_baseline"] = figures["tokens_per_s"] / base["cells"][cell]["tokens_per_s"]
    peak = base.get("peak_gib_at_long")
    return {"bytes_vs_baseline": row["onnx_bytes"] / base["onnx_bytes"],
            "peak_vs_baseline": row["peak_gib_at_long"] / peak if peak else None}  # fmt: skip


def quantized_shape(run: Run, name: str, ckpt: Path, model_dir: Path, engines: Engines) -> dict[str, Any]:
    """Issue 27's figures on the run's provider: the baseline graph (this shape's `precision` export) and one
    quant_precision export per block size, each in its own fresh session, on the same random ids; torch (the
    shape's in-process model, still loaded) gives the reference vectors. A variant the gate refuses, or one that
    fails, is recorded as such and the next one is still measured."""
    s = run.sizes
    vocab = shape_of(name).vocab_size
    inputs = {}
    for text in s.quant_cells:
        batch, tokens = quantized.parse_cell(text)
        inputs[cell_label(batch, tokens)] = random_ids(vocab, batch, tokens, seed=100_000 + batch * tokens)
    torch_ref = {cell: engines.torch_run(ids) for cell, ids in inputs.items()}
    q: dict[str, Any] = {
        "shape": name, "precision": s.quant_precision, "method": s.quant_method, "provider": run.device.provider,
        "activations": s.quant_activations,
        "gate": s.quant_gate, "gate_values": quantized.gate_options(s.quant_gate), "cells": list(inputs),
        "variants": [],
    }  # fmt: skip
    run.result["quantized"] = q
    base, base_vectors = graph_figures(run, s.precision, model_dir, inputs, torch_ref)
    run.device.release()
    export = run.result["export"][name]
    if export["reused"]:  # the earlier run's time, as for the quantized exports
        export_s = json.loads((model_dir / "export_report.json").read_text()).get("export_seconds")
    else:
        export_s = export["export_s"]
    q["baseline"] = {"label": s.precision, "precision": s.precision, "export_s": export_s, **base}
    run.save()
    for block in s.quant_block_sizes:
        if not run.fits(f"quantized {name} block {block}", quant_need_s(name)):
            continue
        try:
            row, quant_dir = export_quantized(run, name, ckpt, block)
            if quant_dir is not None:
                figures, _ = graph_figures(run, row["label"], quant_dir, inputs, torch_ref, base_vectors)
                run.device.release()
                row |= figures
                row |= vs_baseline(row, base)
                speeds = ", ".join(f"{c} {f['vs_baseline']:.2f}x" for c, f in row["cells"].items())
                print(f"  {row['label']}: {speeds} of {s.precision}'s tokens/s, "
                      f"cosine vs {s.precision} {row['cosine_vs_baseline_min']}", flush=True)  # fmt: skip
        except Exception as exc:
            traceback.print_exc()
            row = {"label": variant_label(s, block), "block_size": block, "error": f"{type(exc).__name__}: {exc}"}
        q["variants"].append(row)
        run.save()
    return q


# -- 3. the service -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    ladder: list[int]
    hidden: int
    max_rows: int
    budget: int


def model_shape(model_dir: Path) -> ModelShape:
    from export.triton_config import parse_pbtxt
    from service.contract import ModelInfo
    from service.pipeline.inference import resolve_buckets
    from service.settings import Settings

    info = ModelInfo.from_triton_config(parse_pbtxt((model_dir / "config.pbtxt").read_text()))
    ladder = resolve_buckets([], info.max_input_tokens, info.length_buckets)
    budget = int(Settings.model_fields["token_budget"].default)
    return ModelShape(ladder, info.hidden_size, info.max_batch_size, budget)


@contextmanager
def client_cpu() -> Iterator[dict[str, float]]:
    """CPU seconds this process (the load generator: one Python process, asyncio) spent per wall second over
    the block. Near 1.0 the client, not the service, may be what limits a point."""
    import psutil

    proc, box = psutil.Process(), dict[str, float]()
    t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
    yield box
    box["client_cpu_share"] = round((sum(proc.cpu_times()[:2]) - c0) / max(1e-9, time.monotonic() - t0), 3)


def point(summary: Any, **extra: Any) -> dict[str, Any]:
    d = summary.as_dict()
    return {**extra, **{k: d[k] for k in ("requests", "ok", "inputs_per_s", "tokens_per_s", "p50_ms", "p99_ms")},
            "errors": d["errors"]}  # fmt: skip


def ceiling(engines: Engines, texts: list[str], tokenize: Any, shape: ModelShape, seconds: float) -> dict[str, Any]:
    """The same texts in process, batched as well as the service's limits allow (all of them as one request:
    the facade's bucket ladder, token budget and row limit), repeated for `seconds`."""
    from benchmarks import systems

    plans = systems.plan_requests([texts], tokenize, shape.ladder, shape.budget, shape.max_rows)
    systems.run_ceiling(engines.session, plans)  # first run of these shapes outside the figure
    summary = systems.run_ceiling(engines.session, plans, repeat_until_s=seconds)
    return {"inputs_per_s": summary.inputs_per_s, "tokens_per_s": summary.tokens_per_s,
            "padding_ratio": plans[0].padded_tokens / plans[0].real_tokens}  # fmt: skip


async def service(run: Run, model_dir: Path, engines: Engines) -> None:
    from benchmarks import systems
    from devtools.bench.clients import http_info
    from devtools.bench.runner import LoadSpec
    from devtools.bench.workload import LengthSpec, batches, make_texts
    from service.process.cpus import resolve_workers, triton_shares_cpus
    from service.triton.runtime import start_triton

    s, dev, res = run.sizes, run.device, run.result
    logs = run.work / "logs"
    repo = model_dir.parent
    shape = model_shape(model_dir)
    tokenize = systems.Tokenize(model_dir)
    extra_libs = dev.library_dirs()
    if extra_libs:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([*extra_libs, os.environ.get("LD_LIBRARY_PATH", "")])
    before = dev.used_bytes()
    t0 = time.monotonic()
    triton = start_triton(repo, logs / "triton.log", timeout=600)
    grown = dev.used_bytes() - before
    res["triton"] = {"start_s": round(time.monotonic() - t0, 1), "memory_gib_after_load": round(grown / 2**30, 3),
                     "library_dirs": extra_libs}  # fmt: skip
    try:
        dev.check_loaded("Triton's model", grown, sum(p.stat().st_size for p in (model_dir / "1").glob("model.onnx*")))
        short = batches(make_texts(LengthSpec(8, 32), 512, seed=0), 1)
        top = max(s.short_concurrencies)
        plans = systems.plan_requests(short, tokenize, shape.ladder, shape.budget, shape.max_rows)
        with run.section("direct Triton, short"):
            with client_cpu() as cpu:
                direct = await systems.run_direct_triton(
                    triton.grpc_url, MODEL, shape.hidden, plans, LoadSpec(concurrency=top, duration_s=s.point_s)
                )
            res["direct_triton_short"] = point(direct, concurrency=top, **cpu)
        default_workers = resolve_workers(0, triton_local=triton_shares_cpus(triton.grpc_url))
        res["default_workers"] = default_workers
        first = min(s.short_concurrencies)
        with (
            run.section("facade (default workers): short, mixed, long"),
            systems.facade(repo, triton.grpc_url, logs, {"QWEN3_EMBED_WORKERS": "0"}) as fac,
        ):
            model = (await http_info(fac.base_url))["model"]
            points = []
            for c in s.short_concurrencies:
                spec = LoadSpec(concurrency=c, duration_s=s.point_s)
                conns = max(4, 2 * default_workers)
                with client_cpu() as g_cpu:
                    g = await systems.run_grpc(fac.target, shape.hidden, short, spec, warmup=8, connections=conns)
                with client_cpu() as h_cpu:
                    h, _ = await systems.run_http(fac.base_url, model, shape.hidden, short, spec, warmup=8)
                points += [point(g, protocol="grpc", concurrency=c, **g_cpu),
                           point(h, protocol="http", concurrency=c, **h_cpu)]  # fmt: skip
                print(f"  short c={c}: gRPC {g.inputs_per_s:.0f} q/s p50 {g.p50_ms:.2f} ms, "
                      f"HTTP {h.inputs_per_s:.0f} q/s p50 {h.p50_ms:.2f} ms", flush=True)  # fmt: skip
            res["short"] = points
            res["short_p50_ms_c1"] = next(
                p["p50_ms"] for p in points if p["protocol"] == "grpc" and p["concurrency"] == first
            )
            run.save()
            mixed_texts = make_texts(LengthSpec(8, s.mixed_max_tokens), s.mixed_texts, seed=1)
            m = await systems.run_grpc(
                fac.target, shape.hidden, batches(mixed_texts, s.mixed_batch),
                LoadSpec(concurrency=s.mixed_concurrency, duration_s=s.point_s * 2), warmup=4,
                connections=max(4, 2 * default_workers),
            )  # fmt: skip
            long_texts = make_texts(LengthSpec(*s.long_tokens), s.long_texts, seed=2)
            lg = await systems.run_grpc(
                fac.target, shape.hidden, batches(long_texts, 1),
                LoadSpec(concurrency=s.long_concurrency, duration_s=s.point_s * 2), warmup=2,
            )  # fmt: skip
        with run.section("in-process ceiling, mixed and long"):
            for label, texts, summary in (("mixed", mixed_texts, m), ("long", long_texts, lg)):
                top_rate = ceiling(engines, texts, tokenize, shape, s.point_s * 2)
                ratio = summary.inputs_per_s / top_rate["inputs_per_s"]
                res[label] = {"service": point(summary), "ceiling": top_rate, "service_vs_ceiling": ratio}
                res[f"service_vs_ceiling_{label}"] = ratio
                print(f"  {label}: service {summary.tokens_per_s:,.0f} tokens/s, "
                      f"ceiling {top_rate['tokens_per_s']:,.0f}, ratio {ratio:.2f}", flush=True)  # fmt: skip
        default_point = next(p for p in points if p["protocol"] == "grpc" and p["concurrency"] == top)
        share = default_point["inputs_per_s"] / direct.inputs_per_s if direct.inputs_per_s else 0.0
        sweep = [{**default_point, "workers": default_workers, "vs_direct_triton": share}]
        res["workers"] = sweep
        others = [w for w in s.worker_counts if w != default_workers]
        if run.fits("facade worker sweep", len(others) * (s.point_s + 20)):
            with run.section("facade worker sweep, short"):
                for w in others:
                    with systems.facade(repo, triton.grpc_url, logs, {"QWEN3_EMBED_WORKERS": str(w)}) as fac:
                        spec = LoadSpec(concurrency=top, duration_s=s.point_s)
                        with client_cpu() as cpu:
                            g = await systems.run_grpc(
                                fac.target, shape.hidden, short, spec, warmup=8, connections=max(4, 2 * w)
                            )
                    share = g.inputs_per_s / direct.inputs_per_s if direct.inputs_per_s else 0.0
                    sweep.append(point(g, workers=w, concurrency=top, vs_direct_triton=share, **cpu))
                    print(f"  {w} worker(s): {g.inputs_per_s:.0f} q/s = {share:.2f} x direct Triton", flush=True)
        sweep.sort(key=lambda p: p["workers"])
        limited = [p["workers"] for p in sweep if p["vs_direct_triton"] >= CARD_LIMIT_SHARE]
        res["card_limits_from_workers"] = min(limited) if limited else None
    finally:
        triton.stop()
        res["triton_errors"] = triton.errors()


# -- the whole run ----------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    import numpy
    import onnxruntime
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__}  # fmt: skip


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return out.stdout.strip() or None


def measure(run: Run, commit: str | None, command: str) -> dict[str, Any]:
    s, res = run.sizes, run.result
    if s.service_shape and s.service_shape not in s.shapes:
        raise SystemExit(f"service_shape {s.service_shape!r} is not among shapes {s.shapes}")
    check_quant_sizes(s)
    res.update(
        device=run.device.name, provider=run.device.provider, commit=commit, command=command,
        date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), versions=versions(), sizes=asdict(s),
        goals=GOALS, skipped=[],
    )  # fmt: skip
    # The service shape first: its figures are the goals; the others only if the budget allows.
    order = shape_order(s)
    per_shape: dict[str, Any] = {}
    res["in_process"] = per_shape
    errors: list[str] = res.setdefault("errors", [])
    for name in order:
        if name != s.service_shape and not run.fits(f"shape {name}", 90 if name != "dev" else 10):
            if name == s.quant_shape:
                res["skipped"].append(f"quantized {name}: its shape was skipped")
            continue
        engines: Engines | None = None
        # One failure costs its own figures only: the GPU run is one shot, so the others are still measured.
        try:
            with run.section(f"export {name}"):
                ckpt, model_dir = export_shape(run, name)
            try:
                with run.section(f"in process {name}: ONNX Runtime vs torch"):
                    engines = Engines(run.device, ckpt, model_dir, s.precision)
                    per_shape[name] = in_process(run, name, engines)
                    errors += [f"{name}: {e}" for e in per_shape[name]["errors"]]
                if name == s.quant_shape:  # torch still loaded: the quantized graphs' reference
                    quantized_section(run, name, ckpt, model_dir, engines)
            finally:
                if engines is not None:
                    engines.close_torch()
            if name == s.service_shape:
                head = per_shape[name]
                res["cosine_min"] = head["cosine_min"]
                res["cosine_between_inputs_max"] = head.get("cosine_between_inputs_max")
                res["cosine_min_centered"] = head.get("cosine_min_centered")
                res["ort_vs_torch"] = {k: v["ort_vs_torch"] for k, v in head["cells"].items()}
                res["peak_gib_at_long"] = head["peak_gib_at_long"]
                asyncio.run(service(run, model_dir, engines))
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            del engines
            run.device.release()
    found = [v["cosine_min"] for v in per_shape.values() if v.get("cosine_min") is not None]
    res["cosine_min_all_shapes"] = min(found) if found else None
    res["goals_met"] = goals_met(res)
    res["total_s"] = round(time.monotonic() - run.started, 1)
    run.save()
    return res


def quantized_section(run: Run, name: str, ckpt: Path, model_dir: Path, engines: Engines) -> None:
    """The quantized section within the budget; its failures cost its own figures only (the service still runs)."""
    s, errors = run.sizes, run.result["errors"]
    title = f"quantized {name}: {s.quant_precision} vs {s.precision}"
    if not run.fits(title, quant_need_s(name)):
        return
    with run.section(title):
        try:
            q = quantized_shape(run, name, ckpt, model_dir, engines)
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"{title}: {type(exc).__name__}: {exc}")
            return
    for row in [q["baseline"], *q["variants"]]:
        errors += [f"{title}: {e}" for e in row.get("errors", [])]
        if "error" in row:
            errors.append(f"{title}: {row['label']}: {row['error']}")


def goals_met(res: dict[str, Any]) -> dict[str, bool | None]:
    limited, default = res.get("card_limits_from_workers"), res.get("default_workers")
    ratios = res.get("ort_vs_torch") or {}
    met: dict[str, bool | None] = {
        "ort_vs_torch": all(v >= GOALS["ort_vs_torch"] for v in ratios.values()) if ratios else None,
        "cosine": (res.get("cosine_min_all_shapes") or 0.0) >= GOALS["cosine"],
        "service_vs_ceiling_mixed": res.get("service_vs_ceiling_mixed", 0.0) >= GOALS["service_vs_ceiling_mixed"],
        "short_p50_ms_c1": (res.get("short_p50_ms_c1") or 1e9) <= GOALS["short_p50_ms_c1"],
        "card_limits_at_default_workers": None if default is None or "workers" not in res
        else limited is not None and limited <= default,
    }
    if not res.get("sizes", {}).get("service_shape", True):  # no service part (h200-int4): nothing to judge
        met.update(ort_vs_torch=None, service_vs_ceiling_mixed=None, short_p50_ms_c1=None)
    return met


def _n(value: Any, spec: str) -> str:
    """A figure, or "-" where none was measured (no successful request gives no latency)."""
    return "-" if value is None else format(value, spec)


def text_report(res: dict[str, Any]) -> str:
    """The JSON's figures as markdown tables (for docs/benchmarks.md), nothing computed anew."""
    lines = [f"# GPU kit measure: {res.get('device')} ({res.get('provider')}), {res.get('date')}",
             f"commit {res.get('commit')}; command: {res.get('command')}", ""]  # fmt: skip
    for name, row in res.get("in_process", {}).items():
        lines.append(f"## {name}: ONNX Runtime vs torch SDPA, same inputs ({res['sizes']['precision']})")
        lines.append("| cell | torch tokens/s | ORT tokens/s | ORT / torch | cosine min |\n|---|---|---|---|---|")
        for label, c in row["cells"].items():
            lines.append(f"| {label} | {c['torch_tokens_per_s']:,.0f} | {c['ort_tokens_per_s']:,.0f} | "
                         f"{c['ort_vs_torch']:.2f} | {c['cosine_min']:.6f} |")  # fmt: skip
        lines.append("cosine by length: " + ", ".join(f"{k} {v:.6f}" for k, v in row["cosine"].items()))
        lines.append(f"highest cosine between two different inputs (torch), for scale: "
                     f"{_n(row.get('cosine_between_inputs_max'), '.6f')}; ORT vs torch with the batch's mean "
                     f"vector taken out: {_n(row.get('cosine_min_centered'), '.6f')}")  # fmt: skip
        lines.append(f"peak memory over the loaded model at the long cell (GiB): {row['peak_gib_at_long']}")
        lines.append("")
    if res.get("quantized", {}).get("baseline"):
        lines += [*quantized.table(res["quantized"]), ""]
    if res.get("short"):
        lines.append("## The service, short queries (8-32 tokens, batch 1)")
        lines.append("| protocol | concurrency | queries/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
        for p in res["short"]:
            lines.append(f"| {p['protocol']} | {p['concurrency']} | {p['inputs_per_s']:,.0f} | "
                         f"{_n(p['p50_ms'], '.2f')} | {_n(p['p99_ms'], '.2f')} | "
                         f"{p['errors'] or 'none'} |")  # fmt: skip
        d = res.get("direct_triton_short", {})
        lines.append(f"direct Triton at concurrency {d.get('concurrency')}: {d.get('inputs_per_s', 0):,.0f} q/s")
        lines.append("")
    for label in ("mixed", "long"):
        if label in res:
            r = res[label]
            service, top = r["service"]["tokens_per_s"], r["ceiling"]["tokens_per_s"]
            lines.append(f"{label}: service {service:,.0f} tokens/s, in-process ceiling {top:,.0f} tokens/s, "
                         f"ratio {r['service_vs_ceiling']:.2f}")  # fmt: skip
    if res.get("workers"):
        lines.append("\n| facade workers | queries/s | p50 ms | p99 ms | x direct Triton |\n|---|---|---|---|---|")
        for p in res["workers"]:
            lines.append(f"| {p['workers']} | {p['inputs_per_s']:,.0f} | {_n(p['p50_ms'], '.2f')} | "
                         f"{_n(p['p99_ms'], '.2f')} | {p['vs_direct_triton']:.2f} |")  # fmt: skip
        lines.append(f"card, not facade, limits from {res.get('card_limits_from_workers')} worker(s); "
                     f"default {res.get('default_workers')}")  # fmt: skip
    lines.append(f"\ngoals met: {res.get('goals_met')}; skipped: {res.get('skipped') or 'nothing'}")
    lines.append(f"errors: {res.get('errors') or 'none'}")
    lines.append(f"section seconds: {res.get('section_s')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--provider", choices=("cuda", "cpu"), help="required unless --prebuild")
    parser.add_argument("--prebuild", action="store_true", help="only build the shapes' checkpoints, then exit")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="h200")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one size")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpukit-work"), help="checkpoints, exports, logs")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git rev-parse HEAD)")
    parser.add_argument("--reuse-exports", action="store_true", help="a rerun: keep the exports already in --work")
    args = parser.parse_args(argv)
    sizes = PRESETS[args.preset]
    for text in args.set:
        sizes = parse_override(sizes, text)
    if args.prebuild:
        prebuild(sizes, args.work)
        return 0
    if args.provider is None:
        parser.error("--provider is required")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run = Run(
        sizes=sizes, device=Device.for_provider(args.provider), work=args.work,
        out_json=args.out_dir / f"gpu-service-{stamp}.json", out_txt=args.out_dir / f"gpu-service-{stamp}.txt",
        reuse_exports=args.reuse_exports,
    )  # fmt: skip
    command = "python3 -m devtools.gpu_kit.measure " + " ".join(argv if argv is not None else sys.argv[1:])
    res = measure(run, args.commit or git_commit(), command)
    print(run.out_txt.read_text())
    print(f"wrote {run.out_json}")
    for error in res["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
