"""The container images (docker/*.Dockerfile), checked without a Docker engine: what they COPY exists and
survives the .dockerignore, their entrypoints are real `qwen3-embed` commands, they run as non-root, and
the facade image stays free of torch and of the export and developer code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
# Dockerfile -> the `qwen3-embed` subcommand its ENTRYPOINT runs.
IMAGES = {"facade.Dockerfile": "serve", "export.Dockerfile": "export"}
HEAVY = {"torch", "onnxruntime", "onnxruntime-gpu", "nvidia-pytriton", "tensorrt"}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with line continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "dangling line continuation"
    return lines


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages of a Dockerfile."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], rest)
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", base, flags=re.IGNORECASE)
            assert match, f"{path.name}: cannot read FROM {rest}"
            stages.append(Stage(base=match.group(1), name=match.group(2)))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: {keyword} before FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def copy_sources(stage: Stage) -> list[str]:
    """Build-context paths COPY'd into a stage (COPY --from=<stage> copies between stages: skipped)."""
    sources: list[str] = []
    for rest in stage.args("COPY") + stage.args("ADD"):
        words = json.loads(rest) if rest.startswith("[") else rest.split()
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"COPY needs sources and a destination: {rest}"
        sources.extend(paths[:-1])
    return sources


def exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(dockerfile: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile, else the context's .dockerignore."""
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), ROOT / ".dockerignore"):
        if candidate.is_file():
            rules: list[tuple[bool, re.Pattern[str]]] = []
            for line in candidate.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                negated = line.startswith("!")
                rules.append((negated, glob_regex(line.lstrip("!").strip("/"))))
            return rules
    return []


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker semantics: the last rule matching the path or one of its parent directories decides."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negated, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            result = not negated
    return result


