"""`qwen3-embed embed` and `qwen3-embed rerank`: small gRPC clients for people (the library is
service.client.Client)."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc


def call(target: str, api_key: str | None, method: str, request: Any) -> tuple[Any, float]:
    """One unary call of EmbeddingService by name: (response, latency in ms); a failure exits with its status."""
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
    with grpc.insecure_channel(target) as channel:
        rpc = getattr(pb_grpc.EmbeddingServiceStub(channel), method)
        start = time.perf_counter()
        try:
            response = rpc(request, metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            raise SystemExit(f"{exc.code().name}: {exc.details()}") from None
        return response, (time.perf_counter() - start) * 1000


def print_json(response: Any) -> None:
    print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))


def embed_cli(
    texts: list[str],
    instruction: str,
    prompt_name: str,
    dimensions: int,
    target: str,
    api_key: str | None,
    as_json: bool,
) -> None:
    request = pb.EmbedRequest(inputs=texts, instruction=instruction, prompt_name=prompt_name, dimensions=dimensions)
    response, latency_ms = call(target, api_key, "Embed", request)
    if as_json:
        print_json(response)
        return
    print(f"model {response.model}, {response.usage.prompt_tokens} tokens, {latency_ms:.1f} ms")
    for text, emb in zip(texts, response.embeddings, strict=True):
        values = np.asarray(emb.values, dtype=np.float32)
        head = ", ".join(f"{v:+.4f}" for v in values[:4])
        print(f"[{emb.index}] dim {values.size}, norm {np.linalg.norm(values):.4f}, [{head}, ...]  {text[:60]!r}")


def rerank_cli(
    query: str,
    documents: list[str],
    instruction: str,
    top_n: int,
    truncate: bool,
    raw_scores: bool,
    model: str,
    target: str,
    api_key: str | None,
    as_json: bool,
) -> None:
    """`qwen3-embed rerank`: the documents by score against the query, best first."""
    request = pb.RerankRequest(
        query=query,
        documents=documents,
        instruction=instruction,
        top_n=top_n,
        truncate=pb.TRUNCATE_END if truncate else pb.TRUNCATE_NONE,
        raw_scores=raw_scores,
        model=model,
    )
    response, latency_ms = call(target, api_key, "Rerank", request)
    if as_json:
        print_json(response)
        return
    print(f"model {response.model}, {response.usage.prompt_tokens} tokens, {latency_ms:.1f} ms")
    for rank, result in enumerate(response.results, start=1):
        print(f"{rank:>3}. [{result.index}] {result.score:.4f}  {documents[result.index][:60]!r}")
