"""The serving wheel is the facade: built from this checkout it holds service/ only, and installed with its base
dependencies alone (no extras) it runs `qwen3-embed serve --triton-url` against a real Triton, without torch,
transformers, the exporter or the developer tools.

Offline: the slim environment is a fresh venv holding the built wheel plus, linked from this environment,
exactly the distributions the wheel's base requirements resolve to (what `pip install .` would download)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import Distribution, distribution
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devtools.launch import launch_facade
from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import ROOT, cosine, vectors

# What the facade must run without; `export` and `devtools` are this checkout's own packages.
ABSENT = ("torch", "transformers", "sentence_transformers", "onnxruntime", "pytriton", "export", "devtools")
SCRIPT_MAIN = (
    "import sys; from importlib.metadata import entry_points; "
    "(script,) = entry_points(group='console_scripts', name='qwen3-embed'); "
    "sys.argv[0] = 'qwen3-embed'; sys.exit(script.load()())"
)  # runs the wheel's declared console script, as the installed `qwen3-embed` would


@dataclass(frozen=True)
class Slim:
    wheel: Path
    python: Path
    workdir: Path  # outside the checkout: `python -m` would import this repository's packages from cwd

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
        return subprocess.run(
            [str(self.python), *args], cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout
        )


def build_wheel(out: Path) -> Path:
    """`pip wheel` of a copy of the checkout (so the build writes nothing here), with every top-level package
    in the copy: the wheel's contents then show what packaging selects, not what was copied."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("service", "export", "devtools"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = out / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*cmd, "-w", str(dist), str(src)], check=True, capture_output=True, timeout=120)
    [wheel] = dist.glob("*.whl")
    return wheel


def base_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        [metadata] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        lines = zf.read(metadata).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]  # no extras


def closure(requirements: list[Requirement]) -> list[Distribution]:
    """The installed distributions these requirements pull in, with the extras they ask for."""
    found: dict[str, Distribution] = {}
    extras: dict[str, set[str]] = {}
    todo = list(requirements)
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        new = set(req.extras) - extras.get(key, set())
        if key in found and not new:
            continue
        dist = found.get(key) or distribution(req.name)
        found[key] = dist
        extras[key] = extras.get(key, set()) | new
        for spec in dist.requires or []:
            sub = Requirement(spec)
            wanted = ("", *extras[key])
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return list(found.values())


def link_distribution(dist: Distribution, site: Path) -> None:
    """Symlinks the distribution's top-level files and directories (its packages, its .dist-info)."""
    assert dist.files is not None, f"{dist.metadata['Name']} has no RECORD"
    origin = Path(str(dist.locate_file("")))
    for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:
        if not (site / top).exists() and (origin / top).exists():
            (site / top).symlink_to(origin / top)


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slim]:
    out = tmp_path_factory.mktemp("slim")
    wheel = build_wheel(out)
    venv = out / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    with zipfile.ZipFile(wheel) as zf:  # a pure wheel: its files go to site-packages as they are
        zf.extractall(site)
    for dist in closure(base_requirements(wheel)):
        link_distribution(dist, site)
    workdir = out / "work"
    workdir.mkdir()
    yield Slim(wheel, python, workdir)


def test_the_wheel_holds_the_service_only(slim: Slim) -> None:
    with zipfile.ZipFile(slim.wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
        names = zf.namelist()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"service"}, tops
    assert "service/gen/embedding/v1/embedding_pb2.py" in names
    moved = ("service/bench/", "service/launch.py", "service/proto_gen.py")  # now devtools/
    assert not [n for n in names if n.startswith(moved)]


def test_base_requirements_are_the_facade_only(slim: Slim) -> None:
    names = {canonicalize_name(r.name) for r in base_requirements(slim.wheel)}
    assert names.isdisjoint({"torch", "transformers", "sentence-transformers", "onnxruntime", "nvidia-pytriton"})
    assert names.isdisjoint({"httpx", "matplotlib", "rich", "psutil"}), "bench or export dependencies"


def test_slim_environment_lacks_torch_and_the_tools(slim: Slim) -> None:
    check = (
        "import importlib.util, sys; "
        f"present = [m for m in {ABSENT!r} if importlib.util.find_spec(m)]; "
        "print(present); sys.exit(1 if present else 0)"
    )
    proc = slim.run("-c", check)
    assert proc.returncode == 0, f"present in the slim install: {proc.stdout}{proc.stderr}"


def test_serve_help_works_and_the_export_commands_are_absent(slim: Slim) -> None:
    top = slim.run("-c", SCRIPT_MAIN, "--help")
    assert top.returncode == 0, top.stderr
    commands = {name for name in re.findall(r"^│ (\S+)\s", top.stdout, flags=re.M) if not name.startswith("-")}
    # No export, dev-model or bench without their code.
    assert commands == {"serve", "triton", "embed", "rerank"}, top.stdout
    serve = slim.run("-c", SCRIPT_MAIN, "serve", "--help")
    assert serve.returncode == 0, serve.stderr
    assert "--triton-url" in serve.stdout


def test_serve_model_says_the_export_tools_are_missing(slim: Slim) -> None:
    proc = slim.run("-m", "service.cli", "serve", "--model", "dev", "--model-repository", str(slim.workdir))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "export tools" in proc.stderr


def test_slim_facade_embeds_through_a_real_triton(
    slim: Slim, model_repository: Path, triton: Any, facade: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the facade imports from the slim venv only
    texts = ["How are you today?", "北京是中国的首都"]
    with grpc.insecure_channel(facade.target) as channel:
        expected = vectors(facade.stub(channel).Embed(pb.EmbedRequest(inputs=texts), timeout=60))
    logs = slim.workdir / "logs"
    logs.mkdir(exist_ok=True)
    with launch_facade(
        model_repository, triton.grpc_url, logs, python=str(slim.python), cwd=slim.workdir, timeout=60
    ) as running:
        with grpc.insecure_channel(running.target) as channel:
            got = vectors(running.stub(channel).Embed(pb.EmbedRequest(inputs=texts), timeout=60))
        assert running.process.poll() is None, running.log()
    assert got.shape == expected.shape
    assert all(cosine(a, b) > 0.99999 for a, b in zip(got, expected, strict=True))
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
