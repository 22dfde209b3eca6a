"""The code stays ruff- and mypy-clean (the same checks as `make lint`)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = run("mypy", "service", "export", "devtools", "indexing", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr
