"""The people-facing commands: `qwen3-embed embed` and `qwen3-embed triton`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
from typer.testing import CliRunner

from service.cli import app
from service.triton.runtime import SHM_DIR, free_port
from tests.helpers import ROOT, Facade, wait_for


def test_embed_command(facade: Facade) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["embed", "How are you today?", "北京", "--prompt-name", "query", "--target", facade.target]
    )
    assert result.exit_code == 0, result.output
    assert "dim 64, norm 1.0000" in result.output and "tokens" in result.output and " ms" in result.output
    as_json = runner.invoke(app, ["embed", "hello", "--dimensions", "32", "--json", "--target", facade.target])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.output)
    assert body["dimensions"] == 32 and len(body["embeddings"][0]["values"]) == 32
    bad = runner.invoke(app, ["embed", "hello", "--dimensions", "7", "--target", facade.target])
    assert bad.exit_code != 0 and "INVALID_ARGUMENT" in bad.output


def triton_command(model_repository: Path, ports: list[int], log_file: Path) -> list[str]:
    return [
        sys.executable, "-m", "service.cli", "triton", "--model-repository", str(model_repository),
        "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2]),
        "--log-file", str(log_file),
    ]  # fmt: skip


def test_triton_command_runs_and_stops_cleanly(model_repository: Path, tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    cmd = triton_command(model_repository, ports, tmp_path / "triton.log")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/v2/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for(lambda: proc.poll() is not None or ready(), 90, "Triton ready")
        assert proc.poll() is None
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("tritonserver" in c.name() for c in children)
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()  # printed once the command itself saw readiness
        proc.send_signal(signal.SIGTERM)
        out = first + proc.communicate(timeout=30)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Triton ready" in out and "Triton stopped" in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]  # no orphans


def test_triton_command_sigkilled_leaves_no_tritonserver(model_repository: Path, tmp_path: Path) -> None:
    """SIGKILL runs no clean-up: the kernel's parent-death signal must stop Triton, even mid-start."""
    cmd = triton_command(model_repository, [free_port() for _ in range(3)], tmp_path / "triton.log")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def server() -> psutil.Process | None:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        return next((c for c in children if c.name() == "tritonserver"), None)

    try:
        wait_for(lambda: server() is not None, 60, "tritonserver to start")
        tritonserver = server()
        assert tritonserver is not None
        # Its stubs carry its shared-memory prefix on their command line: all of this Triton's processes.
        prefix = next(a.split("=")[-1] for a in tritonserver.cmdline() if "shm-region-prefix-name" in a)
        proc.kill()
        proc.wait()

        def left() -> list[psutil.Process]:
            return [
                p
                for p in psutil.process_iter(["cmdline", "status"])
                if p.info["status"] != psutil.STATUS_ZOMBIE and prefix in " ".join(p.info["cmdline"] or [])
            ]

        wait_for(lambda: not left(), 30, "no process of the killed command's Triton")
        assert not list(SHM_DIR.glob(f"{prefix}*")), "its shared memory"
    finally:
        if proc.poll() is None:
            proc.kill()
