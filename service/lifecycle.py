"""One request lifecycle for every API: admit -> validate -> work -> respond, with the deadline and
cancellation carried through. gRPC and HTTP only translate their wire format and their status codes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from service import priority, tracing
from service.admission import Admission
from service.errors import ErrorKind, ServiceError
from service.models import Models
from service.pipeline.embedder import Embedder, EmbedResult
from service.pipeline.inference import Tokenized
from service.pipeline.params import EmbedParams, RerankParams
from service.pipeline.reranker import Reranker, RerankResult
from service.state import ServiceState

T = TypeVar("T")
# Reads and validates a request once it is admitted, against the models in force, and picks its model there
# (once per request: models.embedder(params.model), see chosen_embedder).
Parse = Callable[[Models], Awaitable[tuple[EmbedParams, Embedder]]]
RerankParse = Callable[[Models], Awaitable[RerankParams]]


def chosen_embedder(models: Models, params: EmbedParams) -> tuple[EmbedParams, Embedder]:
    """What a Parse returns for `params`: its model, found by params.model (empty: the default one)."""
    return params, models.embedder(params.model)


@dataclass(frozen=True)
class EmbedOutcome:
    params: EmbedParams
    result: EmbedResult
    model: str


@dataclass(frozen=True)
class RerankOutcome:
    params: RerankParams
    result: RerankResult
    model: str


class Lifecycle:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.admission = Admission(state.settings.max_in_flight, state.metrics)

    def deadline(self, client_timeout_s: float | None) -> float:
        """time.monotonic() deadline: the client's (capped at 10x the default), else the default."""
        default = self.state.settings.default_timeout_s
        timeout = default if client_timeout_s is None else min(client_timeout_s, default * 10)
        return time.monotonic() + max(timeout, 0.0)

    @asynccontextmanager
    async def admitted(self, deadline: float, stream: bool = False) -> AsyncIterator[Models]:
        """A slot (refused at once for interactive unary calls, awaited for stream messages and bulk requests:
        the class is the request's priority.current()), the models in force, and the deadline as a cancellation
        of everything inside (asyncio's loop clock is time.monotonic)."""
        slot = self.admission.slot(priority.current(), stream)
        try:
            async with asyncio.timeout_at(deadline):
                async with tracing.acquired("admission", slot):  # a span over the wait for the slot
                    yield self.state.require_models()
        except TimeoutError:
            raise ServiceError(ErrorKind.DEADLINE_EXCEEDED, "deadline exceeded") from None

    async def embed(
        self,
        parse: Parse,
        deadline: float,
        stream: bool = False,
        abandoned: Callable[[], Awaitable[None]] | None = None,
    ) -> EmbedOutcome:
        """`parse` validates the request against the served models once admitted (HTTP has read and parsed the
        body before, so a slow body holds no slot; a gRPC message arrives whole).
        `abandoned` returns when the client has gone away (HTTP; gRPC cancels the call itself): the work
        is cancelled then, freeing the slot and sending nothing more to Triton."""
        async with self.admitted(deadline, stream) as models:
            params, embedder = await parse(models)
            tracing.describe_request(embedder.info.served_name, params.count, priority=priority.current().value)
            result = await until_abandoned(embedder.embed(params, deadline), abandoned)
        return EmbedOutcome(params, result, embedder.info.served_name)

    async def tokenize(self, parse: Parse, deadline: float) -> tuple[Tokenized, Embedder]:
        async with self.admitted(deadline) as models:
            params, embedder = await parse(models)
            return await embedder.tokenize(params, deadline), embedder

    async def rerank(
        self, parse: RerankParse, deadline: float, abandoned: Callable[[], Awaitable[None]] | None = None
    ) -> RerankOutcome:
        """As `embed`, for a reranker: params.model picks it (empty: the default reranker)."""
        async with self.admitted(deadline) as models:
            params = await parse(models)
            reranker: Reranker = models.reranker(params.model)
            tracing.describe_request(reranker.info.served_name, params.count, "rerank", priority.current().value)
            result = await until_abandoned(reranker.rerank(params, deadline), abandoned)
        return RerankOutcome(params, result, reranker.info.served_name)


async def until_abandoned(work: Awaitable[T], abandoned: Callable[[], Awaitable[None]] | None) -> T:
    if abandoned is None:
        return await work
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(abandoned())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ServiceError(ErrorKind.CANCELLED, "the client went away")
    return task.result()
