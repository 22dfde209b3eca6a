"""The model and limits a client needs, one definition for gRPC GetInfo and HTTP /info."""

from __future__ import annotations

from typing import Any

from service import __version__
from service.state import ServiceState


def info_fields(state: ServiceState) -> dict[str, Any]:
    embedder = state.require_embedder()
    info = embedder.info
    return {
        "model": info.served_name,
        "source_model": info.source_model,
        "dimensions": info.hidden_size,
        "min_dimensions": info.min_dimensions,
        "max_input_tokens": info.max_input_tokens,
        "max_batch_inputs": state.settings.max_batch_inputs,
        "prompt_names": sorted(info.prompts),
        "precision": info.precision,
        "backend": info.backend,
        "service_version": __version__,
        "length_buckets": embedder.buckets,
    }
