"""Inputs the exporter verifies on: several scripts, code, a long input, mixed lengths (texts for embedding
models, formatted (query, document) pairs for rerankers)."""

from __future__ import annotations

from typing import Any

from export.prompts import OFFICIAL_PROMPTS
from service.contract import RERANK_PREFIX, RERANK_SUFFIX, rerank_body

SAMPLES: dict[str, str] = {
    "english query": OFFICIAL_PROMPTS["query"] + "What is the capital of China?",
    "english doc": "The capital of China is Beijing.",
    "chinese": "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "code": "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "emoji": "Embeddings 🚀 for search 🔎 — naïve café",
    "one word": "importance",
}


def long_sample(approx_tokens: int) -> str:
    sentence = "Gravity is a force that attracts two bodies towards each other. "
    # ~13 tokens per sentence; the exporter cuts the ids to exactly the length it wants.
    return sentence * (approx_tokens // 10 + 1)


# Reranker verification: (query, document) pairs in the official format (service/contract.py).
# Relevant and irrelevant pairs, so the scores spread and a swapped or wrong head changes their order.
RERANK_SAMPLES: dict[str, tuple[str, str]] = {
    "english, relevant": ("What is the capital of China?", "The capital of China is Beijing."),
    "english, irrelevant": ("What is the capital of China?", "Gravity is a force that attracts two bodies."),
    "chinese": ("中国的首都是哪里？", "北京是中华人民共和国的首都，也是全国的政治和文化中心。"),
    "code": ("fibonacci in python", "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"),
    "mixed": ("naïve café 🚀", "Embeddings 🚀 for search 🔎 — naïve café"),
}
LONG_RERANK_QUERY = "What does gravity do?"


def rerank_ids(tok: Any, query: str, document: str, max_tokens: int, instruction: str = "") -> list[int]:
    """prefix ids + body ids + suffix ids, as the official usage builds them: each part tokenized without
    special tokens, the body cut at its end to what max_tokens leaves after prefix and suffix. `tok` is a
    `tokenizers.Tokenizer`."""
    prefix = tok.encode(RERANK_PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(RERANK_SUFFIX, add_special_tokens=False).ids
    body = tok.encode(rerank_body(instruction, query, document), add_special_tokens=False).ids
    return [*prefix, *body[: max(0, max_tokens - len(prefix) - len(suffix))], *suffix]
