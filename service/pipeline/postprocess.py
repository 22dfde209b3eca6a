"""Matryoshka truncation and L2 normalisation (in that order, as the model was trained)."""

from __future__ import annotations

import numpy as np

from service.errors import invalid


def check_dimensions(dimensions: int, min_dim: int, full_dim: int, zero_means_full: bool = True) -> int:
    """The one rule for a requested dimension: 0 means full (where the API has it), anything else must lie in
    [min_dim, full_dim]. Returns the dimension to cut to."""
    if dimensions == 0 and zero_means_full:
        return full_dim
    if not min_dim <= dimensions <= full_dim:
        zero = f" (or 0 for {full_dim})" if zero_means_full else ""
        raise invalid(f"dimensions must be between {min_dim} and {full_dim}{zero}, got {dimensions}", "dimensions")
    return dimensions


def finalize(vectors: np.ndarray, dimensions: int, normalize: bool) -> np.ndarray:
    """[n, hidden] float32 -> [n, dimensions]: slice first, then L2-normalise each row."""
    out = np.asarray(vectors[:, :dimensions], dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(out.astype(np.float64), axis=1, keepdims=True)
        out = (out / np.maximum(norms, 1e-12)).astype(np.float32)
    return out
