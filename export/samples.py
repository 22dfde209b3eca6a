"""Inputs the exporter verifies on: several scripts, code, a long input, mixed lengths."""

from __future__ import annotations

from export.prompts import OFFICIAL_PROMPTS

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
