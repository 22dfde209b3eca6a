"""Token counting and decoding for clients that chunk before they send (TEI#200), in TEI's and vLLM's shapes.

`POST /tokenize` serves both, told apart by the body's fields: `inputs` is TEI's request (-> [[{id, text,
special, start, stop}]], errors in TEI's shape), `prompt` is vLLM's (-> {count, max_model_len, tokens,
token_strs}, errors in the service's OpenAI shape); a body with both or neither is a 400 naming them.
`POST /decode` is TEI's, `POST /detokenize` vLLM's.

The tokens are those the embedding route sends for the same text: the named prompt prefixed, the same ids,
the EOS appended (add_special_tokens, the default), so a count here equals that request's
usage.prompt_tokens. Admitted like /v1/embeddings (a slot, the deadline, the `X-Priority` class), though no
model runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.http.json_budget import DuplicateKey, object_keys
from service.api.http.priority import request_priority
from service.api.http.tei_schemas import (
    TeiDecodeRequest,
    TeiTokenizeRequest,
    VllmDetokenizeRequest,
    VllmTokenizeRequest,
)
from service.api.http.tei_wire import TEI_ERROR_RESPONSES, TeiError, empty, parse_tei, tei_errors
from service.api.http.wire import (
    ERROR_RESPONSES,
    HttpContext,
    inline_schema,
    json_response,
    parse_json,
    read_body,
    request_body,
)
from service.contract import ModelKind
from service.errors import ErrorKind, ServiceError, invalid
from service.models import Models
from service.pipeline.inference import ServedModel, check_unicode
from service.pipeline.templating import resolve_prefix
from service.pipeline.token_view import Token, check_ids, decode, token_strings, tokens_of
from service.pipeline.tokenization import StopFlag, Stopped
from service.priority import applied

router = APIRouter()


def served(models: Models, name: str | None) -> ServedModel:
    """The model a request names (either kind), or the default embedding model."""
    if not name:
        return models.embedder()
    found = models.find(name)
    if found is None:
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise ServiceError(
            ErrorKind.NOT_FOUND, f"model {shown!r} is not served here; served: {models.names()}", "model"
        )
    return found


def eos_of(model: ServedModel, add_special_tokens: bool) -> int | None:
    """An embedding model's sequences end in the EOS it pools; a reranker's template adds none."""
    return model.info.eos_id if add_special_tokens and model.info.kind is ModelKind.EMBEDDING else None


async def tokenized(
    request: Request, model_name: str | None, texts: Sequence[str], prompt_name: str, add_special_tokens: bool
) -> tuple[list[list[Token]], ServedModel]:
    ctx: HttpContext = request.app.state.ctx
    deadline = ctx.lifecycle.deadline(None)
    with applied(request_priority(request)):
        return await _tokenized(ctx, deadline, model_name, texts, prompt_name, add_special_tokens)


async def _tokenized(
    ctx: HttpContext,
    deadline: float,
    model_name: str | None,
    texts: Sequence[str],
    prompt_name: str,
    add_special_tokens: bool,
) -> tuple[list[list[Token]], ServedModel]:
    async with ctx.lifecycle.admitted(deadline) as models:
        model = served(models, model_name)
        if len(texts) > model.max_batch_inputs:
            raise invalid(
                f"{len(texts)} inputs is more than the limit of {model.max_batch_inputs} per request; split the batch",
                "input",
            )
        for i, text in enumerate(texts):
            check_unicode(text, f"input {i}", "input")
        prefix = resolve_prefix("", prompt_name, model.info.prompts if model.info.kind is ModelKind.EMBEDDING else {})
        eos = eos_of(model, add_special_tokens)

        def work(stop: StopFlag | None) -> list[list[Token]]:
            # The same per-request token cap as the embedding route: the answer (an object per token) stays
            # bounded, and a request that could not be embedded whole is told so here too.
            out: list[list[Token]] = []
            total = 0
            for text in texts:
                if stop is not None and stop():
                    raise Stopped
                out.append(tokens_of(model.tokenizer, prefix + text, eos))
                total += len(out[-1])
                if total > model.max_request_tokens:
                    raise invalid(
                        f"the request has more than {model.max_request_tokens} tokens, the limit per request; split it",
                        "input",
                    )
            return out

        size = sum(len(t) for t in texts)
        return await model.run_tokenizer(work, size, deadline, "input"), model


async def decoded(request: Request, model_name: str | None, batches: Sequence[Sequence[int]], skip: bool) -> list[str]:
    ctx: HttpContext = request.app.state.ctx
    with applied(request_priority(request)):
        async with ctx.lifecycle.admitted(ctx.lifecycle.deadline(None)) as models:
            model = served(models, model_name)
            vocabulary = model.tokenizer.tokenizer.get_vocab_size(with_added_tokens=True)
            for ids in batches:
                check_ids(ids, vocabulary, "ids")
            return [decode(model.tokenizer, ids, skip) for ids in batches]


def tei_token(token: Token) -> dict[str, Any]:
    return dataclasses.asdict(token)


async def tei_tokenize(request: Request, body: bytes) -> Response:
    req = parse_tei(TeiTokenizeRequest, body)
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    if not texts:
        raise empty("inputs")
    lists, _ = await tokenized(request, None, texts, req.prompt_name or "", req.add_special_tokens)
    return json_response([[tei_token(t) for t in tokens] for tokens in lists])


async def vllm_tokenize(request: Request, body: bytes) -> Response:
    req = parse_json(VllmTokenizeRequest, body)
    lists, model = await tokenized(request, req.model, [req.prompt], "", req.add_special_tokens)
    ids = [t.id for t in lists[0]]
    return json_response(
        {
            "count": len(ids),
            "max_model_len": model.info.max_input_tokens,
            "tokens": ids,
            "token_strs": token_strings(model.tokenizer, ids) if req.return_token_strs else None,
        }
    )


def shape_of(body: bytes) -> str:
    """ "tei" or "vllm", by the body's top-level fields."""
    try:
        keys = set(object_keys(body) or ())
    except DuplicateKey as exc:
        raise invalid(f"duplicate key {exc.key[:64]!r} in the JSON body: each key may appear once") from None
    if "inputs" in keys and "prompt" not in keys:
        return "tei"
    if "prompt" in keys and "inputs" not in keys:
        return "vllm"
    raise invalid(
        "send either `inputs` (TEI's /tokenize) or `prompt` (vLLM's /tokenize), not both or neither", "inputs"
    )


