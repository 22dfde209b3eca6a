"""Resolves a hub id or local directory to a local checkpoint and checks it is a Qwen3 embedding model or a
Qwen3 reranker (a Qwen3ForCausalLM judging yes/no, shared doc qwen3-reranker.md)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import ExportError
from export.prompts import OFFICIAL_PROMPTS
from service.contract import RERANK_LABELS, ModelKind, SpecialIds

SUPPORTED_MODEL_TYPES = ("qwen3",)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _file_sha256(path: Path) -> str:
    target = path.resolve()
    if path.is_symlink() and _HEX64.fullmatch(target.name):  # a hub-cache blob is named by its sha256
        return target.name
    digest = hashlib.sha256()
    with target.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    source: str  # what the user named (hub id or path)
    directory: Path
    config: dict[str, Any]

    @property
    def kind(self) -> ModelKind:
        """A reranker: a causal LM (Qwen3-Reranker's config.json names Qwen3ForCausalLM) that is not a
        sentence-transformers embedding checkpoint (Qwen3-Embedding ships modules.json; some of its configs name
        Qwen3ForCausalLM too). Everything else is an embedding model."""
        architectures = self.config.get("architectures") or []
        causal = any(str(a).endswith("ForCausalLM") for a in architectures)
        if causal and not (self.directory / "modules.json").exists():
            return ModelKind.RERANKER
        return ModelKind.EMBEDDING

    @property
    def tied_head(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

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
        """Parameters of the exported graph, from the config (no weights loaded): the bare Qwen3Model, plus for
        a reranker the two LM-head rows it keeps."""
        return self.backbone_parameter_count() + (
            len(RERANK_LABELS) * self.hidden_size if self.kind is ModelKind.RERANKER else 0
        )

    def loaded_parameter_count(self) -> int:
        """What the export loads: a reranker's whole causal LM, its untied LM head (vocab x hidden) included."""
        if self.kind is ModelKind.RERANKER and not self.tied_head:
            return self.backbone_parameter_count() + self.embedding_rows * self.hidden_size
        return self.backbone_parameter_count()

    def backbone_parameter_count(self) -> int:
        """Parameters of the bare Qwen3Model."""
        c = self.config
        h, n_layers, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
        heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        head_dim = c.get("head_dim") or h // heads
        attention = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 2 * head_dim
        per_layer = attention + 3 * h * inter + 2 * h
        return int(c["vocab_size"] * h + n_layers * per_layer + h)

    def prompts(self) -> dict[str, str]:
        """Prompts from config_sentence_transformers.json; the official ones when the file has none. None for a
        reranker: its template (prefix, instruction, suffix) is the facade's, the same for every Qwen3-Reranker."""
        if self.kind is ModelKind.RERANKER:
            return {}
        path = self.directory / "config_sentence_transformers.json"
        if path.exists():
            prompts = json.loads(path.read_text()).get("prompts") or {}
            if prompts:
                return {str(k): str(v) for k, v in prompts.items()}
        return dict(OFFICIAL_PROMPTS)

    def rerank_token_ids(self) -> tuple[int, int]:
        """The ids of RERANK_LABELS ("no", "yes") in this checkpoint's tokenizer: the LM-head rows a reranker
        graph keeps. Read from the tokenizer, never assumed (a hard-coded pair gives every input one score)."""
        tok = self._tokenizer()
        ids = [tok.token_to_id(label) for label in RERANK_LABELS]
        missing = [label for label, i in zip(RERANK_LABELS, ids, strict=True) if i is None]
        if missing:
            raise ExportError(f"{self.source}: the tokenizer has no single token for {missing}; not a Qwen3 reranker")
        if any(i >= self.embedding_rows for i in ids):
            raise ExportError(f"{self.source}: token ids {ids} of {RERANK_LABELS} lie beyond the LM head")
        return int(ids[0]), int(ids[1])

    def special_ids(self) -> SpecialIds:
        """Pad and end-of-text ids from the checkpoint's tokenizer files (written into config.pbtxt).
        A reranker's tokenizer appends nothing (its input ends with the official suffix), so its ids come from
        the files: pad = tokenizer_config.json's pad_token (else config.json's pad_token_id, else eos), eos =
        tokenizer_config.json's eos_token (else config.json's eos_token_id)."""
        if self.kind is ModelKind.RERANKER:
            return self._reranker_special_ids()
        try:
            return embedding_special_ids(self.directory)
        except ValueError as exc:
            raise ExportError(f"{self.source}: {exc}") from exc

    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.directory / "tokenizer.json"))

    def _reranker_special_ids(self) -> SpecialIds:
        tok = self._tokenizer()
        path = self.directory / "tokenizer_config.json"
        tok_config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

        def token_id(key: str) -> int | None:
            token = tok_config.get(key)
            if isinstance(token, dict):  # older files store the AddedToken as a dict
                token = token.get("content")
            found = tok.token_to_id(token) if isinstance(token, str) else None
            if found is None:
                value = self.config.get(f"{key}_id")
                found = value[0] if isinstance(value, list) and value else value
            return int(found) if isinstance(found, int) else None

        eos = token_id("eos_token")
        if eos is None:
            raise ExportError(f"{self.source}: neither tokenizer_config.json nor config.json names an eos token")
        pad = token_id("pad_token")
        return SpecialIds(pad_id=eos if pad is None else pad, eos_id=eos)

    def revision(self) -> str:
        """Which weights these are: the hub commit of a downloaded snapshot (.../snapshots/<commit>), else
        "sha256:" + a hash over the weight files' names and contents. A hub-cache file is a link to a blob named
        by its own sha256, so that name stands in for reading gigabytes again."""
        parts = self.directory.parts
        if len(parts) >= 2 and parts[-2] == "snapshots" and _HEX40.fullmatch(parts[-1]):
            return parts[-1]
        digest = hashlib.sha256()
        for path in sorted(self.directory.glob("*")):
            if path.suffix not in WEIGHT_SUFFIXES or not path.is_file():
                continue
            digest.update(path.name.encode() + b"\0" + _file_sha256(path).encode() + b"\n")
        return "sha256:" + digest.hexdigest()

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
            f"this exporter handles Qwen3-Embedding and Qwen3-Reranker checkpoints (model_type {SUPPORTED_MODEL_TYPES})"
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


