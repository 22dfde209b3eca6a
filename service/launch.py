"""The facade as a child process on loopback: one command line for tests, benchmarks and the soak script."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class FacadePorts:
    """Where a loopback facade listens."""

    grpc_port: int
    http_port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def facade_command(repository: Path, triton_url: str, grpc_port: int, http_port: int, *extra: str) -> list[str]:
    """`qwen3-embed serve` against a running Triton, with this interpreter (so the same environment)."""
    return [
        sys.executable, "-m", "service.cli", "serve",
        "--model-repository", str(repository), "--triton-url", triton_url,
        "--grpc-port", str(grpc_port), "--http-port", str(http_port),
        *extra,
    ]  # fmt: skip


def loopback_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment, listening on 127.0.0.1 only; `extra` QWEN3_EMBED_* settings win."""
    return {**os.environ, "QWEN3_EMBED_HOST": "127.0.0.1", **(extra or {})}
