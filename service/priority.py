"""Priority classes: interactive work (a user waiting) before bulk work (a backfill), everywhere a request
waits - admission, the coalescer and Triton's queue (docs/configuration.md, "Priority classes").

A request's class comes from, strongest first:
1. its API key's pin (`<key> priority=bulk` in the API keys file): a bulk-pinned key's requests are bulk
   whatever they ask for (a pinned backfill cannot promote itself over search traffic);
2. what the request asks for: the `priority` field of EmbedRequest / RerankRequest, or gRPC metadata /
   the HTTP header `x-priority`, or vLLM's integer `priority` body field on /v1/embeddings (<= 0:
   interactive, > 0: bulk; vLLM's own meaning is "lower is served earlier, default 0");
3. interactive.

The class travels with the request's task as a context variable (set by the API layer around the lifecycle
call, read by admission and by the model run), so no pipeline signature carries it.
"""

from __future__ import annotations

import contextvars
import enum
from collections.abc import Iterator
from contextlib import contextmanager

from service.contract import PRIORITY_LEVEL_BULK, PRIORITY_LEVEL_INTERACTIVE
from service.errors import invalid


class Priority(enum.Enum):
    INTERACTIVE = "interactive"
    BULK = "bulk"

    @property
    def triton_level(self) -> int:
        """Triton's priority level (1 is the highest; the export writes contract.PRIORITY_LEVELS levels)."""
        return TRITON_LEVELS[self]


ORDER = (Priority.INTERACTIVE, Priority.BULK)  # highest first
TRITON_LEVELS = {Priority.INTERACTIVE: PRIORITY_LEVEL_INTERACTIVE, Priority.BULK: PRIORITY_LEVEL_BULK}
HEADER = "x-priority"  # HTTP header and gRPC metadata key, also set on responses: the class applied
# vLLM's field is a signed 64-bit integer; beyond that it refuses the request, and so does this service.
VLLM_MIN, VLLM_MAX = -(2**63), 2**63 - 1

_current: contextvars.ContextVar[Priority] = contextvars.ContextVar("priority", default=Priority.INTERACTIVE)


def current() -> Priority:
    """The class of the request this task works for (interactive outside any request)."""
    return _current.get()


@contextmanager
def applied(priority: Priority) -> Iterator[Priority]:
    """Runs the block (and the tasks it starts) as a request of class `priority`."""
    token = _current.set(priority)
    try:
        yield priority
    finally:
        _current.reset(token)


def parse_name(value: str, param: str = HEADER) -> Priority:
    """A class by name, case-insensitively; an unknown name is a 400 / INVALID_ARGUMENT naming the choices."""
    name = value.strip().lower()
    for p in Priority:
        if p.value == name:
            return p
    shown = value if len(value) <= 32 else value[:32] + "…"
    raise invalid(f"unknown priority {shown!r}; use one of {[p.value for p in Priority]}", param)


def from_vllm(value: int) -> Priority:
    """vLLM's integer priority (lower = earlier, default 0): 0 and below are interactive, above 0 bulk."""
    if isinstance(value, bool) or not VLLM_MIN <= value <= VLLM_MAX:
        raise invalid("priority must be a 64-bit integer (<= 0: interactive, > 0: bulk)", "priority")
    return Priority.INTERACTIVE if value <= 0 else Priority.BULK


def resolve(asked: Priority | None, pinned: Priority | None, enabled: bool = True) -> Priority:
    """The class a request runs as: a key's pin wins (a bulk key cannot ask for interactive), then what the
    request asked, then interactive. With classes disabled (settings.priority_classes off) everything is
    interactive: one class, the behaviour without priorities."""
    if not enabled:
        return Priority.INTERACTIVE
    if pinned is not None:
        return pinned
    return asked if asked is not None else Priority.INTERACTIVE
