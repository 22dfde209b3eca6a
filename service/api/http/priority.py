"""A HTTP request's priority class (service/priority.py): the `X-Priority` header (interactive or bulk), else
vLLM's integer `priority` body field (/v1/embeddings; <= 0 interactive, > 0 bulk), else interactive; a key
pinned in the API keys file overrides both. The class applied is echoed in the response's `X-Priority`."""

from __future__ import annotations

from fastapi import Request
from starlette.types import Scope

from service import priority
from service.priority import Priority

PINNED_KEY = "qwen3_embed.pinned_priority"  # ASGI scope: the gate's answer for the request's API key
APPLIED_KEY = "qwen3_embed.priority"  # ASGI scope: the class the request ran as (echoed by the gate)


def pin(scope: Scope, pinned: Priority | None) -> None:
    if pinned is not None:
        scope[PINNED_KEY] = pinned


def request_priority(request: Request, body_priority: int | None = None) -> Priority:
    """The class `request` runs as; an unknown header value or an out-of-range body value is a 400."""
    header = request.headers.get(priority.HEADER)
    asked: Priority | None = None
    if header is not None:
        asked = priority.parse_name(header)
    elif body_priority is not None:
        asked = priority.from_vllm(body_priority)
    settings = request.app.state.ctx.settings
    chosen = priority.resolve(asked, request.scope.get(PINNED_KEY), settings.priority_classes)
    request.scope[APPLIED_KEY] = chosen
    return chosen


def applied_header(scope: Scope) -> tuple[bytes, bytes] | None:
    chosen = scope.get(APPLIED_KEY)
    return (priority.HEADER.encode(), chosen.value.encode()) if isinstance(chosen, Priority) else None
