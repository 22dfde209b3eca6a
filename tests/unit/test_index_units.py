"""The client's chunking and retries (against a fault-injecting gRPC stub and a mocked HTTP server), corpus
reading, and the eval metrics on a hand-checked case. No Triton needed."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from indexing.corpus import read_beir, read_corpus
from indexing.evaluate import metrics, parse_system, reduce
from service.client import AsyncClient, Client, EmbedError, EmbedOptions, RetryPolicy, chunks, quantize
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.triton.runtime import free_port


def vector_for(text: str, dims: int = 8) -> list[float]:
    rng = np.random.default_rng(abs(hash(text)) % (1 << 32))
    v = rng.standard_normal(dims)
    return list(v / np.linalg.norm(v))


class FaultyService(pb_grpc.EmbeddingServiceServicer):
    """Refuses the first `overloads` Embed calls (RESOURCE_EXHAUSTED with a retry hint) and any request holding
    a text that starts with "bad" (INVALID_ARGUMENT, as the service does for a too-long input)."""

    def __init__(self, overloads: int, hint_ms: int) -> None:
        self.overloads, self.hint_ms, self.calls, self.batches = overloads, hint_ms, 0, []

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        return pb.GetInfoResponse(model="stub", dimensions=8, max_batch_inputs=4)

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        self.calls += 1
        if self.calls <= self.overloads:
            context.set_trailing_metadata((("retry-after-ms", str(self.hint_ms)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
        for i, text in enumerate(request.inputs):
            if text.startswith("bad"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input {i} is too long")
        self.batches.append(len(request.inputs))
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(index=i, values=vector_for(t)) for i, t in enumerate(request.inputs)],
            usage=pb.Usage(prompt_tokens=len(request.inputs)),
        )


@pytest.fixture
def stub_server() -> Iterator[tuple[str, FaultyService]]:
    service = FaultyService(overloads=3, hint_ms=60)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_EmbeddingServiceServicer_to_server(service, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield f"127.0.0.1:{port}", service
    server.stop(None)


TEXTS = [f"text {i}" for i in range(10)]


def test_client_retries_overload_honouring_the_hint(stub_server: tuple[str, FaultyService]) -> None:
    target, service = stub_server
    retry = RetryPolicy(attempts=5, base_s=0.001)
    with Client(target, retry=retry) as client:
        started = time.monotonic()
        got = client.embed(TEXTS)
        elapsed = time.monotonic() - started
    assert retry.retries == 3 and elapsed >= 3 * 0.06  # three refusals, each waited at least the hint
    assert service.batches == [4, 4, 2]  # chunked to GetInfo's max_batch_inputs
    np.testing.assert_allclose(got.vectors, np.array([vector_for(t) for t in TEXTS]), rtol=1e-6)
    assert got.prompt_tokens == 10


def test_client_gives_up_after_its_attempts(stub_server: tuple[str, FaultyService]) -> None:
    target, _ = stub_server
    with Client(target, retry=RetryPolicy(attempts=2, base_s=0.001)) as client, pytest.raises(EmbedError) as exc:
        client.embed(TEXTS)
    assert exc.value.code == "RESOURCE_EXHAUSTED" and exc.value.retryable


def test_embed_rows_isolates_bad_rows(stub_server: tuple[str, FaultyService]) -> None:
    target, service = stub_server
    service.overloads = 0
    texts = ["a", "bad one", "c", "d", "e", "bad two", "g"]
    with Client(target) as client:
        with pytest.raises(EmbedError) as exc:
            client.embed(texts)
        assert exc.value.code == "INVALID_ARGUMENT" and not exc.value.retryable
        rows = client.embed_rows(texts)
    assert rows.errors == {1: "input 0 is too long", 5: "input 0 is too long"}
    assert [v is None for v in rows.vectors] == [False, True, False, False, False, True, False]
    np.testing.assert_allclose(rows.vectors[6], vector_for("g"), rtol=1e-6)


def test_async_client_retries_and_bisects(stub_server: tuple[str, FaultyService]) -> None:
    target, _ = stub_server
    texts = [*TEXTS, "bad"]

    async def go() -> tuple[int, dict[int, str]]:
        retry = RetryPolicy(attempts=6, base_s=0.001)
        async with AsyncClient(target, retry=retry, max_concurrency=2) as client:
            rows = await client.embed_rows(texts)
        assert all(v is not None for v in rows.vectors[:10])
        return retry.retries, rows.errors

    retries, errors = asyncio.run(go())
    assert retries == 3 and errors == {10: "input 0 is too long"}


def test_http_client_retries_429_with_retry_after() -> None:
    calls: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/info"):
            return httpx.Response(200, json={"model": "m", "max_batch_inputs": 3})
        body = json.loads(request.content)
        calls.append(body)
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": "0.05"}, json={"error": {"message": "busy"}})
        data = [{"index": i, "embedding": vector_for(t)} for i, t in enumerate(body["input"])]
        return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 1}})

    retry = RetryPolicy(base_s=0.001)
    client = Client("http://test/v1", api="http", retry=retry)
    client._http = httpx.Client(base_url="http://test/v1", transport=httpx.MockTransport(handler))
    got = client.embed(TEXTS[:5], dimensions=8, prompt_name="query")
    assert retry.retries == 1 and [len(c["input"]) for c in calls] == [3, 3, 2]  # type: ignore[arg-type]
    assert calls[0]["model"] == "m" and calls[0]["dimensions"] == 8 and calls[0]["prompt_name"] == "query"
    assert "truncate" not in calls[0]  # nothing beyond OpenAI's API unless asked
    np.testing.assert_allclose(got.vectors[4], vector_for("text 4"), rtol=1e-6)


def test_chunks_bound_inputs_and_characters() -> None:
    assert chunks(["a"] * 5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunks(["aaaa", "bb", "cc", "dddddd"], 10, max_chars=5) == [(0, 1), (1, 3), (3, 4)]
    assert chunks([], 3) == []


def test_quantize_matches_the_server_encodings() -> None:
    v = np.array([[0.5, -0.1, 0.0, 2.0, -3.0, 1.0, 1.0, -1.0, 0.2]], dtype=np.float32)
    assert quantize(v, "ubinary").tolist() == [[0b10010110, 0b10000000]]
    assert quantize(v, "binary").tolist() == [[0b10010110 - 128, 0]]
    assert quantize(v, "float16").dtype == np.float16


def test_read_corpus_formats(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"doc": 7, "body": "seven"}, {"doc": 8, "body": None}, {"doc": 9, "body": "nine, with comma"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.csv").write_text('doc,body\n007,seven\n8,\n9,"nine, with comma"\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert read_corpus(tmp_path / "c.jsonl", "doc", "body") == (["7", "8", "9"], ["seven", None, "nine, with comma"])
    ids, texts = read_corpus(tmp_path / "c.csv", "doc", "body")
    assert ids == ["007", "8", "9"] and texts[0] == "seven" and texts[2] == "nine, with comma"
    assert read_corpus(tmp_path / "c.parquet", "doc", "body")[1] == ["seven", None, "nine, with comma"]
    with pytest.raises(ValueError, match="no field"):
        read_corpus(tmp_path / "c.jsonl", "id", "body")


def test_metrics_match_a_hand_checked_case() -> None:
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 1}}
    run = {"q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6}, "q2": {"d1": 0.9, "d3": 0.5}}
    got = metrics(qrels, run, [1, 10])
    # q1: relevant at ranks 2 and 4; q2: relevant at rank 2.
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    ndcg_q2 = 1 / math.log2(3)
    assert got["nDCG@10"] == pytest.approx((ndcg_q1 + ndcg_q2) / 2, abs=1e-4)
    assert got["MRR"] == pytest.approx(0.5)
    assert got["R@1"] == pytest.approx(0.0) and got["R@10"] == pytest.approx(1.0)


def test_parse_system() -> None:
    s = parse_system("qwen=grpc://127.0.0.1:50051?dims=64,0,32&precisions=float32,binary")
    assert (s.api, s.target, s.dims, s.precisions) == ("grpc", "127.0.0.1:50051", [0, 32, 64], ["float32", "binary"])
    assert (s.query_prompt, s.doc_prompt) == ("query", "document")
    o = parse_system("openai=https://api.example.com/v1?model=text-embedding-3-small")
    assert (o.api, o.target, o.model, o.query_prompt, o.doc_prompt) == (
        "http", "https://api.example.com/v1", "text-embedding-3-small", "", ""
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown parameter"):
        parse_system("x=grpc://h:1?dimz=3")


def test_binary_precision_ranks_by_hamming() -> None:
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((1, 64)), rng.standard_normal((50, 64))
    scores = (reduce(q, 0, "binary") @ reduce(d, 0, "binary").T)[0]
    qb, db = quantize(q, "ubinary"), quantize(d, "ubinary")
    hamming = np.unpackbits(qb ^ db, axis=1).sum(axis=1).astype(np.int64)
    np.testing.assert_array_equal(scores, 64 - 2 * hamming)


def test_read_beir(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "body"}\n{"_id": "d2", "text": "x"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "q"}\n{"_id": "q2", "text": "unjudged"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    data = read_beir(tmp_path)
    assert data.corpus == {"d1": "T body", "d2": "x"} and data.queries == {"q1": "q"}
    assert data.qrels == {"q1": {"d1": 1}}
    assert EmbedOptions().encoding == "float"
