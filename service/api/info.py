"""The models and limits a client needs, one definition for gRPC GetInfo and HTTP /info."""

from __future__ import annotations

from typing import Any

from service import __version__
from service.contract import ModelKind
from service.model_identity import quantization_fields
from service.models import Models
from service.pipeline.inference import ServedModel
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


# The default embedding model's fields repeated at the top level, as served before there were several models
# (clients read them: HTTP /info's model and dimensions, GetInfo's top-level fields); "name" is shown as "model".
DEFAULT_MODEL_FIELDS = {
    "model": "name",
    **{
        key: key
        for key in (
            "source_model",
            "source_revision",
            "dimensions",
            "min_dimensions",
            "max_input_tokens",
            "prompt_names",
            "precision",
            "backend",
            "length_buckets",
        )
    },
}


def info_fields(state: ServiceState) -> dict[str, Any]:
    """Every served model under "models", and the default embedding model's facts at the top level too."""
    models = state.require_models()
    limit = state.settings.max_batch_inputs
    described = [(m, model_fields(m, models, limit)) for m in models.all()]
    out: dict[str, Any] = {
        "service_version": __version__,
        "max_batch_inputs": limit,
        "models": [fields for _, fields in described],
    }
    for model, fields in described:
        if model.info.kind is ModelKind.EMBEDDING and models.is_default(model):
            out |= {top: fields[key] for top, key in DEFAULT_MODEL_FIELDS.items()}
    return out
