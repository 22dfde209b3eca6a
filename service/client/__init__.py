"""The Python client for other services (`Client`, `AsyncClient`) and `qwen3-embed embed` (`embed_cli`)."""

from service.client.cli import embed_cli, rerank_cli
from service.client.core import (
    AsyncClient,
    Client,
    Embedded,
    EmbedError,
    EmbedOptions,
    Limits,
    Reranked,
    RerankHit,
    RetryPolicy,
    RowsEmbedded,
    chunks,
    quantize,
)

__all__ = [
    "AsyncClient",
    "Client",
    "EmbedError",
    "EmbedOptions",
    "Embedded",
    "Limits",
    "RerankHit",
    "Reranked",
    "RetryPolicy",
    "RowsEmbedded",
    "chunks",
    "embed_cli",
    "quantize",
    "rerank_cli",
]
