"""One embedding or rerank request, as the APIs hand it to the pipeline."""

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
    INT8 = "INT8"
    UINT8 = "UINT8"


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
    # Tokens an input may have with its template and EOS, below the model's limit (vLLM's
    # truncate_prompt_tokens); 0 = the model's limit. Used with truncate END or START.
    max_tokens: int = 0
    encoding: Encoding = Encoding.FLOAT
    request_id: str = ""
    model: str = ""  # a served embedding model's name; "" = the default one

    @property
    def count(self) -> int:
        return len(self.token_ids) if self.token_ids else len(self.texts)


@dataclass(frozen=True)
class RerankParams:
    """One rerank request: the documents scored against the query with Qwen3-Reranker's template."""

    query: str = ""
    documents: tuple[str, ...] = ()
    instruction: str = ""  # empty: the official default instruction
    top_n: int = 0  # 0 = every document
    return_documents: bool = False
    # NONE refuses a document that does not fit the model's limit with the template; END cuts the end of the
    # document (the official usage); START is refused (the official usage only cuts the end).
    truncate: Truncate = Truncate.NONE
    raw_scores: bool = False  # the logit difference yes - no instead of its sigmoid
    # Cohere v2's max_tokens_per_doc: each document's own tokens (after `<Document>: `) are cut at their end to
    # this many, whatever `truncate` says (0 = no such cap; the model's limit still applies as `truncate` says).
    max_tokens_per_doc: int = 0
    model: str = ""  # empty: the default reranker
    request_id: str = ""

    @property
    def count(self) -> int:
        return len(self.documents)
