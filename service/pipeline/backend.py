"""The port the pipeline needs from an inference server; `service/triton/client.py` implements it."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class InferenceBackend(Protocol):
    async def infer(self, ids: np.ndarray, mask: np.ndarray, hidden: int, timeout_s: float) -> np.ndarray:
        """[rows, width] int64 ids and mask -> [rows, hidden] float32 pooled vectors, or a ServiceError."""
        ...
