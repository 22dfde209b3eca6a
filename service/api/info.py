"""The models and limits a client needs, one definition for gRPC GetInfo and HTTP /info."""

from __future__ import annotations

from typing import Any

from service import __version__
from service.contract import ModelKind
from service.model_identity import quantization_fields
from service.models import Models, ServedModel
from service.state import ServiceState


def model_fields(model: ServedModel, models: Models, max_batch_inputs: int) -> dict[str, Any]:
    """One served model (proto ModelDescription; `kind` is "embedding" or "reranker")."""
    info = model.info
    fields: dict[str, Any] = {
        "name": info.served_name,
        "kind": info.kind.value,
        "source_model": info.source_model,
        "source_revision": info.source_revision,
        "is_default": models.is_default(model),
        "max_input_tokens": info.max_input_tokens,
        "max_batch_inputs": max_batch_inputs,
        "precision": info.precision,
        "backend": info.backend,
        "length_buckets": model.buckets,
    }
    fields |= quantization_fields(info)
    if info.kind is ModelKind.EMBEDDING:
        fields |= {
            "dimensions": info.hidden_size,
            "min_dimensions": info.min_dimensions,
            "prompt_names": sorted(info.prompts),
        }
    return fields


def info_fields(state: ServiceState) -> dict[str, Any]:
    """The default embedding model's facts at the top level (the shape from before several models were
    served), and every served model under "models"."""
    models = state.require_models()
    limit = state.settings.max_batch_inputs
    out: dict[str, Any] = {
        "service_version": __version__,
        "max_batch_inputs": limit,
        "models": [model_fields(m, models, limit) for m in models.all()],
    }
    if ModelKind.EMBEDDING in models.defaults:
        embedder = models.embedder()
        info = embedder.info
        out |= {
            "model": info.served_name,
            "source_model": info.source_model,
            "source_revision": info.source_revision,
            "dimensions": info.hidden_size,
            "min_dimensions": info.min_dimensions,
            "max_input_tokens": info.max_input_tokens,
            "prompt_names": sorted(info.prompts),
            "precision": info.precision,
            "backend": info.backend,
            "length_buckets": embedder.buckets,
        }
    return out
