"""One embedding request, as both APIs hand it to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Truncate(Enum):
    NONE = "NONE"
    END = "END"
    START = "START"


class Encoding(Enum):
    FLOAT = "FLOAT"
    FLOAT16 = "FLOAT16"
    BINARY = "BINARY"
    UBINARY = "UBINARY"


@dataclass(frozen=True)
class EmbedParams:
    # Either texts or pre-tokenized ids (OpenAI token-array input; no template is applied to ids).
    texts: tuple[str, ...] = ()
    token_ids: tuple[tuple[int, ...], ...] = ()
    instruction: str = ""
    prompt_name: str = ""
    dimensions: int = 0
    normalize: bool = True
    truncate: Truncate = Truncate.NONE
    encoding: Encoding = Encoding.FLOAT
    request_id: str = ""

    @property
    def count(self) -> int:
        return len(self.token_ids) if self.token_ids else len(self.texts)
