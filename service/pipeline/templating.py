"""Which prefix a request's texts get: the query template of the contract (service/contract.py,
instruction_prefix) with an instruction or a named prompt, or nothing (documents)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.contract import instruction_prefix
from service.errors import invalid


def resolve_prefix(instruction: str, prompt_name: str, prompts: Mapping[str, str]) -> str:
    """The text put before every input. Errors name the valid choices."""
    if instruction and prompt_name:
        raise invalid("set either instruction or prompt_name, not both", "prompt_name")
    if instruction:
        if not instruction.strip():
            raise invalid("instruction is blank", "instruction")
        return instruction_prefix(instruction)
    if prompt_name:
        if prompt_name not in prompts:
            # Quoted to 64 characters at most: the error never echoes a megabyte the client sent.
            shown = prompt_name if len(prompt_name) <= 64 else prompt_name[:64] + "…"
            raise invalid(
                f"unknown prompt_name {shown!r}; this model has: {', '.join(sorted(prompts)) or 'none'}",
                "prompt_name",
            )
        return prompts[prompt_name]
    return ""


def apply_prefix(prefix: str, texts: Sequence[str]) -> list[str]:
    return [prefix + t for t in texts]
