"""Client and AsyncClient: embed lists of any length through the gRPC API or an OpenAI-compatible HTTP API.

Both chunk to the server's limits (GetInfo / GET /info; defaults for servers without it), put a deadline on
each call, and retry overload and unavailability (gRPC RESOURCE_EXHAUSTED / UNAVAILABLE, HTTP 429 / 503 and
connection errors) with exponential backoff and full jitter, waiting at least as long as the server's hint
(`retry-after-ms` trailing metadata, `Retry-After` header). Bad input is not retried: `embed` raises
`EmbedError`; `embed_rows` isolates the bad rows by bisection and returns their reasons instead.
httpx is imported only for the HTTP API, so the gRPC client needs nothing beyond the serving wheel.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.pipeline.encoding import pack
from service.pipeline.params import Encoding

ENCODINGS = ("float", "float16", "binary", "ubinary", "int8", "uint8")
TRUNCATES = ("none", "end", "start")
RETRY_GRPC = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}
RETRY_HTTP = {429, 502, 503, 504}
# The server's message limit is 16 MiB; keep each request's text well under it.
MAX_REQUEST_CHARS = 4 << 20


class EmbedError(Exception):
    """A failed call: `code` (gRPC status name or HTTP status), `retryable` once retries ran out."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.retryable = code, message, retryable


@dataclass(frozen=True)
class Limits:
    """What a client chunks to; from GetInfo when the server has it."""

    max_batch_inputs: int = 64
    max_input_tokens: int = 0
    dimensions: int = 0
    min_dimensions: int = 0
    model: str = ""
    prompt_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class EmbedOptions:
    prompt_name: str = ""
    instruction: str = ""
    dimensions: int = 0
    normalize: bool = True
    truncate: str = "none"
    encoding: str = "float"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}")
        if self.encoding in ("int8", "uint8") and not self.normalize:
            # The server refuses it too: the fixed range [-1, 1] of int8/uint8 holds normalised values only.
            raise ValueError(f"encoding {self.encoding} needs normalize=True")
        if self.truncate not in TRUNCATES:
            raise ValueError(f"truncate must be one of {TRUNCATES}")


@dataclass
class Embedded:
    """Vectors in input order (float32, float16, int8/uint8 buckets, or packed int8/uint8 bits) and the tokens
    they cost."""

    vectors: np.ndarray
    prompt_tokens: int


@dataclass
class RowsEmbedded:
    """`embed_rows`: a vector or None per row, and the reason for each None."""

    vectors: list[np.ndarray | None]
    errors: dict[int, str]
    prompt_tokens: int


@dataclass(frozen=True)
class RerankHit:
    """One document's result: its position in the call's `documents`, its score, and its text when asked."""

    index: int
    score: float
    document: str | None = None


@dataclass
class Reranked:
    """Documents by score, highest first (top_n of them when set), and the tokens they cost."""

    results: list[RerankHit]
    prompt_tokens: int
    model: str = ""


@dataclass
class RetryPolicy:
    attempts: int = 8
    base_s: float = 0.1
    cap_s: float = 10.0
    # Counts retries across calls (the index command's summary).
    retries: int = field(default=0, compare=False)

    def delay(self, attempt: int, hint_s: float | None) -> float:
        # Full jitter spreads clients that were refused together; never sooner than the server asked.
        backoff = random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))
        return max(backoff, hint_s or 0.0) + (random.uniform(0, 0.05) if hint_s else 0.0)

    def next_delay(self, error: EmbedError, attempt: int, hint_s: float | None) -> float:
        """The wait before the next attempt, counted; raises `error` when it is final or attempts ran out."""
        if not error.retryable or attempt == self.attempts - 1:
            raise error
        self.retries += 1
        return self.delay(attempt, hint_s)


def quantize(vectors: np.ndarray, encoding: str) -> np.ndarray:
    """The server's encodings applied to float vectors (for the HTTP API, which returns floats only): as
    sentence-transformers, ubinary packs `value > 0` bits and binary is that minus 128; int8/uint8 are the
    server's buckets of the fixed range [-1, 1] (service.pipeline.encoding.pack)."""
    if encoding == "float":
        return vectors.astype(np.float32, copy=False)
    if encoding == "float16":
        return vectors.astype(np.float16)
    if encoding in ("int8", "uint8"):
        dtype = np.int8 if encoding == "int8" else np.uint8
        rows = pack(vectors, Encoding[encoding.upper()])
        return np.stack([np.frombuffer(r, dtype=dtype) for r in rows]) if rows else np.zeros((0, 0), dtype=dtype)
    bits = np.packbits(vectors > 0, axis=-1)
    return bits if encoding == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)


