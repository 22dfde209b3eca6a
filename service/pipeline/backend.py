"""The ports the serving side needs from an inference server; `service/triton/client.py` implements them:
InferenceBackend is what a served model calls, ModelServer what the serving state asks of the server."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from service.contract import ModelInfo
from service.priority import Priority


class InferenceBackend(Protocol):
    async def infer(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        hidden: int,
        timeout_s: float,
        priority: Priority = Priority.INTERACTIVE,
    ) -> np.ndarray:
        """[rows, width] int64 ids and mask -> [rows, hidden] float32 pooled vectors, or a ServiceError.
        `priority`: the class of the rows (the server queues interactive calls before bulk ones)."""
        ...


class ModelServer(Protocol):
    async def is_ready(self, models: list[str] | None = None) -> bool:
        """The server and every model of `models` answer."""
        ...

    async def model_config(self, name: str = "") -> Any:
        """One model's config as the server describes it (Triton's ModelConfig message)."""
        ...

    async def model_states(self) -> dict[str, str]:
        """Every model the server knows and its state ("READY", ...)."""
        ...

    def for_model(self, info: ModelInfo) -> InferenceBackend:
        """The server bound to one model and its output."""
        ...

    async def close(self) -> None: ...
