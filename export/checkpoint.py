"""Resolves a hub id or local directory to a local checkpoint and checks it is a Qwen3 embedding model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.prompts import OFFICIAL_PROMPTS
from service.contract import SpecialIds

SUPPORTED_MODEL_TYPES = ("qwen3",)


@dataclass(frozen=True)
class Checkpoint:
    source: str  # what the user named (hub id or path)
    directory: Path
    config: dict[str, Any]

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def embedding_rows(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def max_position_embeddings(self) -> int:
        return int(self.config.get("max_position_embeddings", 32768))

    def parameter_count(self) -> int:
        """Parameters of the bare Qwen3Model, from the config (no weights loaded)."""
        c = self.config
        h, n_layers, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
        heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        head_dim = c.get("head_dim") or h // heads
        attention = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 2 * head_dim
        per_layer = attention + 3 * h * inter + 2 * h
        return int(c["vocab_size"] * h + n_layers * per_layer + h)

    def prompts(self) -> dict[str, str]:
        """Prompts from config_sentence_transformers.json; the official ones when the file has none."""
        path = self.directory / "config_sentence_transformers.json"
        if path.exists():
            prompts = json.loads(path.read_text()).get("prompts") or {}
            if prompts:
                return {str(k): str(v) for k, v in prompts.items()}
        return dict(OFFICIAL_PROMPTS)

    def special_ids(self) -> SpecialIds:
        """Pad and end-of-text ids from the checkpoint's tokenizer files (written into config.pbtxt)."""
        try:
            return SpecialIds.from_checkpoint(self.directory)
        except ValueError as exc:
            raise ExportError(f"{self.source}: {exc}") from exc

    def tokenizer_files(self) -> list[Path]:
        names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
        return [self.directory / n for n in names if (self.directory / n).exists()]


def resolve(model: str) -> Checkpoint:
    """Local directory as is; anything else is a hub id, downloaded (with progress) unless offline."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ExportError(f"{path} is not a Hugging Face checkpoint: it has no config.json")
        directory = path.resolve()
    elif model.startswith((".", "/", "~")):
        raise ExportError(f"model directory {model} does not exist")
    else:
        directory = _download(model)
    config = json.loads((directory / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(
            f"unsupported architecture {model_type!r} ({config.get('architectures')}) in {model}: "
            f"this exporter handles Qwen3-Embedding checkpoints (model_type {SUPPORTED_MODEL_TYPES})"
        )
    if not (directory / "tokenizer.json").exists():
        raise ExportError(f"{directory} has no tokenizer.json; the facade needs the fast tokenizer file")
    return Checkpoint(source=model, directory=directory, config=config)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    patterns = ["*.json", "*.safetensors", "*.txt", "1_Pooling/*", "2_Normalize/*", "*.model"]
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=patterns, token=os.environ.get("HF_TOKEN") or None)
        )
    except RepositoryNotFoundError as exc:
        raise ExportError(f"unknown model {repo_id!r}: no such repository on the hub (or no access)") from exc
    except GatedRepoError as exc:
        raise ExportError(f"model {repo_id!r} is gated: set HF_TOKEN to a token with access") from exc
    except LocalEntryNotFoundError as exc:
        raise ExportError(
            f"model {repo_id!r} is not in the local cache and the hub is unreachable or HF_HUB_OFFLINE=1; "
            "pass a local checkpoint directory instead"
        ) from exc
