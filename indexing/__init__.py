"""Bulk indexing (`qwen3-embed index`) and retrieval evaluation (`qwen3-embed eval`) over the service's client.

Not part of the serving wheel: it runs from a checkout (`make venv`) with the `index` extra."""