def _decode_grpc(response: pb.EmbedResponse, encoding: str) -> np.ndarray:
    if encoding == "float":
        return np.array([e.values for e in response.embeddings], dtype=np.float32).reshape(len(response.embeddings), -1)
    dtypes: dict[str, np.dtype[Any]] = {
        "float16": np.dtype("<f2"),
        "binary": np.dtype(np.int8),
        "ubinary": np.dtype(np.uint8),
        "int8": np.dtype(np.int8),
        "uint8": np.dtype(np.uint8),
    }
    dtype = dtypes[encoding]
    rows = [np.frombuffer(e.packed, dtype=dtype) for e in response.embeddings]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=dtype)


def _grpc_failure(exc: grpc.RpcError) -> tuple[EmbedError, float | None]:
    """A failed gRPC call as the client's error, and the server's retry hint."""
    code = exc.code()
    return EmbedError(code.name, exc.details() or "", code in RETRY_GRPC), _grpc_hint(exc)


def _grpc_hint(exc: grpc.RpcError) -> float | None:
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == "retry-after-ms":
            return float(value) / 1000
    return None


def _http_hint(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: rare from embedding servers; fall back to backoff
        return None


def chunks(texts: Sequence[str], max_inputs: int, max_chars: int = MAX_REQUEST_CHARS) -> list[tuple[int, int]]:
    """[start, end) ranges of at most `max_inputs` texts and about `max_chars` characters (one at least)."""
    out, start, chars = [], 0, 0
    for i, text in enumerate(texts):
        if i > start and (i - start >= max_inputs or chars + len(text) > max_chars):
            out.append((start, i))
            start, chars = i, 0
        chars += len(text)
    if start < len(texts):
        out.append((start, len(texts)))
    return out


class _Base:
    def __init__(
        self,
        target: str,
        *,
        api: str = "grpc",
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 60.0,
        batch_size: int | None = None,
        retry: RetryPolicy | None = None,
        priority: str | None = None,
    ) -> None:
        """`target`: host:port for gRPC, the base URL (".../v1") for HTTP. `model`: the OpenAI `model` field
        (default: the server's from /info or /v1/models). `batch_size` caps inputs per request below the
        server's limit. `priority`: "interactive" or "bulk" for every request (the `priority` field on gRPC,
        the X-Priority header on HTTP); None: the server's default (interactive, or the key's pin)."""
        if api not in ("grpc", "http"):
            raise ValueError("api must be 'grpc' or 'http'")
        if priority not in (None, "interactive", "bulk"):
            raise ValueError("priority must be 'interactive' or 'bulk'")
        self.priority = priority
        self.target, self.api, self.api_key, self.model = target, api, api_key, model
        self.timeout_s, self.batch_size = timeout_s, batch_size
        self.retry = retry or RetryPolicy()
        self._limits: Limits | None = None

    @property
    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else None

    @property
    def _headers(self) -> dict[str, str]:
        headers = {"authorization": f"Bearer {self.api_key or 'EMPTY'}"}
        if self.priority:
            headers["x-priority"] = self.priority
        return headers

    @property
    def _priority_pb(self) -> pb.Priority:
        name = f"PRIORITY_{self.priority.upper()}" if self.priority else "PRIORITY_UNSPECIFIED"
        return pb.Priority.Value(name)  # type: ignore[return-value]

    def _batch(self, limits: Limits) -> int:
        return max(1, min(limits.max_batch_inputs, self.batch_size or limits.max_batch_inputs))

    def _grpc_request(self, texts: Sequence[str], opts: EmbedOptions) -> pb.EmbedRequest:
        request = pb.EmbedRequest(
            inputs=list(texts),
            prompt_name=opts.prompt_name,
            instruction=opts.instruction,
            dimensions=opts.dimensions,
            truncate=pb.Truncate.Value(f"TRUNCATE_{opts.truncate.upper()}"),
            encoding=pb.Encoding.Value(f"ENCODING_{opts.encoding.upper()}"),
            priority=self._priority_pb,
        )
        if not opts.normalize:
            request.normalize = False
        return request

    def _http_body(self, texts: Sequence[str], opts: EmbedOptions, model: str) -> dict[str, Any]:
        # Only what the caller set beyond OpenAI's API is sent, so any OpenAI-compatible server accepts the rest.
        body: dict[str, Any] = {"model": model, "input": list(texts), "encoding_format": "base64"}
        if opts.dimensions:
            body["dimensions"] = opts.dimensions
        if opts.prompt_name:
            body["prompt_name"] = opts.prompt_name
        if opts.instruction:
            body["instruction"] = opts.instruction
        if opts.truncate != "none":
            body["truncate"] = opts.truncate.upper()
        if not opts.normalize:
            body["normalize"] = False
        return body

    @staticmethod
    def _http_decode(payload: dict[str, Any], opts: EmbedOptions) -> Embedded:
        data = sorted(payload["data"], key=lambda d: d["index"])
        rows = [
            np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
            if isinstance(d["embedding"], str)
            else np.asarray(d["embedding"], dtype=np.float32)
            for d in data
        ]
        vectors = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        return Embedded(quantize(vectors, opts.encoding), int(payload.get("usage", {}).get("prompt_tokens", 0)))

    def _rerank_request(
        self, query: str, documents: Sequence[str], opts: dict[str, Any]
    ) -> pb.RerankRequest | dict[str, Any]:
        """The gRPC message, or the Cohere-shaped HTTP body (`/v1/rerank`) for one slice of the documents."""
        truncate = str(opts["truncate"])
        if truncate not in ("none", "end"):
            raise ValueError("truncate must be 'none' or 'end' for reranking")
        if self.api == "grpc":
            return pb.RerankRequest(
                query=query,
                documents=list(documents),
                instruction=opts["instruction"],
                return_documents=opts["return_documents"],
                truncate=pb.Truncate.Value(f"TRUNCATE_{truncate.upper()}"),
                raw_scores=opts["raw_scores"],
                model=opts["model"] or "",
                priority=self._priority_pb,
            )
        if opts["raw_scores"]:
            raise ValueError("raw_scores needs the gRPC API (the Cohere-shaped HTTP API returns probabilities)")
        body: dict[str, Any] = {"query": query, "documents": list(documents)}
        if opts["model"]:
            body["model"] = opts["model"]
        if opts["return_documents"]:
            body["return_documents"] = True
        if opts["instruction"]:
            body["instruction"] = opts["instruction"]
        if truncate != "none":
            body["truncate"] = truncate.upper()
        return body

    @staticmethod
    def _rerank_decode(payload: Any, offset: int) -> Reranked:
        """A gRPC RerankResponse or an HTTP JSON body; indices shifted by the slice's offset."""
        if isinstance(payload, pb.RerankResponse):
            hits = [RerankHit(offset + r.index, r.score, r.document if r.document else None) for r in payload.results]
            return Reranked(hits, payload.usage.prompt_tokens, payload.model)
        hits = [
            RerankHit(offset + int(r["index"]), float(r["relevance_score"]), (r.get("document") or {}).get("text"))
            for r in payload["results"]
        ]
        return Reranked(hits, int(payload.get("usage", {}).get("prompt_tokens", 0)), str(payload.get("model", "")))

    @staticmethod
    def _rerank_merge(parts: list[Reranked], top_n: int) -> Reranked:
        """Scores do not depend on the other documents of a call, so slices merge by a stable sort."""
        hits = sorted((h for p in parts for h in p.results), key=lambda h: (-h.score, h.index))
        return Reranked(hits[:top_n] if top_n else hits, sum(p.prompt_tokens for p in parts), parts[0].model)

    @staticmethod
    def _limits_from(fields: dict[str, Any]) -> Limits:
        return Limits(
            max_batch_inputs=int(fields.get("max_batch_inputs") or 64),
            max_input_tokens=int(fields.get("max_input_tokens") or 0),
            dimensions=int(fields.get("dimensions") or 0),
            min_dimensions=int(fields.get("min_dimensions") or 0),
            model=str(fields.get("model") or ""),
            prompt_names=tuple(fields.get("prompt_names") or ()),
        )

    @staticmethod
    def _http_error(status: int, body: str) -> EmbedError:
        return EmbedError(str(status), body[:500], retryable=status in RETRY_HTTP)

    @classmethod
    def _http_json(cls, response: Any) -> Any:
        """A 200's JSON body; otherwise the error, marked retryable with the server's hint where it is."""
        if response.status_code != 200:
            error = cls._http_error(response.status_code, response.text)
            if error.retryable:
                raise _RetryableHttp(error, _http_hint(response.headers))
            raise error
        return response.json()


class Client(_Base):
    """Blocking client; use as a context manager or call `close()`."""

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.EmbeddingServiceStub | None = None
        self._http: Any = None
        if self.api == "grpc":
            self._channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
            self._stub = pb_grpc.EmbeddingServiceStub(self._channel)
        else:
            httpx = _httpx()

            self._http = httpx.Client(base_url=target.rstrip("/"), headers=self._headers, timeout=self.timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._http is not None:
            self._http.close()

    def _with_retries(self, call: Callable[[], Any]) -> Any:
        for attempt in range(self.retry.attempts):
            try:
                return call()
            except grpc.RpcError as exc:
                error, hint = _grpc_failure(exc)
            except _RetryableHttp as exc:
                error, hint = exc.error, exc.hint
            time.sleep(self.retry.next_delay(error, attempt, hint))
        raise AssertionError("unreachable")

    def limits(self) -> Limits:
        """The server's limits (GetInfo or GET /info), cached; defaults where the server has none."""
        if self._limits is None:
            if self._stub is not None:
                stub = self._stub
                info = self._with_retries(
                    lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=self._metadata, timeout=self.timeout_s)
                )
                fields = {f.name: getattr(info, f.name) for f in info.DESCRIPTOR.fields}
            else:
                fields = self._http_info()
            self._limits = self._limits_from(fields)
        return self._limits

    def _http_info(self) -> dict[str, Any]:
        root = self.target.rstrip("/").removesuffix("/v1")
        try:
            response = self._http.get(f"{root}/info")
            if response.status_code == 200:
                return dict(response.json())
            response = self._http.get("/models")
            if response.status_code == 200:
                return {"model": response.json()["data"][0]["id"]}
        except Exception:  # an OpenAI-compatible server need not have either: use defaults
            pass
        return {}

    def _call(self, texts: Sequence[str], opts: EmbedOptions) -> Embedded:
        if self._stub is not None:
            stub, request = self._stub, self._grpc_request(texts, opts)
            response = self._with_retries(lambda: stub.Embed(request, metadata=self._metadata, timeout=self.timeout_s))
            return Embedded(_decode_grpc(response, opts.encoding), response.usage.prompt_tokens)
        body = self._http_body(texts, opts, self.model or self.limits().model)

        def post() -> Any:
            import httpx

            try:
                response = self._http.post("/embeddings", json=body)
            except httpx.TransportError as exc:
                raise _RetryableHttp(EmbedError("UNAVAILABLE", str(exc), True), None) from exc
            if response.status_code != 200:
                error = self._http_error(response.status_code, response.text)
                if error.retryable:
                    raise _RetryableHttp(error, _http_hint(response.headers))
                raise error
            return response.json()

        return self._http_decode(self._with_retries(post), opts)

    def embed(self, texts: Sequence[str], options: EmbedOptions | None = None, **kwargs: Any) -> Embedded:
        """Vectors for all `texts`, in order, chunked to the server's limits. Raises EmbedError."""
        opts = options or EmbedOptions(**kwargs)
        limits = self.limits()
        parts = [self._call(texts[a:b], opts) for a, b in chunks(texts, self._batch(limits))]
        if not parts:
            return Embedded(np.zeros((0, 0), dtype=np.float32), 0)
        return Embedded(np.concatenate([p.vectors for p in parts]), sum(p.prompt_tokens for p in parts))

    def embed_rows(self, texts: Sequence[str], options: EmbedOptions | None = None, **kwargs: Any) -> RowsEmbedded:
        """As `embed`, but a row the server refuses (INVALID_ARGUMENT / 4xx) becomes an error, not an
        exception: a refused request is bisected until the bad rows are alone."""
        opts = options or EmbedOptions(**kwargs)
        out = RowsEmbedded([None] * len(texts), {}, 0)

        def run(start: int, end: int) -> None:
            try:
                got = self._call(texts[start:end], opts)
            except EmbedError as exc:
                if exc.retryable:
                    raise
                if end - start == 1:
                    out.errors[start] = exc.message
                    return
                mid = (start + end) // 2
                run(start, mid)
                run(mid, end)
                return
            out.prompt_tokens += got.prompt_tokens
            for i, vector in enumerate(got.vectors):
                out.vectors[start + i] = vector

        for a, b in chunks(texts, self._batch(self.limits())):
            run(a, b)
        return out

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str = "",
        top_n: int = 0,
        return_documents: bool = False,
        truncate: str = "none",
        raw_scores: bool = False,
        model: str | None = None,
    ) -> Reranked:
        """`documents` scored against `query` by a served reranker, highest first (`top_n` of them, 0 = all).
        Lists over the server's limit are split into calls and merged. Raises EmbedError."""
        opts = _rerank_options(instruction, return_documents, truncate, raw_scores, model)
        ranges = chunks(documents, self._batch(self.limits()))
        parts = [self._rerank_call(self._rerank_request(query, documents[a:b], opts), a) for a, b in ranges]
        return self._rerank_merge(parts, top_n) if parts else Reranked([], 0)

    def _rerank_call(self, request: Any, offset: int) -> Reranked:
        if self._stub is not None:
            stub = self._stub
            response = self._with_retries(lambda: stub.Rerank(request, metadata=self._metadata, timeout=self.timeout_s))
        else:
            response = self._with_retries(lambda: self._http_post("/rerank", request))
        return self._rerank_decode(response, offset)

    def _http_post(self, path: str, body: Any) -> Any:
        import httpx

        try:
            response = self._http.post(path, json=body)
        except httpx.TransportError as exc:
            raise _RetryableHttp(EmbedError("UNAVAILABLE", str(exc), True), None) from exc
        return self._http_json(response)


