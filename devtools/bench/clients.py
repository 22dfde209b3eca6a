"""One request over gRPC (grpc.aio) or the OpenAI HTTP API (aiohttp), with the response checked.

A response counts as OK only if it carries exactly one vector per input, each of the expected size: a
load generator that counts malformed answers as throughput would flatter a broken server.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import grpc
import httpx
import orjson

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Outcome:
    status: str  # "OK", a gRPC status name, an HTTP status number, or "BAD_RESPONSE"/"TRANSPORT"
    tokens: int = 0  # as reported by the server (usage.prompt_tokens); 0 when it reports none
    detail: str = ""


def check_vectors(lengths: list[int], expected_count: int, expected_dim: int | None) -> str:
    """'' when the response is well-formed, else why not (pure, unit-tested)."""
    if len(lengths) != expected_count:
        return f"{len(lengths)} vectors for {expected_count} inputs"
    if expected_dim is not None and any(n != expected_dim for n in lengths):
        return f"vector sizes {sorted(set(lengths))}, expected {expected_dim}"
    if expected_dim is None and len(set(lengths)) > 1:
        return f"vectors of different sizes {sorted(set(lengths))}"
    if any(n == 0 for n in lengths):
        return "an empty vector"
    return ""


class Sender(Protocol):
    async def send(self, texts: list[str]) -> Outcome: ...

    async def close(self) -> None: ...


class GrpcSender:
    def __init__(
        self,
        target: str,
        dimensions: int | None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        prompt_name: str = "",
        encoding: str = "float",
        connections: int = 1,
    ) -> None:
        # One channel per connection, multiplexed, requests round-robin over them. One is how a single async
        # client talks to the facade; several (ghz's --connections) reach several facade workers, since the
        # kernel spreads connections, not requests, over the processes sharing the port.
        options = [
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", 256 << 20),
            # Without it, channels with equal arguments share one TCP connection.
            ("grpc.use_local_subchannel_pool", 1),
        ]
        self.channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, connections))]
        self.stubs = [pb_grpc.EmbeddingServiceStub(c) for c in self.channels]
        self.sent = 0
        self.dimensions = dimensions
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        self.timeout_s = timeout_s
        self.prompt_name = prompt_name
        self.encoding = pb.ENCODING_FLOAT16 if encoding == "float16" else pb.ENCODING_FLOAT

    async def send(self, texts: list[str]) -> Outcome:
        request = pb.EmbedRequest(inputs=texts, prompt_name=self.prompt_name, encoding=self.encoding)
        stub = self.stubs[self.sent % len(self.stubs)]
        self.sent += 1
        try:
            response = await stub.Embed(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            return Outcome(exc.code().name, detail=str(exc.details()))
        if self.encoding == pb.ENCODING_FLOAT16:
            lengths = [len(e.packed) // 2 for e in response.embeddings]
        else:
            lengths = [len(e.values) for e in response.embeddings]
        problem = check_vectors(lengths, len(texts), self.dimensions)
        if problem:
            return Outcome("BAD_RESPONSE", detail=problem)
        return Outcome("OK", tokens=response.usage.prompt_tokens)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def vector_length(item: Any) -> int:
    """Length of one OpenAI `data[i].embedding`: a float list, or base64 of little-endian float32."""
    emb = item.get("embedding") if isinstance(item, dict) else None
    if isinstance(emb, list):
        return len(emb)
    if isinstance(emb, str):
        return len(base64.b64decode(emb)) // 4
    return 0


class HttpSender:
    """aiohttp with a keep-alive pool: its C parser costs the shared CPU about a third of what httpx did per
    request (docs/benchmarks.md), so the load generator takes less from the server it measures."""

    def __init__(
        self,
        base_url: str,
        model: str,
        dimensions: int | None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        path: str = "/v1/embeddings",
        encoding_format: str = "float",
        connections: int = 256,
    ) -> None:
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.url = base_url.rstrip("/") + path
        self.connections = connections
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.model = model
        self.dimensions = dimensions
        self.encoding_format = encoding_format

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the event loop that runs the requests.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def send(self, texts: list[str]) -> Outcome:
        body = orjson.dumps({"input": texts, "model": self.model, "encoding_format": self.encoding_format})
        try:
            async with self.session.post(self.url, data=body, headers=self.headers) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Outcome("TRANSPORT", detail=f"{type(exc).__name__}: {exc}")
        if status != 200:
            return Outcome(str(status), detail=raw[:200].decode(errors="replace"))
        try:
            payload = orjson.loads(raw)
            data = sorted(payload["data"], key=lambda d: d.get("index", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return Outcome("BAD_RESPONSE", detail=f"unparseable body: {exc}")
        problem = check_vectors([vector_length(d) for d in data], len(texts), self.dimensions)
        if problem:
            return Outcome("BAD_RESPONSE", detail=problem)
        usage = payload.get("usage") or {}
        return Outcome("OK", tokens=int(usage.get("prompt_tokens") or 0))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def grpc_info(target: str, api_key: str | None = None) -> dict[str, Any]:
    """Model name and vector size from GetInfo, so every response can be checked."""
    async with grpc.aio.insecure_channel(target) as channel:
        metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        info = await pb_grpc.EmbeddingServiceStub(channel).GetInfo(
            pb.GetInfoRequest(), timeout=10, metadata=metadata
        )
        return {"model": info.model, "dimensions": info.dimensions}


async def http_info(base_url: str, api_key: str | None = None) -> dict[str, Any]:
    """The facade's /info if there is one; a peer has only /v1/models (any consistent vector size passes)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as client:
        response = await client.get("/info")
        if response.status_code == 200 and "dimensions" in response.json():
            body = response.json()
            return {"model": body["model"], "dimensions": int(body["dimensions"])}
        for path in ("/v1/models", "/models"):
            response = await client.get(path)
            if response.status_code == 200:
                return {"model": response.json()["data"][0]["id"], "dimensions": None}
    raise RuntimeError(f"{base_url} answers neither /info nor /v1/models")


SendFn = Callable[[list[str]], Awaitable[Outcome]]
