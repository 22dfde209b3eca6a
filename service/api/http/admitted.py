"""An inference route's parsed request through the shared lifecycle: admission, the service's deadline,
cancellation when the client goes away, and the request's priority class where the route applies one. Every
embedding and rerank route, whatever API's shape it speaks (OpenAI, Cohere, TEI, NIM, Jina), runs here; the
routes keep only their own parsing and answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fastapi import Request

from service.api.http.priority import request_priority
from service.api.http.wire import HttpContext, disconnected, read_body
from service.errors import ServiceError, invalid
from service.lifecycle import EmbedOutcome, Parse, RerankOutcome
from service.models import Models
from service.pipeline.embedder import Embedder
from service.pipeline.params import EmbedParams, RerankParams
from service.pipeline.postprocess import check_dimensions
from service.priority import applied


async def embedded(request: Request, parse: Parse, body_priority: int | None = None) -> EmbedOutcome:
    """`parse` (run once admitted, with the served models) admitted and run as the request's priority class:
    its X-Priority header, else `body_priority` (vLLM's integer field, where the route's body has one), and a
    key's pin over both. Every embedding route runs here, so none can skip the class."""
    ctx: HttpContext = request.app.state.ctx
    with applied(request_priority(request, body_priority)):
        return await ctx.lifecycle.embed(parse, ctx.lifecycle.deadline(None), abandoned=disconnected(request))


async def reranked(request: Request, parse: Callable[[bytes], RerankParams]) -> RerankOutcome:
    """The body read and parsed to rerank params before admission (slow bodies hold no slot), then admitted
    and run as the request's priority class (its X-Priority header, or the key's pinned class)."""
    ctx: HttpContext = request.app.state.ctx
    params = parse(await read_body(request, ctx.settings))

    async def parse_admitted(models: Models) -> RerankParams:
        return params

    with applied(request_priority(request)):
        return await ctx.lifecycle.rerank(parse_admitted, ctx.lifecycle.deadline(None), abandoned=disconnected(request))


def check_size(embedder: Embedder, dimensions: int | None, field: str = "dimensions") -> None:
    """A requested vector size must lie in the model's range; HTTP has no "0 = full" (OpenAI's dimensions and
    Cohere's output_dimension are positive). The error names the field as the route's API calls it."""
    if dimensions is None:
        return
    info = embedder.info
    try:
        check_dimensions(dimensions, info.min_dimensions, info.hidden_size, zero_means_full=False)
    except ServiceError as exc:
        if field == "dimensions":
            raise
        raise invalid(exc.message.replace("dimensions", field, 1), field) from None


def on_embedder(params: EmbedParams, name: str, dimensions: int | None, field: str = "dimensions") -> Parse:
    """The admitted step of a route whose params are known before admission: the embedding model `name` picks
    (empty: the default), its size checked (check_size), and the params bound to it."""

    async def parse(models: Models) -> tuple[EmbedParams, Embedder]:
        embedder = models.embedder(name)
        check_size(embedder, dimensions, field)
        return replace(params, model=embedder.info.triton_name), embedder

    return parse
