"""The one preflight of the model repository, before a local Triton starts: a lone facade and the parent of
N workers run this same function, so a broken export or tokenizer fails start-up at once, with one message,
instead of after Triton's long start (or as a worker that keeps dying)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.contract import ModelInfo
from service.errors import ErrorKind, ServiceError
from service.metrics import Metrics
from service.repository import local_model_names, read_model_configs
from service.settings import Settings
from service.state import ServiceState


def preflight_repository(settings: Settings, state: ServiceState) -> list[str]:
    """Which models the local Triton will load, each one's config.pbtxt, and each model built from it as it
    will be served (facts, tokenizer, buckets against the settings, no two under one name) by
    `state.install`. Raises Misconfiguration. Returns the model names."""
    names = local_model_names(settings)
    state.install(read_model_configs(settings, names))
    return names


def preflight_without_state(settings: Settings, metrics: Metrics) -> list[str]:
    """preflight_repository for a process that serves no requests itself (the parent of N workers): the
    models are built as a worker will build them, against a server that is not started, then dropped."""
    state = ServiceState(settings, NotStarted(), metrics)
    try:
        return preflight_repository(settings, state)
    finally:
        state.close()


class NotStarted:
    """A ModelServer (service/pipeline/backend.py) before its Triton runs: nothing is ready, nothing answers."""

    async def is_ready(self, models: list[str] | None = None) -> bool:
        return False

    async def model_config(self, name: str = "") -> Any:
        raise self._unavailable()

    async def model_states(self) -> dict[str, str]:
        return {}

    def for_model(self, info: ModelInfo) -> NotStarted:
        return self

    async def infer(
        self, ids: np.ndarray, mask: np.ndarray, width: int, timeout_s: float, priority: object = None
    ) -> np.ndarray:
        raise self._unavailable()

    async def close(self) -> None:
        return None

    @staticmethod
    def _unavailable() -> ServiceError:
        return ServiceError(ErrorKind.UNAVAILABLE, "Triton is not started yet")
