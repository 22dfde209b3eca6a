"""The service's errors, below every module that raises them.

Two families: a request's error (ServiceError, independent of the API that reports it as a gRPC or HTTP
status) and a start-up failure (StartupFailure: the process ends with the exit code of
service/process/exits.py, after one clear line).
"""

from __future__ import annotations

from enum import Enum


class ErrorKind(Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    INTERNAL = "internal"


class ServiceError(Exception):
    def __init__(self, kind: ErrorKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


def invalid(message: str, param: str | None = None) -> ServiceError:
    return ServiceError(ErrorKind.INVALID_ARGUMENT, message, param)


class StartupFailure(RuntimeError):
    """Why a serving process cannot go on: logged in one line, then its exit code (service/process/exits.py)."""


class Misconfiguration(StartupFailure):
    """A configuration error that retrying cannot fix: the process exits (code 2) with this one message."""


class TritonGaveUp(StartupFailure):
    """The local Triton failed too many times in a row: the process exits (code 4) with this message."""


class WorkerMisconfigured(StartupFailure):
    """A worker exited with code 2: it logged why; the parent stops and exits 2 too."""


class WorkersGaveUp(StartupFailure):
    """A worker died too often in a row: the parent stops and exits 5 (the orchestrator restarts the pod)."""
