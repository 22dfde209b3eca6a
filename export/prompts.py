"""The official Qwen3-Embedding prompts (shared doc: template and default task); the template itself is the
model contract's (service/contract.py), so export and serving cannot disagree on it."""

from service.contract import instruction_prefix

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

OFFICIAL_PROMPTS: dict[str, str] = {"query": instruction_prefix(DEFAULT_TASK), "document": ""}
