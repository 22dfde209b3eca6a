"""The official Qwen3-Embedding prompts (shared doc: template and default task)."""

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def query_prefix(task: str) -> str:
    # Exact official template: one newline, no space after "Query:".
    return f"Instruct: {task}\nQuery:"


OFFICIAL_PROMPTS: dict[str, str] = {"query": query_prefix(DEFAULT_TASK), "document": ""}
