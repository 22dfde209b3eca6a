"""What an exported model is (its identity, written by `qwen3-embed export` into config.pbtxt) and whether the
name the facade is told to serve it under says something else.

A served name is free text ("embed-prod" claims nothing), but a Qwen3 model id ("Qwen3-Embedding-8B") states a
kind and a size: serving a 4B export under the 8B name hands out vectors of another space (2,560 dimensions, not
4,096) under a name indexes trust. That contradiction stops start-up with one message (Misconfiguration: exit 2).
Pure functions; the caller reads the facts (Triton's config or the repository's config.pbtxt)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.contract import ModelFacts, ModelKind
from service.errors import Misconfiguration

# hidden_size of each Qwen3-Embedding / Qwen3-Reranker size (their config.json); the reranker shares the
# backbone, so the same width.
HIDDEN_SIZE_OF = {"0.6b": 1024, "4b": 2560, "8b": 4096}
_QWEN3_ID = re.compile(r"qwen3-(embedding|reranker)-(\d+(?:\.\d+)?b)(?![0-9a-z.])", re.IGNORECASE)


@dataclass(frozen=True)
class Claim:
    """What a Qwen3 model id says: its kind and size ("4b")."""

    kind: ModelKind
    size: str


def claim_of(name: str) -> Claim | None:
    """The kind and size a name states (the last Qwen3 model id in it, e.g. in "Qwen/Qwen3-Embedding-4B");
    None for a name that states neither (an alias, a local path without the id)."""
    found = _QWEN3_ID.findall(name)
    if not found:
        return None
    kind, size = found[-1]
    return Claim(ModelKind(kind.lower()), size.lower())


def identity_fields(facts: ModelFacts) -> dict[str, Any]:
    """The identity a client sees (GetInfo, /v1/models): where the weights came from and what they are."""
    fields: dict[str, Any] = {
        "source_model": facts.source_model,
        "source_revision": facts.source_revision,
        "precision": str(facts.precision),
        "kind": facts.kind.value,
    }
    if facts.kind is ModelKind.EMBEDDING:
        fields["dimensions"] = facts.hidden_size
    return fields | quantization_fields(facts)


def quantization_fields(facts: ModelFacts) -> dict[str, Any]:
    """A quantized export's method, block size and measured agreement with fp32 (proto Quantization); {} for
    float exports."""
    if not facts.quantization_method:
        return {}
    return {
        "quantization": {
            "method": facts.quantization_method,
            "block_size": facts.quantization_block_size,
            "compute": facts.quantization_compute,
            "activations": facts.quantization_activations,
            "agreement": dict(facts.quantization_agreement),
        }
    }


def contradiction(served_name: str, facts: ModelFacts) -> str:
    """Why `served_name` cannot name the model `facts` describe; "" when it can (or claims nothing)."""
    claim = claim_of(served_name)
    if claim is None:
        return ""
    held = _describe(facts)
    if claim.kind is not facts.kind:
        return f"it names a {claim.kind.value} model, the repository holds a {facts.kind.value} model ({held})"
    source = claim_of(facts.source_model)
    if source is not None and source.size != claim.size:
        return f"it names the {claim.size.upper()} model, the repository holds {held}"
    expected = HIDDEN_SIZE_OF.get(claim.size)
    if source is None and expected is not None and expected != facts.hidden_size:
        return (
            f"the {claim.size.upper()} model is {expected} wide, the repository's weights are {facts.hidden_size} "
            f"wide ({held})"
        )
    return ""


def check_served_name(served_name: str, facts: ModelFacts, triton_name: str = "") -> None:
    """Raises Misconfiguration (the facade exits 2 with this one message) when the name contradicts the export."""
    why = contradiction(served_name, facts)
    if why:
        model = f" {triton_name!r}" if triton_name else ""
        raise Misconfiguration(
            f"served model name {served_name!r} (QWEN3_EMBED_SERVED_MODEL_NAME) contradicts the model{model} in the "
            f"repository: {why}. Leave the served name empty (clients then see the exported model's own name) or "
            "export the model that name says into a new version"
        )


def _describe(facts: ModelFacts) -> str:
    width = f", {facts.hidden_size} dimensions" if facts.kind is ModelKind.EMBEDDING else ""
    revision = f"@{facts.source_revision[:12]}" if facts.source_revision else ""
    return f"{facts.source_model}{revision}, {facts.kind.value}{width}, {facts.precision}"
