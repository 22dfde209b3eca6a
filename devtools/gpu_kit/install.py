"""GPU side, before anything is installed (standard library and pip only):

    python3 -m devtools.gpu_kit.install check --upto K     # a part run: parts 1..K here and intact
    python3 -m devtools.gpu_kit.install early --target .gpukit/early   # run 1: the wheels prebuild needs
    python3 -m devtools.gpu_kit.install install --target .gpukit/site   # all parts -> wheels -> pip --target
    python3 -m devtools.gpu_kit.install preflight --target .gpukit/site # imports and providers, no GPU work

`check` in run K also proves that the machine kept the earlier runs' parts (device README: ignored outputs stay
while the machine is warm). Any mismatch stops with KitError's one line and exit code 2; nothing is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from devtools.gpu_kit.parts import KIT_DIR, KitError, assemble, check_parts, read_manifest

# What measure needs to import, in the order it does (a failure names the first broken one).
PREFLIGHT_IMPORTS = (
    "numpy", "torch", "transformers", "onnx", "onnxruntime", "tokenizers", "grpc", "google.protobuf",
    "tritonclient.grpc", "fastapi", "uvicorn", "httptools", "pydantic", "pydantic_settings", "orjson",
    "grpc_health.v1.health_pb2", "grpc_reflection.v1alpha.reflection", "aiohttp", "httpx", "psutil",
    "service.server", "devtools.bench.clients", "benchmarks.systems", "export.exporter",
    # The quantized section's int4 exports: ONNX Runtime's quantizer imports onnx_ir (the machine's; undeclared
    # by the onnxruntime wheels) and ml_dtypes (the kit's) at import time.
    "export.quantize", "onnxruntime.quantization.matmul_nbits_quantizer",
)  # fmt: skip


def pip_install(wheels: list[Path], target: Path) -> None:
    """No index, no dependencies (prepare checked them), no .pyc compilation (saves the run's seconds)."""
    if target.exists():
        shutil.rmtree(target)
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
        "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), *map(str, wheels),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)


def install(root: Path, target: Path, wheel_dir: Path, early: bool = False) -> list[Path]:
    """All wheels, or (early) only those at the front of the stream that run 1 needs."""
    manifest = read_manifest(root)
    if early and not manifest.early:
        print("no early wheels in this kit", flush=True)
        return []
    wheels = assemble(root, manifest, wheel_dir, first=manifest.early if early else None)
    print(f"{len(wheels)} wheels match the manifest (sha256)", flush=True)
    pip_install(wheels, target)
    shutil.rmtree(wheel_dir)  # the installed copy is what counts; the disk is 64 GiB
    print(f"installed into {target}", flush=True)
    return wheels


def preflight(target: Path, root: Path, cuda: bool) -> int:
    """Each import in a fresh interpreter with the kit first on the path, as measure will run; then ORT's
    providers (with `cuda`, the CUDA one must be there) and the tritonserver binary's libraries. Exit code 1 on
    the first problem."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(root)])}
    code = (
        "import importlib, sys\n"
        f"for name in {PREFLIGHT_IMPORTS!r}:\n"
        "    m = importlib.import_module(name)\n"
        "    print(name, getattr(m, '__version__', ''), flush=True)\n"
        "import onnxruntime as ort\n"
        "print('providers', ort.get_available_providers())\n"
        f"assert {cuda!r} is False or 'CUDAExecutionProvider' in ort.get_available_providers(), 'no CUDA provider'\n"
        "import numpy; assert numpy.__version__.startswith('1.'), numpy.__version__\n"
        "from service.triton.runtime import pytriton_root, prepare_backend_dir\n"
        "print('tritonserver', pytriton_root() / 'bin' / 'tritonserver')\n"
    )
    if subprocess.run([sys.executable, "-c", code], env=env, cwd=root).returncode != 0:
        return 1
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    server = target / "pytriton" / "tritonserver"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    binaries = [server / "bin" / "tritonserver", stub]
    # What service/triton/runtime.py's triton_env gives them: this Python's libpython, pytriton's own libraries.
    libs = [str(sysconfig.get_config_var("LIBDIR")), str(target / "nvidia_pytriton.libs")]
    libs.append(os.environ.get("LD_LIBRARY_PATH", ""))
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(libs)}
    failed = 0
    for binary in binaries:
        if not binary.is_file():
            print(f"missing: {binary}", file=sys.stderr)
            failed = 1
            continue
        ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
        missing = [ln.strip() for ln in ldd.stdout.splitlines() if "not found" in ln]
        print(f"{binary.name} libraries:", "all found" if not missing else "; ".join(missing))
        failed |= bool(missing)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=("check", "early", "install", "preflight"))
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--upto", type=int, default=0, help="check: parts 1..UPTO (0: all)")
    parser.add_argument("--target", type=Path, default=None, help=f"default: ROOT/{KIT_DIR}/site (early: .../early)")
    parser.add_argument("--cuda", action="store_true", help="preflight: ONNX Runtime must have its CUDA provider")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    default = "early" if args.command == "early" else "site"
    target = (args.target or root / KIT_DIR / default).resolve()
    try:
        if args.command == "check":
            manifest = read_manifest(root)
            upto = args.upto or len(manifest.parts)
            check_parts(root, manifest, upto)
            print(f"parts 1..{upto} of {len(manifest.parts)} present and intact", flush=True)
        elif args.command in ("early", "install"):
            install(root, target, root / KIT_DIR / "wheels-assembled", early=args.command == "early")
        else:
            return preflight(target, root, args.cuda)
    except KitError as exc:
        print(f"gpu kit: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
