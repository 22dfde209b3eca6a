"""Request ids: one per API request, the client's own when it sent a usable one, else a new one. HTTP answers
it in `X-Request-Id`, gRPC in the `x-request-id` trailing metadata; the logs written while the request runs
carry it (service/logs.py), and so does its trace span (service/tracing.py)."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

HEADER = "x-request-id"  # HTTP header (case-insensitive) and gRPC metadata key
MAX_LENGTH = 128
# What a client's id may hold: what UUIDs, ULIDs, base64 and proxies' ids (AWS `Root=1-...;Parent=...`) use.
# Nothing that could forge or split a log line (control characters, spaces, quotes) or grow a header.
_VALID = re.compile(rf"[A-Za-z0-9._:;/+=@-]{{1,{MAX_LENGTH}}}")

# The request id of the request being served in this context ("" outside requests); read by the log filter.
current: ContextVar[str] = ContextVar("request_id", default="")


def is_valid(candidate: str) -> bool:
    return _VALID.fullmatch(candidate) is not None


def new() -> str:
    """32 lowercase hex digits (a random UUID without dashes)."""
    return uuid.uuid4().hex


def choose(candidate: str | bytes | None) -> str:
    """The client's id when it is valid, else a new one: a hostile id (too long, control characters, not
    ASCII) is replaced, never echoed or logged."""
    if isinstance(candidate, bytes):
        try:
            candidate = candidate.decode("ascii")
        except UnicodeDecodeError:
            return new()
    if candidate and len(candidate) <= MAX_LENGTH and is_valid(candidate):
        return candidate
    return new()