def embedding_special_ids(directory: Path) -> SpecialIds:
    """An embedding checkpoint's ids, read from its own files rather than assumed: eos is whatever
    tokenizer.json's post-processor appends; pad is tokenizer_config.json's pad_token, else config.json's
    pad_token_id, else eos. Raises ValueError when the tokenizer appends nothing (old Qwen3-Embedding tokenizer
    revisions did: every vector would be pooled from the wrong token)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    bare = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a").ids
    if len(full) <= len(bare) or full[: len(bare)] != bare:
        raise ValueError(
            f"the tokenizer in {directory} appends no end-of-text token; Qwen3-Embedding pools the hidden "
            "state of the appended <|endoftext|> (update tokenizer.json from the official repository)"
        )
    eos = full[-1]
    pad = _pad_from_tokenizer_config(directory, tok)
    if pad is None:
        config = _read_json(directory / "config.json")
        pad = config.get("pad_token_id") if isinstance(config.get("pad_token_id"), int) else None
    return SpecialIds(pad_id=eos if pad is None else pad, eos_id=eos)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}  # type: ignore[no-any-return]


def _pad_from_tokenizer_config(directory: Path, tok: Any) -> int | None:
    token = _read_json(directory / "tokenizer_config.json").get("pad_token")
    if isinstance(token, dict):  # older files store the AddedToken as a dict
        token = token.get("content")
    if not isinstance(token, str):
        return None
    found = tok.token_to_id(token)
    return int(found) if found is not None else None
