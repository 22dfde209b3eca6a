"""What the peers' end-to-end tests share: a gRPC stub on the session's facade (the answer each peer route is
compared with), the default models' names, and a guarded facade (an API key, one request at a time, small body
limits) for the gate and admission checks each peer's routes must pass as /v1/embeddings does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.triton.runtime import TritonProcess
from tests.helpers import Facade, run_facade


@pytest.fixture(scope="module")
def stub(facade: Facade) -> Iterator[Any]:
    with grpc.insecure_channel(facade.target) as channel:
        yield facade.stub(channel)


@pytest.fixture(scope="module")
def default_models(stub: Any) -> dict[int, Any]:
    """The default model of each kind, as GetInfo describes it."""
    return {m.kind: m for m in stub.GetInfo(pb.GetInfoRequest(), timeout=30).models if m.is_default}


@pytest.fixture(scope="module")
def model(default_models: dict[int, Any]) -> str:
    return str(default_models[pb.MODEL_KIND_EMBEDDING].name)


@pytest.fixture(scope="module")
def reranker(default_models: dict[int, Any]) -> str:
    return str(default_models[pb.MODEL_KIND_RERANKER].name)


@pytest.fixture(scope="module")
def guard_key() -> str:
    """The guarded facade's one API key."""
    return "peer-key-0123456789"


@pytest.fixture(scope="module")
def guard_limits() -> dict[str, str]:
    """The guarded facade's limits (a module overrides this fixture for its own): one slot, a 64 KiB body, a
    JSON-values budget of 32 + 4096 + 64 values."""
    return {
        "QWEN3_EMBED_MAX_IN_FLIGHT": "1",
        "QWEN3_EMBED_MAX_HTTP_BODY_BYTES": "65536",
        "QWEN3_EMBED_MAX_BATCH_INPUTS": "32",
        "QWEN3_EMBED_MAX_REQUEST_TOKENS": "4096",
    }


@pytest.fixture(scope="module")
def guarded(
    model_repository: Path, triton: TritonProcess, logs_dir: Path, guard_key: str, guard_limits: dict[str, str]
) -> Iterator[Facade]:
    """A second facade on the session's Triton (one per module), with `guard_key` and `guard_limits`."""
    env = {"QWEN3_EMBED_API_KEYS": guard_key, **guard_limits}
    with run_facade(model_repository, triton.grpc_url, logs_dir, env=env) as running:
        yield running