TOKENIZE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [inline_schema(TeiTokenizeRequest), inline_schema(VllmTokenizeRequest)]}
            }
        },
    }
}


@router.post("/tokenize", responses=ERROR_RESPONSES, openapi_extra=TOKENIZE_BODY)
async def tokenize(request: Request) -> Response:
    """TEI's /tokenize (`inputs`) or vLLM's (`prompt`): the tokens the embedding route sends for the text."""
    ctx: HttpContext = request.app.state.ctx
    body = await read_body(request, ctx.settings)
    if shape_of(body) == "vllm":
        return await vllm_tokenize(request, body)
    return await tei_errors(lambda: tei_tokenize(request, body))


async def tei_decode(request: Request) -> Response:
    ctx: HttpContext = request.app.state.ctx
    req = parse_tei(TeiDecodeRequest, await read_body(request, ctx.settings))
    batches: list[list[int]] = [req.ids] if not req.ids or isinstance(req.ids[0], int) else req.ids  # type: ignore[list-item]
    try:
        return json_response(await decoded(request, None, batches, req.skip_special_tokens))
    except ServiceError as exc:
        if exc.param == "ids":  # TEI: ids its tokenizer cannot decode are a tokenizer error
            raise TeiError(422, "tokenizer", exc.message) from None
        raise


@router.post(
    "/decode", response_model=list[str], responses=TEI_ERROR_RESPONSES, openapi_extra=request_body(TeiDecodeRequest)
)
async def decode_tei(request: Request) -> Response:
    """TEI decode: ids (one list or a batch of lists) -> texts."""
    return await tei_errors(lambda: tei_decode(request))


@router.post("/detokenize", responses=ERROR_RESPONSES, openapi_extra=request_body(VllmDetokenizeRequest))
async def detokenize(request: Request) -> Response:
    """vLLM detokenize: {tokens} -> {prompt}."""
    ctx: HttpContext = request.app.state.ctx
    req = parse_json(VllmDetokenizeRequest, await read_body(request, ctx.settings))
    try:
        (text,) = await decoded(request, req.model, [req.tokens], skip=False)
    except ServiceError as exc:
        if exc.param == "ids":
            raise invalid(exc.message.replace("ids:", "tokens:", 1), "tokens") from None
        raise
    return json_response({"prompt": text})