@cache
def cli_help(subcommand: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", subcommand, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ------------------------------------------------------------------------------------------------- tests


def test_both_images_exist() -> None:
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(IMAGES)


def test_parser_understands_multi_stage_builds() -> None:
    """The helpers above read what the tests below rely on."""
    _, stages = parse(DOCKER / "facade.Dockerfile")
    assert len(stages) >= 2
    assert stages[0].name == "build"
    assert stages[-1].args("ENTRYPOINT")
    rules = [(False, glob_regex("*")), (True, glob_regex("service")), (False, glob_regex("**/__pycache__"))]
    assert not ignored("service/cli.py", rules)
    assert ignored("service/__pycache__/cli.cpython-311.pyc", rules)
    assert ignored(".venv/bin/python", rules)


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_copied_paths_exist_and_reach_the_build(dockerfile: str) -> None:
    path = DOCKER / dockerfile
    _, stages = parse(path)
    sources = [s for stage in stages for s in copy_sources(stage)]
    assert sources, "nothing copied from the build context"
    rules = dockerignore_rules(path)
    for source in sources:
        assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which is not in the repository"
        assert not ignored(source, rules), f"{dockerfile} copies {source}, which the .dockerignore excludes"
        if (ROOT / source).is_dir():
            for py in (ROOT / source).rglob("*.py"):
                relative = py.relative_to(ROOT).as_posix()
                if "__pycache__" not in relative:
                    assert not ignored(relative, rules), f"{relative} would be missing from the image"
    # The package's own metadata and code are in; the local virtualenv is not sent to the daemon.
    needed = {"pyproject.toml", "service"} | ({"export"} if dockerfile == "export.Dockerfile" else set())
    assert needed <= {s.rstrip("/").removeprefix("./") for s in sources}
    assert ignored(".venv/lib/python3.11/site-packages/torch/__init__.py", rules)


def test_facade_image_has_no_export_or_developer_code() -> None:
    """The serving wheel holds service/ only: the facade build copies nothing else, and its .dockerignore
    keeps export/ and devtools/ out of the build context."""
    path = DOCKER / "facade.Dockerfile"
    _, stages = parse(path)
    sources = {s.rstrip("/").removeprefix("./") for stage in stages for s in copy_sources(stage)}
    assert sources == {"pyproject.toml", "README.md", "service"}, sources
    rules = dockerignore_rules(path)
    for package in ("export", "devtools"):
        files = [p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")]
        assert files, f"{package}/ has no Python files to check"
        assert all(ignored(f, rules) for f in files), f"{package}/ reaches the facade build context"


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_copied_paths_are_not_gitignored(dockerfile: str) -> None:
    """A clean clone (CI) must have every COPY source."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    _, stages = parse(DOCKER / dockerfile)
    for source in (s for stage in stages for s in copy_sources(stage)):
        check = subprocess.run(["git", "check-ignore", "-q", source], cwd=ROOT, capture_output=True)
        assert check.returncode == 1, f"{source} is ignored by git (rc {check.returncode})"


def test_generated_grpc_stubs_ship_with_the_package() -> None:
    """The facade image installs service/ as is; it has no grpcio-tools to generate stubs at build time."""
    stubs = ROOT / "service" / "gen" / "embedding" / "v1"
    assert (stubs / "embedding_pb2.py").is_file()
    assert (stubs / "embedding_pb2_grpc.py").is_file()


@pytest.mark.parametrize(("dockerfile", "subcommand"), sorted(IMAGES.items()))
def test_entrypoint_is_a_real_cli_command(dockerfile: str, subcommand: str) -> None:
    _, stages = parse(DOCKER / dockerfile)
    [entrypoint] = stages[-1].args("ENTRYPOINT")
    argv = exec_form(entrypoint)  # exec form: signals reach the process (graceful drain on SIGTERM)
    assert argv == ["qwen3-embed", subcommand]
    scripts = pyproject()["project"]["scripts"]  # type: ignore[index]
    assert scripts["qwen3-embed"] == "service.cli:main"
    proc = cli_help(subcommand)
    assert proc.returncode == 0, f"`qwen3-embed {subcommand} --help` failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Usage" in proc.stdout


def test_serve_has_the_flags_the_deployment_documents() -> None:
    proc = cli_help("serve")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--triton-url", "--model-repository", "--grpc-port", "--http-port"):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", proc.stdout), flag


@pytest.mark.parametrize("dockerfile", sorted(IMAGES))
def test_runs_as_non_root_from_a_pinned_slim_python(dockerfile: str) -> None:
    _, stages = parse(DOCKER / dockerfile)
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", stage.base), stage.base
    final = stages[-1]
    users = final.args("USER")
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: use a numeric non-root uid"
    assert any("--from=build" in rest for rest in final.args("COPY"))


def test_facade_image_installs_the_base_package_only() -> None:
    _, stages = parse(DOCKER / "facade.Dockerfile")
    pip_installs = [
        m.group(0) for stage in stages for run in stage.args("RUN") for m in re.finditer(r"pip install[^&;]*", run)
    ]
    assert any(re.fullmatch(r"pip install \.\s*", cmd) for cmd in pip_installs), pip_installs
    assert not any("[" in cmd or "torch" in cmd for cmd in pip_installs), "no extras, no torch in the facade"
    # ... and the base dependencies bring none of the heavy runtimes.
    base = {requirement_name(d) for d in pyproject()["project"]["dependencies"]}  # type: ignore[index]
    assert base & HEAVY == set()


def test_export_image_installs_torch_and_the_export_extra() -> None:
    _, stages = parse(DOCKER / "export.Dockerfile")
    build = stages[0]
    installs = " ".join(build.args("RUN"))
    assert '".[export]"' in installs or "'.[export]'" in installs
    assert "$TORCH_SPEC" in installs
    torch_spec = next(rest for rest in build.args("ARG") if rest.startswith("TORCH_SPEC="))
    assert requirement_name(torch_spec.partition("=")[2].strip('"')) == "torch"
    extras = pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    assert "torch" in {requirement_name(d) for d in extras["export"]}


def test_facade_ports_match_the_chart() -> None:
    _, stages = parse(DOCKER / "facade.Dockerfile")
    exposed = {int(p.split("/")[0]) for rest in stages[-1].args("EXPOSE") for p in rest.split()}
    values = yaml.safe_load((ROOT / "helm" / "qwen3-embedding" / "values.yaml").read_text())
    assert exposed == {values["facade"]["grpcPort"], values["facade"]["httpPort"]}