class AsyncClient(_Base):
    """asyncio client (grpc.aio, httpx.AsyncClient); `async with` or `await close()`. `max_concurrency` bounds
    the requests this client has in flight, over all its calls."""

    def __init__(self, target: str, *, max_concurrency: int = 4, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self.max_concurrency = max_concurrency
        # One gate for the client, held only during a call (not during backoff), so that every caller
        # (concurrent embed calls, bisection) shares the bound.
        self._gate = asyncio.Semaphore(max_concurrency)
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.EmbeddingServiceStub | None = None
        self._http: Any = None
        self._limits_lock = asyncio.Lock()
        if self.api == "grpc":
            self._channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
            self._stub = pb_grpc.EmbeddingServiceStub(self._channel)
        else:
            httpx = _httpx()

            self._http = httpx.AsyncClient(base_url=target.rstrip("/"), headers=self._headers, timeout=self.timeout_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._http is not None:
            await self._http.aclose()

    async def _with_retries(self, call: Callable[[], Any]) -> Any:
        for attempt in range(self.retry.attempts):
            try:
                async with self._gate:
                    return await call()
            except grpc.aio.AioRpcError as exc:
                error, hint = _grpc_failure(exc)
            except _RetryableHttp as exc:
                error, hint = exc.error, exc.hint
            await asyncio.sleep(self.retry.next_delay(error, attempt, hint))
        raise AssertionError("unreachable")

    async def limits(self) -> Limits:
        async with self._limits_lock:
            if self._limits is None:
                if self._stub is not None:
                    stub = self._stub
                    info = await self._with_retries(
                        lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=self._metadata, timeout=self.timeout_s)
                    )
                    fields = {f.name: getattr(info, f.name) for f in info.DESCRIPTOR.fields}
                else:
                    fields = await self._http_info()
                self._limits = self._limits_from(fields)
            return self._limits

    async def _http_info(self) -> dict[str, Any]:
        root = self.target.rstrip("/").removesuffix("/v1")
        try:
            response = await self._http.get(f"{root}/info")
            if response.status_code == 200:
                return dict(response.json())
            response = await self._http.get("/models")
            if response.status_code == 200:
                return {"model": response.json()["data"][0]["id"]}
        except Exception:  # an OpenAI-compatible server need not have either: use defaults
            pass
        return {}

    async def _call(self, texts: Sequence[str], opts: EmbedOptions) -> Embedded:
        if self._stub is not None:
            stub, request = self._stub, self._grpc_request(texts, opts)
            response = await self._with_retries(
                lambda: stub.Embed(request, metadata=self._metadata, timeout=self.timeout_s)
            )
            return Embedded(_decode_grpc(response, opts.encoding), response.usage.prompt_tokens)
        body = self._http_body(texts, opts, self.model or (await self.limits()).model)

        async def post() -> Any:
            import httpx

            try:
                response = await self._http.post("/embeddings", json=body)
            except httpx.TransportError as exc:
                raise _RetryableHttp(EmbedError("UNAVAILABLE", str(exc), True), None) from exc
            if response.status_code != 200:
                error = self._http_error(response.status_code, response.text)
                if error.retryable:
                    raise _RetryableHttp(error, _http_hint(response.headers))
                raise error
            return response.json()

        return self._http_decode(await self._with_retries(post), opts)

    @staticmethod
    async def _gather(ranges: list[tuple[int, int]], work: Callable[[int, int], Any]) -> None:
        await asyncio.gather(*(work(a, b) for a, b in ranges))

    async def embed(self, texts: Sequence[str], options: EmbedOptions | None = None, **kwargs: Any) -> Embedded:
        opts = options or EmbedOptions(**kwargs)
        ranges = chunks(texts, self._batch(await self.limits()))
        parts: dict[int, Embedded] = {}

        async def work(a: int, b: int) -> None:
            parts[a] = await self._call(texts[a:b], opts)

        await self._gather(ranges, work)
        if not parts:
            return Embedded(np.zeros((0, 0), dtype=np.float32), 0)
        ordered = [parts[a] for a, _ in ranges]
        return Embedded(np.concatenate([p.vectors for p in ordered]), sum(p.prompt_tokens for p in ordered))

    async def embed_rows(
        self, texts: Sequence[str], options: EmbedOptions | None = None, **kwargs: Any
    ) -> RowsEmbedded:
        opts = options or EmbedOptions(**kwargs)
        out = RowsEmbedded([None] * len(texts), {}, 0)

        async def run(start: int, end: int) -> None:
            try:
                got = await self._call(texts[start:end], opts)
            except EmbedError as exc:
                if exc.retryable:
                    raise
                if end - start == 1:
                    out.errors[start] = exc.message
                    return
                mid = (start + end) // 2
                await run(start, mid)
                await run(mid, end)
                return
            out.prompt_tokens += got.prompt_tokens
            for i, vector in enumerate(got.vectors):
                out.vectors[start + i] = vector

        await self._gather(chunks(texts, self._batch(await self.limits())), run)
        return out

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str = "",
        top_n: int = 0,
        return_documents: bool = False,
        truncate: str = "none",
        raw_scores: bool = False,
        model: str | None = None,
    ) -> Reranked:
        """As Client.rerank; the calls of a long list run concurrently (within max_concurrency)."""
        opts = _rerank_options(instruction, return_documents, truncate, raw_scores, model)
        ranges = chunks(documents, self._batch(await self.limits()))
        parts: dict[int, Reranked] = {}

        async def work(a: int, b: int) -> None:
            request = self._rerank_request(query, documents[a:b], opts)
            if self._stub is not None:
                stub = self._stub
                response = await self._with_retries(
                    lambda: stub.Rerank(request, metadata=self._metadata, timeout=self.timeout_s)
                )
            else:
                response = await self._with_retries(lambda: self._http_post("/rerank", request))
            parts[a] = self._rerank_decode(response, a)

        await self._gather(ranges, work)
        return self._rerank_merge([parts[a] for a, _ in ranges], top_n) if parts else Reranked([], 0)

    async def _http_post(self, path: str, body: Any) -> Any:
        import httpx

        try:
            response = await self._http.post(path, json=body)
        except httpx.TransportError as exc:
            raise _RetryableHttp(EmbedError("UNAVAILABLE", str(exc), True), None) from exc
        return self._http_json(response)


def _rerank_options(
    instruction: str, return_documents: bool, truncate: str, raw_scores: bool, model: str | None
) -> dict[str, Any]:
    return {
        "instruction": instruction,
        "return_documents": return_documents,
        "truncate": truncate,
        "raw_scores": raw_scores,
        "model": model,
    }


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # not a dependency of the serving wheel
        raise ImportError("the HTTP API needs httpx: pip install httpx") from exc
    return httpx


class _RetryableHttp(Exception):
    def __init__(self, error: EmbedError, hint: float | None) -> None:
        super().__init__(str(error))
        self.error, self.hint = error, hint
