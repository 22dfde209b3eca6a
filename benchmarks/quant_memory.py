"""Where a quantized graph's process memory goes: one embedding table (Gather) and one linear layer of the 4B
shape (2,560 x 19,456, the merged gate/up projection), written by the export's own quantizer, each variant loaded
in a FRESH process on ONNX Runtime's CPU provider, RSS read after the session is created and after a run.

    .venv/bin/python -m benchmarks.quant_memory [--vocab 151665] [--k 2560] [--n 19456]

Variants: the float32 graph with external data (as the export writes every graph now) and inline (one protobuf:
how it wrote float graphs under 2 GB before); the int4 graph (round to nearest,
blocks of 32, int8 compute) written inline (one protobuf: how the export wrote quantized graphs under 2 GB before),
inline with `session.disable_prepacking`, inline with glibc's malloc_trim after loading (a diagnosis: memory the
allocator holds but no longer uses), with external data (ONNX Runtime maps the file instead of copying its
tensors out of a parsed protobuf), external with model.py's process-wide arena, and with the float16 embedding
table inline and external (what the export writes now). Prints one table (MiB above the bare interpreter's RSS)
and writes benchmarks/results/quant-memory-<time>.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "quant-memory"
MIB = 2**20

GRAPHS = ("fp32", "fp32-inline", "int4-inline", "int4", "int4-fp16-inline", "int4-fp16")
# name -> (graph, session config entries, trim after load, model.py's env arena)
VARIANTS: dict[str, tuple[str, dict[str, str], bool, bool]] = {
    "fp32 (external data)": ("fp32", {}, False, False),
    "fp32 inline": ("fp32-inline", {}, False, False),
    "int4 inline": ("int4-inline", {}, False, False),
    "int4 inline no prepacking": ("int4-inline", {"session.disable_prepacking": "1"}, False, False),
    "int4 inline + malloc_trim": ("int4-inline", {}, True, False),
    "int4 external data": ("int4", {}, False, False),
    "int4 external + model.py arena": ("int4", {}, False, True),
    "int4 fp16 table inline": ("int4-fp16-inline", {}, False, False),
    "int4 fp16 table external": ("int4-fp16", {}, False, False),
}


def build(work: Path, vocab: int, k: int, n: int) -> dict[str, Path]:
    """fp32 graph (table Gather -> MatMul, external data), the export's quantizer on a copy of it, and that graph
    written inline (one protobuf, as the export wrote graphs under 2 GB before) and with a float16 table."""
    import shutil

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.onnx_graph import save_with_external_data
    from export.quantize import QuantSettings, half_embedding_table, quantize_graph
    from service.contract import Precision

    rng = np.random.default_rng(0)
    table = (rng.standard_normal((vocab, k), dtype=np.float32) * 0.02).astype(np.float32)
    weight = (rng.standard_normal((k, n), dtype=np.float32) * 0.02).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["embed_tokens.weight", "input_ids"], ["x"], name="embed", axis=0),
            helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        ],
        "layer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, n])],
        [numpy_helper.from_array(table, "embed_tokens.weight"), numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    paths = {name: work / name / "model.onnx" for name in GRAPHS}
    for p in paths.values():
        if p.parent.exists():
            shutil.rmtree(p.parent)
        p.parent.mkdir(parents=True)
    onnx.save_model(model, str(paths["fp32-inline"]))  # as the export wrote float graphs under 2 GB before
    save_with_external_data(model, paths["fp32"])  # (this one points the model's tensors at the data file)
    del model, graph, table, weight
    for f in paths["fp32"].parent.glob("model.onnx*"):
        shutil.copy(f, paths["int4"].parent / f.name)
    # The export's quantizer without its float16 table, then each layout from that one graph.
    quantize_graph(paths["int4"], QuantSettings(Precision.INT4, "rtn", compute="int8", embedding="fp32"))
    quantized = onnx.load(str(paths["int4"]))
    onnx.save_model(quantized, str(paths["int4-inline"]))
    half_embedding_table(quantized)
    onnx.save_model(quantized, str(paths["int4-fp16-inline"]))
    save_with_external_data(quantized, paths["int4-fp16"])
    return paths


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def measure(graph: Path, entries: dict[str, str], trim: bool, env_arena: bool, threads: int) -> dict[str, float]:
    """In this fresh process: RSS (MiB above the start) after load (and malloc_trim), after a 20-token run."""
    import numpy as np
    import onnxruntime as ort

    base = _rss()
    options = ort.SessionOptions()
    if env_arena:  # as export/templates/model.py: a process-wide CPU arena growing by what is asked
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        options.add_session_config_entry("session.use_env_allocators", "1")
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_mem_pattern = False
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    sess = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    out = {"loaded": (_rss() - base) / MIB}
    libc = ctypes.CDLL("libc.so.6")
    if trim:
        libc.malloc_trim(0)
        out["trimmed"] = (_rss() - base) / MIB
    ids = np.random.default_rng(0).integers(0, 100000, size=(1, 20)).astype(np.int64)
    sess.run(None, {"input_ids": ids})
    out["run"] = (_rss() - base) / MIB
    if trim:
        libc.malloc_trim(0)
        out["run_trimmed"] = (_rss() - base) / MIB
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151665)
    parser.add_argument("--k", type=int, default=2560)
    parser.add_argument("--n", type=int, default=19456)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=WORK)
    # internal: GRAPH ENTRIES_JSON TRIM ENV_ARENA
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        graph, entries, trim, env_arena = args.measure
        print(json.dumps(measure(Path(graph), json.loads(entries), trim == "1", env_arena == "1", args.threads)))
        return
    work = args.work / f"{args.vocab}-{args.k}x{args.n}"
    paths = {name: work / name / "model.onnx" for name in GRAPHS}
    if not all(p.exists() for p in paths.values()):
        paths = build(work, args.vocab, args.k, args.n)
    rows = {}
    for name in args.variants.split(","):
        graph, entries, trim, env_arena = VARIANTS[name]
        cmd = [sys.executable, "-m", "benchmarks.quant_memory", "--threads", str(args.threads),
               "--measure", str(paths[graph]), json.dumps(entries), "1" if trim else "0", "1" if env_arena else "0"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        rows[name]["disk_mib"] = sum(f.stat().st_size for f in paths[graph].parent.glob("model.onnx*")) / MIB
    print(f"\none Gather [{args.vocab}, {args.k}] + one linear layer {args.k} x {args.n}, {args.threads} threads; "
          "RSS MiB above the bare interpreter\n")
    print("| variant | disk MiB | loaded | loaded + trim | after a run | run + trim |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['disk_mib']:.0f} | {r['loaded']:.0f} | {r.get('trimmed', float('nan')):.0f} | "
              f"{r['run']:.0f} | {r.get('run_trimmed', float('nan')):.0f} |")
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"quant-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"vocab": args.vocab, "k": args.k, "n": args.n, "rows": rows}, indent=1))
    print(f"\n{path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
