"""Hugging Face text-embeddings-inference's HTTP routes, with TEI's meaning (router/src/http/server.rs):
`POST /embed` (and `POST /`, `/invocations`, where TEI serves an embedding model) -> a bare array of vectors;
`POST /similarity` -> cosine scores; `GET /health`; `/embed_all`, `/embed_sparse` and `/predict` refused with
TEI's status for a route the model cannot serve (424) and why; TEI's facts on `/info` (tei_info_fields).
Errors in TEI's shape (tei_wire.py). The tokenizer routes (`/tokenize`, `/decode`, vLLM's `/detokenize`)
are tokenize.py's."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import __version__
from service.api.http import tokenize
from service.api.http.admitted import embedded, on_embedder
from service.api.http.tei_schemas import Direction, TeiEmbedRequest, TeiErrorResponse, TeiSimilarityRequest
from service.api.http.tei_wire import TEI_ERROR_RESPONSES, TeiError, empty, parse_tei, tei_error_response, tei_errors
from service.api.http.token_ids import check_token_ids_allowed
from service.api.http.wire import HttpContext, json_response, read_json, request_body
from service.contract import ModelKind
from service.lifecycle import EmbedOutcome
from service.pipeline.params import EmbedParams, Truncate
from service.state import ServiceState


def truncate_policy(truncate: bool | None, direction: Direction) -> Truncate:
    """TEI's truncate (default false: an input over the limit is refused) and side: Right cuts the end, Left
    the start. A Left cut keeps a named prompt's tokens (the pipeline's START), so a cut query stays a query."""
    if not truncate:
        return Truncate.NONE
    return Truncate.START if direction.lower() == "left" else Truncate.END


def params_from_tei(body: TeiEmbedRequest) -> EmbedParams:
    raw = body.inputs
    texts: tuple[str, ...] = ()
    ids: tuple[tuple[int, ...], ...] = ()
    if isinstance(raw, str):
        texts = (raw,)
    elif not raw:
        raise empty("inputs")
    elif all(isinstance(x, int) for x in raw):
        ids = (tuple(raw),)  # type: ignore[arg-type]
    elif all(isinstance(x, str) for x in raw):
        texts = tuple(raw)  # type: ignore[arg-type]
    elif all(isinstance(x, list) for x in raw):
        ids = tuple(tuple(x) for x in raw)  # type: ignore[arg-type,union-attr]
    else:
        raise TeiError(422, "validation", "inputs: a batch mixes texts and token ids; send one kind")
    return EmbedParams(
        texts=texts,
        token_ids=ids,
        prompt_name=body.prompt_name or "",
        dimensions=body.dimensions or 0,
        normalize=body.normalize,
        truncate=truncate_policy(body.truncate, body.truncation_direction),
    )


async def embed_tei(request: Request, params: EmbedParams, dimensions: int | None) -> EmbedOutcome:
    """Admitted and run as `/v1/embeddings` runs (admitted.py), on the default embedding model (TEI serves one
    model; its requests name none)."""
    ctx: HttpContext = request.app.state.ctx
    parse = on_embedder(check_token_ids_allowed(params, ctx.settings), "", dimensions)
    return await embedded(request, parse)


async def embed_response(request: Request) -> Response:
    body = await read_json(request, TeiEmbedRequest, parse_tei)
    outcome = await embed_tei(request, params_from_tei(body), body.dimensions)
    # Widened to float64 so the JSON numbers are those of json.dumps(vectors.tolist()) (wire.json_bytes).
    return json_response(outcome.result.vectors.astype(np.float64))


router = APIRouter()
router.include_router(tokenize.router)


@router.post(
    "/embed",
    response_model=list[list[float]],
    responses=TEI_ERROR_RESPONSES,
    openapi_extra=request_body(TeiEmbedRequest),
)
async def embed(request: Request) -> Response:
    """TEI embed: [[float, ...], ...], one vector per input, in input order."""
    return await tei_errors(lambda: embed_response(request))


# TEI's root route for an embedding model (what huggingface_hub's InferenceClient(base_url=...) posts) and its
# SageMaker route: /embed's request and response.
for _path in ("/", "/invocations"):
    router.add_api_route(_path, embed, methods=["POST"], include_in_schema=False)


async def similarity_response(request: Request) -> Response:
    body = await read_json(request, TeiSimilarityRequest, parse_tei)
    if not body.inputs.sentences:
        raise empty("inputs.sentences")
    options = body.parameters
    params = EmbedParams(
        texts=(body.inputs.source_sentence, *body.inputs.sentences),
        prompt_name=(options.prompt_name if options else None) or "",
        truncate=truncate_policy(options.truncate, options.truncation_direction) if options else Truncate.NONE,
    )
    vectors = (await embed_tei(request, params, None)).result.vectors.astype(np.float64)
    # Unit vectors: the cosine is the dot product (TEI: 1 - cosine distance of the two vectors).
    return json_response(vectors[1:] @ vectors[0])


@router.post(
    "/similarity",
    response_model=list[float],
    responses=TEI_ERROR_RESPONSES,
    openapi_extra=request_body(TeiSimilarityRequest),
)
async def similarity(request: Request) -> Response:
    """TEI sentence similarity: the cosine of source_sentence with each of sentences."""
    return await tei_errors(lambda: similarity_response(request))


REFUSED = {
    "/embed_all": "per-token embeddings are not available: the served ONNX graph pools inside the model "
    "(last-token pooling) and returns one vector per input; use /embed",
    "/embed_sparse": "sparse embeddings need a SPLADE model; Qwen3-Embedding is a dense embedding model; use /embed",
    "/predict": "the served models are an embedding model and a reranker, not a sequence classifier; "
    "use /embed or /rerank",
}


def refused_route(path: str, reason: str) -> None:
    async def refuse(request: Request) -> Response:
        async def answer() -> Response:
            raise TeiError(424, "backend", reason)

        return await tei_errors(answer)

    router.add_api_route(
        path,
        refuse,
        methods=["POST"],
        summary=f"TEI {path}: refused",
        description=reason,
        responses={424: {"model": TeiErrorResponse}},
    )


for _path, _reason in REFUSED.items():
    refused_route(_path, _reason)


@router.get("/health", responses=TEI_ERROR_RESPONSES)
async def health(request: Request) -> Response:
    """TEI's health check: 200 with an empty body when ready, else 503 (TEI's `unhealthy` error)."""
    if request.app.state.ctx.lifecycle.state.ready:
        return Response(status_code=200)
    return tei_error_response(503, "unhealthy", "unhealthy")


TEI_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def tei_info_fields(state: ServiceState) -> dict[str, Any]:
    """TEI's Info (router/src/lib.rs) for the default embedding model, for clients that read its limits
    (max_input_length, max_client_batch_size) to chunk their requests."""
    models = state.require_models()
    settings = state.settings
    embedder = next((m for m in models.all() if m.info.kind is ModelKind.EMBEDDING and models.is_default(m)), None)
    if embedder is None:
        return {}
    info = embedder.info
    return {
        "model_id": info.source_model,
        "model_sha": info.source_revision or None,
        "model_dtype": TEI_DTYPES.get(info.precision, info.precision),
        "model_type": {"embedding": {"pooling": "last_token"}},
        "max_concurrent_requests": settings.max_in_flight,
        "max_input_length": info.max_input_tokens,
        "max_batch_tokens": embedder.token_budget,
        "max_batch_requests": embedder.max_rows,
        "max_client_batch_size": settings.max_batch_inputs,
        "auto_truncate": False,
        "tokenization_workers": settings.tokenizer_threads,
        "version": __version__,
        "sha": None,
        "docker_label": None,
    }
