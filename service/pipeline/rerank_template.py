"""Qwen3-Reranker's official input format (model card and the QwenLM/Qwen3-Embedding repository).

A reranker is a yes/no judge: the chat prompt below asks whether a document meets a query's requirements, and the
score is the probability of "yes" against "no" at the last position. Each sequence is
`prefix_ids + body_ids + suffix_ids`, with the body tokenized alone (no special tokens) and, when too long, cut at
its end to `max_length - len(prefix_ids) - len(suffix_ids)`.
"""

from __future__ import annotations

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# The official usage's max_length; an export may serve more (its max_input_tokens).
OFFICIAL_MAX_LENGTH = 8192


def rerank_body(instruction: str, query: str, document: str) -> str:
    """The user turn between prefix and suffix (an empty instruction means the default one)."""
    return f"<Instruct>: {instruction or DEFAULT_RERANK_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"
