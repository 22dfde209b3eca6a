"""Whether the HTTP API takes token-id input (OpenAI's `input` as lists of ints).

OpenAI clients that tokenize before sending (LangChain's OpenAIEmbeddings by default) send ids of OpenAI's
tiktoken vocabulary (cl100k_base). Those are ints in Qwen's id range too, so the service cannot tell them
apart and would embed them as Qwen tokens: wrong vectors, no error. Refusing token ids unless a deployment
allows them turns that into a clear 400."""

from __future__ import annotations

from service.errors import invalid
from service.pipeline.params import EmbedParams
from service.settings import Settings

REFUSED = (
    "token-id input is turned off on this server: send text. Token ids must be Qwen3 tokenizer ids; "
    "OpenAI clients that tokenize first send OpenAI (tiktoken) ids, which would embed as different tokens "
    "(LangChain OpenAIEmbeddings: set check_embedding_ctx_length=False). "
    "Operators can allow Qwen3 token ids with QWEN3_EMBED_ALLOW_TOKEN_IDS=true"
)


def check_token_ids_allowed(params: EmbedParams, settings: Settings) -> EmbedParams:
    """Raises INVALID_ARGUMENT (HTTP 400, param `input`) for token ids unless `allow_token_ids`; returns
    `params` unchanged so the route can wrap its parse in one call."""
    if params.token_ids and not settings.allow_token_ids:
        raise invalid(REFUSED, "input")
    return params
