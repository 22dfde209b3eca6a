"""Priority classes end to end (real facade, the session's real Triton, dev model): a flood of bulk requests
neither fails interactive requests nor holds them beyond a wide bound, a bulk-pinned key's requests are bulk,
`qwen3-embed index` sends bulk, the class never changes a vector (compared with the reference), and a bad
class is a clear error. The per-class metrics are the witness of which class a request ran as."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from indexing.index import IndexConfig, run_index
from service.client import EmbedOptions
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from service.triton.runtime import TritonProcess
from tests.helpers import Facade, cosine, run_facade, vectors

SEARCH, BACKFILL = "sk-search-1", "sk-backfill-1"
MAX_IN_FLIGHT = 8
QUERIES = ["what is the capital of france", "how do magnets work", "best pasta recipe"]
# Wide: the CPUs are shared with other work; a refused or starved interactive request fails it by far.
INTERACTIVE_BOUND_S = 10.0


@pytest.fixture(scope="module")
def facade(model_repository: Path, triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facade]:
    """A facade with two keys, one pinned to bulk, and a small admission capacity that a flood fills."""
    tmp = tmp_path_factory.mktemp("priority")
    keys = tmp / "keys"
    keys.write_text(f"{SEARCH}\n{BACKFILL} priority=bulk\n")
    env = {"QWEN3_EMBED_API_KEYS_FILE": str(keys), "QWEN3_EMBED_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}
    with run_facade(model_repository, triton.grpc_url, tmp, env=env) as running:
        yield running


def model_name(facade: Facade) -> str:
    response = httpx.get(f"{facade.base_url}/v1/models", headers={"authorization": f"Bearer {SEARCH}"}, timeout=10)
    return str(response.json()["data"][0]["id"])


def auth(key: str = SEARCH) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def classes(facade: Facade, name: str = "qwen3_embed_priority_requests_total") -> dict[str, float]:
    text = httpx.get(f"{facade.base_url}/metrics", headers={"authorization": f"Bearer {SEARCH}"}, timeout=10).text
    found = re.findall(rf'^{name}\{{priority="(\w+)"\}} (\S+)$', text, flags=re.M)
    return {cls: float(value) for cls, value in found}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("interactive", "bulk")}


def test_the_class_never_changes_a_vector(facade: Facade, reference: SentenceTransformer) -> None:
    ref = reference.encode(QUERIES, prompt_name="query")
    before = classes(facade)
    with grpc.insecure_channel(facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        results = {}
        for name, value in (("interactive", pb.PRIORITY_INTERACTIVE), ("bulk", pb.PRIORITY_BULK)):
            request = pb.EmbedRequest(inputs=QUERIES, prompt_name="query", priority=value)
            results[name] = vectors(stub.Embed(request, metadata=auth(), timeout=60))
    http = {}
    for name, extra in (("header", {"x-priority": "bulk"}), ("vllm", {})):
        body = {"model": model_name(facade), "input": QUERIES, "prompt_name": "query"}
        if name == "vllm":
            body["priority"] = 5  # vLLM's integer: > 0 is bulk
        response = httpx.post(
            f"{facade.base_url}/v1/embeddings",
            json=body,
            headers={"authorization": f"Bearer {SEARCH}", **extra},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-priority"] == "bulk"
        http[name] = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    for got in (*results.values(), *http.values()):
        for a, b in zip(got, ref, strict=True):
            assert cosine(a, b) >= 0.99999
    assert delta(classes(facade), before) == {"interactive": 1, "bulk": 3}


def test_a_bulk_pinned_key_runs_bulk_whatever_it_asks(facade: Facade) -> None:
    before = classes(facade)
    with grpc.insecure_channel(facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        request = pb.EmbedRequest(inputs=["pinned"], priority=pb.PRIORITY_INTERACTIVE)
        assert len(stub.Embed(request, metadata=auth(BACKFILL), timeout=60).embeddings) == 1
        metadata = (*auth(BACKFILL), ("x-priority", "interactive"))
        assert len(stub.Embed(pb.EmbedRequest(inputs=["pinned"]), metadata=metadata, timeout=60).embeddings) == 1
    response = httpx.post(
        f"{facade.base_url}/v1/embeddings",
        json={"model": model_name(facade), "input": "pinned", "priority": -10},
        headers={"authorization": f"Bearer {BACKFILL}", "x-priority": "interactive"},
        timeout=60,
    )
    assert response.status_code == 200 and response.headers["x-priority"] == "bulk"
    assert delta(classes(facade), before) == {"interactive": 0, "bulk": 3}


def test_rerank_takes_a_class_too(facade: Facade) -> None:
    before = classes(facade)
    with grpc.insecure_channel(facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        request = pb.RerankRequest(query="q", documents=["a", "b"], priority=pb.PRIORITY_BULK)
        assert len(stub.Rerank(request, metadata=auth(), timeout=60).results) == 2
    response = httpx.post(
        f"{facade.base_url}/v1/rerank",
        json={"query": "q", "documents": ["a", "b"]},
        headers={"authorization": f"Bearer {SEARCH}", "x-priority": "BULK"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-priority"] == "bulk"
    assert delta(classes(facade), before) == {"interactive": 0, "bulk": 2}


def test_a_bad_class_is_a_clear_error(facade: Facade) -> None:
    with grpc.insecure_channel(facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(inputs=["x"], priority=7), metadata=auth(), timeout=30)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in str(err.value.details())
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(inputs=["x"]), metadata=(*auth(), ("x-priority", "urgent")), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for extra, body in (({"x-priority": "urgent"}, {}), ({}, {"priority": 2**64}), ({}, {"priority": "high"})):
        response = httpx.post(
            f"{facade.base_url}/v1/embeddings",
            json={"model": model_name(facade), "input": "x", **body},
            headers={"authorization": f"Bearer {SEARCH}", **extra},
            timeout=30,
        )
        assert response.status_code == 400, (extra, body, response.text)
        assert response.json()["error"]["param"] in ("x-priority", "priority")


def test_index_sends_bulk(facade: Facade, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(f'{{"id": "d{i}", "text": "document number {i}"}}\n' for i in range(300)))
    before, calls_before = classes(facade), classes(facade, "qwen3_embed_priority_triton_calls_total")
    cfg = IndexConfig(
        input=corpus,
        output=tmp_path / "out.parquet",
        target=facade.target,
        api_key=SEARCH,  # not pinned: bulk because the tool asks for it
        options=EmbedOptions(prompt_name="document"),
        batch_size=50,
        progress=False,
    )
    summary = asyncio.run(run_index(cfg))
    assert summary.written == 300
    moved = delta(classes(facade), before)
    assert moved["interactive"] == 0 and moved["bulk"] >= 300 / 50
    calls = delta(classes(facade, "qwen3_embed_priority_triton_calls_total"), calls_before)
    assert calls["interactive"] == 0 and calls["bulk"] >= 1


def test_a_bulk_flood_does_not_fail_or_starve_interactive_requests(facade: Facade) -> None:
    """Three times more bulk senders than the admission capacity, each sending full batches back to back,
    while interactive queries go out one at a time: every interactive query succeeds (none refused: bulk never
    takes the reserve) within the wide bound, and every bulk request succeeds too (it waits instead of being
    refused)."""
    texts = [f"bulk passage {i} about the history of a small town and its river" for i in range(64)]
    senders = 3 * MAX_IN_FLIGHT

    async def scenario() -> tuple[list[float], int, list[str]]:
        async with grpc.aio.insecure_channel(facade.target) as channel:
            stub = pb_grpc.EmbeddingServiceStub(channel)
            failures: list[str] = []
            done = 0
            stop = asyncio.Event()

            async def bulk() -> None:
                nonlocal done
                request = pb.EmbedRequest(inputs=texts, priority=pb.PRIORITY_BULK)
                while not stop.is_set():
                    try:
                        reply = await stub.Embed(request, metadata=auth(), timeout=120)
                        done += len(reply.embeddings) == len(texts)
                    except grpc.aio.AioRpcError as exc:
                        failures.append(f"bulk {exc.code().name}")

            flood = [asyncio.create_task(bulk()) for _ in range(senders)]
            await asyncio.sleep(1.0)  # the flood holds every bulk slot, the rest of it waits
            latencies = []
            for i in range(15):
                started = time.perf_counter()
                try:
                    request = pb.EmbedRequest(inputs=[f"query {i}"], prompt_name="query")
                    reply = await stub.Embed(request, metadata=auth(), timeout=60)
                    assert len(reply.embeddings) == 1
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"interactive {exc.code().name}")
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*flood)
            return latencies, done, failures

    before = classes(facade, "qwen3_embed_admission_wait_seconds_count")
    latencies, done, failures = asyncio.run(scenario())
    print(
        f"\ninteractive under a bulk flood: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms; {done} bulk requests done"
    )
    assert failures == []
    assert max(latencies) < INTERACTIVE_BOUND_S
    assert done > senders  # the flood went on through the interactive queries
    waited = delta(classes(facade, "qwen3_embed_admission_wait_seconds_count"), before)
    assert waited == {"interactive": 15, "bulk": done}


def trailing(call: grpc.Call) -> dict[str, str]:
    return {k: v for k, v in call.trailing_metadata() or () if isinstance(v, str)}


def test_tokenize_takes_a_class_and_a_pin_wins(facade: Facade) -> None:
    """Tokenize is admitted like Embed, so it is classed like Embed: its `priority` field (7), else the
    `x-priority` metadata; a bulk-pinned key's call is bulk whatever it asks; the class applied comes back
    in the `x-priority` trailing metadata (as it does for Embed and Rerank)."""
    before = classes(facade)
    with grpc.insecure_channel(facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        asked = pb.TokenizeRequest(inputs=["a b c"], priority=pb.PRIORITY_INTERACTIVE)
        reply, call = stub.Tokenize.with_call(asked, metadata=auth(BACKFILL), timeout=60)
        assert reply.inputs[0].count > 0 and trailing(call)["x-priority"] == "bulk"
        metadata = (*auth(BACKFILL), ("x-priority", "interactive"))
        _, call = stub.Tokenize.with_call(pb.TokenizeRequest(inputs=["a"]), metadata=metadata, timeout=60)
        assert trailing(call)["x-priority"] == "bulk"
        # An unpinned key gets what it asks for: the field, else the metadata, else interactive.
        by_field = pb.TokenizeRequest(inputs=["a"], priority=pb.PRIORITY_BULK)
        _, call = stub.Tokenize.with_call(by_field, metadata=auth(), timeout=60)
        assert trailing(call)["x-priority"] == "bulk"
        _, call = stub.Tokenize.with_call(pb.TokenizeRequest(inputs=["a"]), metadata=auth(), timeout=60)
        assert trailing(call)["x-priority"] == "interactive"
        # Embed and Rerank echo it too.
        _, call = stub.Embed.with_call(pb.EmbedRequest(inputs=["a"]), metadata=auth(BACKFILL), timeout=60)
        assert trailing(call)["x-priority"] == "bulk" and "x-request-id" in trailing(call)
        _, call = stub.Rerank.with_call(pb.RerankRequest(query="q", documents=["d"]), metadata=auth(), timeout=60)
        assert trailing(call)["x-priority"] == "interactive"
    # The per-class admission counter is the witness of the class the calls were admitted as.
    assert delta(classes(facade), before) == {"interactive": 2, "bulk": 4}


def test_a_bad_tokenize_class_is_invalid_argument_naming_the_choices(facade: Facade) -> None:
    with grpc.insecure_channel(facade.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Tokenize(pb.TokenizeRequest(inputs=["x"]), metadata=(*auth(), ("x-priority", "urgent")), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'urgent'" in str(err.value.details()) and "['interactive', 'bulk']" in str(err.value.details())
        bad = pb.TokenizeRequest(inputs=["x"], priority=5)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as err:
            stub.Tokenize(bad, metadata=auth(), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "PRIORITY_INTERACTIVE (1), PRIORITY_BULK (2)" in str(err.value.details())


def test_every_admitted_http_route_takes_the_class(facade: Facade) -> None:
    """Every HTTP route that is admitted honours `X-Priority` and the key's pin, counts the request in that
    class and echoes it: /tokenize (TEI's and vLLM's shapes), /decode, /detokenize, and the peers' embedding routes
    (Cohere, TEI, Infinity), as /v1/embeddings does: a bulk-pinned key cannot run interactive through any of them.
    An unknown class is refused in each route family's own error shape."""
    name = model_name(facade)
    calls = [
        ("/tokenize", {"inputs": "a b"}),
        ("/tokenize", {"prompt": "a b"}),
        ("/decode", {"ids": [1, 2]}),
        ("/detokenize", {"tokens": [1, 2]}),
        ("/embed", {"inputs": "a b"}),
        ("/", {"inputs": "a b"}),
        ("/invocations", {"inputs": "a b"}),
        ("/similarity", {"inputs": {"source_sentence": "a b", "sentences": ["c"]}}),
        ("/v1/embed", {"texts": ["a b"], "input_type": "search_query"}),
        ("/v1/embed", {"model": name, "texts": ["a b"]}),
        ("/v2/embed", {"model": name, "texts": ["a b"], "input_type": "search_query"}),
        ("/embeddings", {"model": name, "input": "a b"}),
    ]
    for path, body in calls:
        for key, header, applied in (
            (SEARCH, "bulk", "bulk"),
            (BACKFILL, "interactive", "bulk"),
            (SEARCH, None, "interactive"),
        ):
            before = classes(facade)
            headers = {"authorization": f"Bearer {key}", **({"x-priority": header} if header else {})}
            response = httpx.post(f"{facade.base_url}{path}", json=body, headers=headers, timeout=60)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["x-priority"] == applied, (path, key, header)
            other = "interactive" if applied == "bulk" else "bulk"
            assert delta(classes(facade), before) == {applied: 1, other: 0}, (path, key, header)
    for path, body in calls:
        response = httpx.post(
            f"{facade.base_url}{path}",
            json=body,
            headers={"authorization": f"Bearer {SEARCH}", "x-priority": "urgent"},
            timeout=30,
        )
        # Each route family in its own shape and status (TEI answers a validation error with 413).
        assert response.status_code in (400, 413, 422), (path, response.text)
        assert "priority" in response.text and "interactive" in response.text, (path, response.text)
