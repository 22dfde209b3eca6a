"""Reading the local model repository (what a local Triton will load), before Triton starts: the model names
and each one's config.pbtxt. Anything unusable is a Misconfiguration: no retry fixes it."""

from __future__ import annotations

from typing import Any

from service.errors import Misconfiguration
from service.settings import Settings


def local_model_names(settings: Settings) -> list[str]:
    """The models a local Triton will serve: `settings.models`, else every directory of the repository with a
    config.pbtxt (what Triton loads; the export's hidden staging directories excluded)."""
    if settings.models:
        return list(settings.models)
    repo = settings.model_repository
    found = (
        sorted(d.name for d in repo.iterdir() if not d.name.startswith(".") and (d / "config.pbtxt").is_file())
        if repo.is_dir()
        else []
    )
    if settings.model_name not in found:
        # The default model is what clients without a `model` field get: its absence is a deployment mistake
        # (a wrong name or a missing export). A reranker-only service names its reranker here, so a failed
        # embedding export beside a reranker never turns silently into a service without embeddings.
        others = (
            f" (the repository holds {', '.join(found)}; set QWEN3_EMBED_MODEL_NAME, to the reranker's name for a "
            "reranker-only service)"
            if found
            else ""
        )
        raise Misconfiguration(
            f"no model {settings.model_name!r} in {repo}{others}: export a model first (qwen3-embed export)"
        )
    return found


def read_model_configs(settings: Settings, names: list[str]) -> dict[str, Any]:
    """The config.pbtxt of each model of `names` as Triton's ModelConfig message, read before Triton starts."""
    return {name: read_model_config(settings, name) for name in names}


def read_model_config(settings: Settings, name: str = "") -> Any:
    """One model's config.pbtxt (default: model_name) as Triton's ModelConfig message."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    name = name or settings.model_name
    path = settings.model_repository / name / "config.pbtxt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Misconfiguration(
            f"cannot read {path} ({exc.strerror or exc}): export a model first (qwen3-embed export)"
        ) from None
    except ValueError as exc:  # not UTF-8
        raise Misconfiguration(f"{path} is not a Triton model config: {exc}") from None
    try:
        # Unknown fields are Triton's business (a newer schema than tritonclient's), not an error here.
        config = text_format.Parse(text, model_config_pb2.ModelConfig(), allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise Misconfiguration(f"{path} is not a valid Triton model config: {exc}") from None
    if not config.name:
        config.name = name  # Triton names a model after its directory
    return config
