"""What the facade knows about the served model, read from the Triton model config's parameters
(written by `qwen3-embed export`), so it works the same with a local or a remote Triton."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    triton_name: str
    served_name: str
    source_model: str
    hidden_size: int
    min_dimensions: int
    max_input_tokens: int
    embedding_rows: int
    precision: str
    backend: str
    prompts: dict[str, str]
    pad_id: int
    eos_id: int
    max_batch_size: int

    @classmethod
    def from_triton_config(cls, config: Any, served_name: str = "") -> ModelInfo:
        """`config` is tritonclient's ModelConfig message."""
        params = {k: v.string_value for k, v in config.parameters.items()}
        missing = {"hidden_size", "max_input_tokens", "embedding_rows"} - params.keys()
        if missing:
            raise ValueError(
                f"Triton model {config.name!r} lacks parameters {sorted(missing)}: "
                "export it with `qwen3-embed export`"
            )
        source = params.get("source_model", config.name)
        return cls(
            triton_name=config.name,
            served_name=served_name or source.rstrip("/").split("/")[-1],
            source_model=source,
            hidden_size=int(params["hidden_size"]),
            min_dimensions=int(params.get("min_dimensions", "32")),
            max_input_tokens=int(params["max_input_tokens"]),
            embedding_rows=int(params["embedding_rows"]),
            precision=params.get("precision", ""),
            backend=params.get("backend", config.backend or config.platform),
            prompts=json.loads(params.get("prompts", "{}")),
            pad_id=int(params.get("pad_token_id", "151643")),
            eos_id=int(params.get("eos_token_id", "151643")),
            max_batch_size=int(config.max_batch_size) or 1,
        )
