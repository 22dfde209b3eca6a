"""Rerank end to end: the real facade and Triton serving the dev reranker beside the dev embedding model, over
gRPC, Cohere/Jina `/v1/rerank` and TEI `/rerank`, against the official usage computed here with transformers
(AutoModelForCausalLM: prefix + body + suffix ids, logits at the last position, sigmoid(yes - no))."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from service.client import Client
from service.contract import RERANK_PREFIX, RERANK_SUFFIX, rerank_body
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.gen.embedding.v1 import embedding_pb2_grpc as pb_grpc
from tests.doc_pages import CLIENTS, code_blocks, section, shell_lines
from tests.helpers import Facade, cosine

TOLERANCE = 1e-5
CODE_INSTRUCTION = "Given a question, retrieve code snippets that answer it"
CASES: list[tuple[str, str, list[str]]] = [
    (
        "",
        "What is the capital of China?",
        [
            "The capital of China is Beijing.",
            "Gravity is a force that attracts two bodies towards each other. " * 12,
            "Beijing",
            "Paris is the capital of France, and Beijing is the capital of China; both are large cities. " * 3,
        ],
    ),
    (
        "",
        "如何学习编程？",
        ["多写代码，多读代码。", "今天天气很好。", "学习编程需要耐心：先学基础语法，再做项目。" * 8, "Learn by doing."],
    ),
    (
        CODE_INSTRUCTION,
        "how to sort a list in python",
        [
            "sorted(xs) returns a new list; xs.sort() sorts in place.",
            "def add(a, b):\n    return a + b\n",
            "```python\nxs = [3, 1, 2]\nxs.sort()\nprint(xs)  # [1, 2, 3]\n```\n" * 6,
            "x",
        ],
    ),
]


class Reference:
    """Qwen3-Reranker's official usage on the dev checkpoint, one sequence at a time (no padding)."""

    def __init__(self, directory: Path, max_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
        self.no_id = self.tokenizer.convert_tokens_to_ids("no")
        self.yes_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.max_tokens = max_tokens
        self.prefix = self.tokenizer.encode(RERANK_PREFIX, add_special_tokens=False)
        self.suffix = self.tokenizer.encode(RERANK_SUFFIX, add_special_tokens=False)

    def ids(self, instruction: str, query: str, document: str) -> list[int]:
        body_limit = self.max_tokens - len(self.prefix) - len(self.suffix)
        body = self.tokenizer(
            [rerank_body(instruction, query, document)],
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=body_limit,
        )["input_ids"][0]
        return [*self.prefix, *body, *self.suffix]

    def untruncated_length(self, instruction: str, query: str, document: str) -> int:
        body = self.tokenizer.encode(rerank_body(instruction, query, document), add_special_tokens=False)
        return len(self.prefix) + len(body) + len(self.suffix)

    def raw(self, instruction: str, query: str, documents: list[str]) -> np.ndarray:
        out = []
        with self.torch.no_grad():
            for document in documents:
                ids = self.torch.tensor([self.ids(instruction, query, document)])
                logits = self.model(input_ids=ids).logits[0, -1]
                pair = self.torch.stack([logits[self.no_id], logits[self.yes_id]]).double()
                out.append(float(pair[1] - pair[0]))
        return np.array(out)

    def scores(self, instruction: str, query: str, documents: list[str]) -> np.ndarray:
        """log_softmax over (no, yes), exp of yes: sigmoid(yes - no)."""
        return 1.0 / (1.0 + np.exp(-self.raw(instruction, query, documents)))


@pytest.fixture(scope="module")
def channel(facade: Facade):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(facade.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(facade: Facade, channel: grpc.Channel) -> pb_grpc.EmbeddingServiceStub:
    return facade.stub(channel)


@pytest.fixture(scope="module")
def described(stub: pb_grpc.EmbeddingServiceStub) -> dict[int, Any]:
    """The default model of each kind, as GetInfo describes it."""
    models = stub.GetInfo(pb.GetInfoRequest(), timeout=30).models
    found = {m.kind: m for m in models if m.is_default}
    assert pb.MODEL_KIND_RERANKER in found, f"no reranker served: {[m.name for m in models]}"
    return found


@pytest.fixture(scope="module")
def reranker_name(described: dict[int, Any]) -> str:
    return str(described[pb.MODEL_KIND_RERANKER].name)


@pytest.fixture(scope="module")
def embedding_name(described: dict[int, Any]) -> str:
    return str(described[pb.MODEL_KIND_EMBEDDING].name)


@pytest.fixture(scope="module")
def reference_reranker(dev_reranker_dir: Path, described: dict[int, Any]) -> Reference:
    return Reference(dev_reranker_dir, int(described[pb.MODEL_KIND_RERANKER].max_input_tokens))


def rerank(stub: pb_grpc.EmbeddingServiceStub, query: str, documents: list[str], **kwargs: Any) -> pb.RerankResponse:
    return stub.Rerank(pb.RerankRequest(query=query, documents=documents, **kwargs), timeout=60)


def by_index(response: pb.RerankResponse) -> np.ndarray:
    scores = np.full(len(response.results), np.nan)
    for r in response.results:
        scores[r.index] = r.score
    return scores


def assert_sorted_by_score(indices: list[int], scores: list[float]) -> None:
    assert all(a >= b for a, b in pairwise(scores))
    assert len(set(indices)) == len(indices)


# -- gRPC --


@pytest.mark.parametrize("case", range(len(CASES)))
def test_grpc_scores_equal_the_official_usage(
    stub: pb_grpc.EmbeddingServiceStub, reference_reranker: Reference, reranker_name: str, case: int
) -> None:
    instruction, query, documents = CASES[case]
    response = rerank(stub, query, documents, instruction=instruction, return_documents=True, request_id=f"r{case}")
    expected = reference_reranker.scores(instruction, query, documents)
    assert response.model == reranker_name and response.request_id == f"r{case}"
    assert len(response.results) == len(documents)
    np.testing.assert_allclose(by_index(response), expected, rtol=0, atol=TOLERANCE)
    assert [r.index for r in response.results] == sorted(range(len(documents)), key=lambda i: -expected[i])
    assert_sorted_by_score([r.index for r in response.results], [r.score for r in response.results])
    assert all(r.document == documents[r.index] for r in response.results)
    lengths = [len(reference_reranker.ids(instruction, query, d)) for d in documents]
    assert max(lengths) - min(lengths) > 100  # documents of very different lengths in one request
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(lengths)
    assert response.timings.total_ms > 0
    # The default instruction is the official one: sending it gives the same scores.
    if not instruction:
        again = rerank(stub, query, documents, instruction="Given a web search query, retrieve relevant passages "
                       "that answer the query")  # fmt: skip
        np.testing.assert_allclose(by_index(again), by_index(response), rtol=0, atol=1e-6)


def test_grpc_top_n_raw_scores_and_model_choice(
    stub: pb_grpc.EmbeddingServiceStub, reference_reranker: Reference, reranker_name: str, embedding_name: str
) -> None:
    instruction, query, documents = CASES[0]
    full = rerank(stub, query, documents)
    top = rerank(stub, query, documents, top_n=2, model=reranker_name)
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]
    assert all(not r.document for r in top.results)
    assert len(rerank(stub, query, documents, top_n=99).results) == len(documents)
    raw = rerank(stub, query, documents, raw_scores=True)
    np.testing.assert_allclose(by_index(raw), reference_reranker.raw(instruction, query, documents), atol=1e-4)
    assert [r.index for r in raw.results] == [r.index for r in full.results]
    for model, code in (
        ("no-such-model", grpc.StatusCode.NOT_FOUND),
        (embedding_name, grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            rerank(stub, query, documents, model=model)
        assert err.value.code() == code, err.value.details()
    # And the reranker is no embedding model.
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(inputs=["x"], model=reranker_name), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_kwargs", "fragment"),
    [
        ({"query": "q", "documents": []}, "no documents"),
        ({"query": "", "documents": ["d"]}, "query is empty"),
        ({"query": "q", "documents": ["d", ""]}, "document 1 is an empty string"),
        ({"query": "q", "documents": ["d"], "truncate": pb.TRUNCATE_START}, "START"),
        ({"query": "q", "documents": ["d"], "truncate": 7}, "unknown truncate"),
        ({"query": "q", "documents": ["d"] * 5000}, "more than the limit"),
    ],
)
def test_grpc_invalid_requests(
    stub: pb_grpc.EmbeddingServiceStub, request_kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Rerank(pb.RerankRequest(**request_kwargs), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in (err.value.details() or "")


def test_huge_inputs_are_answered_fast_and_bounded(stub: pb_grpc.EmbeddingServiceStub) -> None:
    """10 MB documents or queries cost a prefix encode, not a full tokenization; the facade stays healthy."""
    huge = "The capital of China is Beijing. " * 300_000  # ~10 MB
    for kwargs, code in (
        ({"query": "capital?", "documents": ["Beijing.", huge]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"query": huge, "documents": ["Beijing."]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"query": huge, "documents": ["Beijing."], "truncate": pb.TRUNCATE_END}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"query": "capital?", "documents": ["Beijing.", huge], "truncate": pb.TRUNCATE_END}, grpc.StatusCode.OK),
    ):
        started = time.monotonic()
        try:
            response = stub.Rerank(pb.RerankRequest(**kwargs), timeout=60)  # type: ignore[arg-type]
            got = grpc.StatusCode.OK
            assert len(response.results) == 2
        except grpc.RpcError as exc:
            got = exc.code()
            assert len(exc.details() or "") < 300  # never echoes the input
        assert got == code and time.monotonic() - started < 10


def test_too_long_documents_are_named_or_cut_like_the_official_usage(
    facade: Facade, stub: pb_grpc.EmbeddingServiceStub, reference_reranker: Reference
) -> None:
    query = "What is the capital of China?"
    documents = ["Beijing.", "The capital of China is Beijing. " * 200, "Paris."]
    assert reference_reranker.untruncated_length("", query, documents[1]) > reference_reranker.max_tokens
    with pytest.raises(grpc.RpcError) as err:
        rerank(stub, query, documents)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "document 1 " in (err.value.details() or "") and "Beijing" not in (err.value.details() or "")
    for path, body in (
        ("/v1/rerank", {"query": query, "documents": documents}),
        ("/rerank", {"query": query, "texts": documents}),
    ):
        reply = httpx.post(f"{facade.base_url}{path}", json=body, timeout=60)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert "document 1 " in error["message"] and error["param"] == "documents"
    cut = rerank(stub, query, documents, truncate=pb.TRUNCATE_END)
    expected = reference_reranker.scores("", query, documents)  # the reference cuts the body at max_length
    np.testing.assert_allclose(by_index(cut), expected, rtol=0, atol=TOLERANCE)
    assert cut.usage.prompt_tokens == sum(len(reference_reranker.ids("", query, d)) for d in documents)
    tei = httpx.post(
        f"{facade.base_url}/rerank", json={"query": query, "texts": documents, "truncate": True}, timeout=60
    )
    assert tei.status_code == 200, tei.text
    np.testing.assert_allclose(
        [r["score"] for r in sorted(tei.json(), key=lambda r: r["index"])], expected, atol=TOLERANCE
    )


# -- HTTP --


def test_http_cohere_shape(facade: Facade, stub: pb_grpc.EmbeddingServiceStub, reranker_name: str) -> None:
    instruction, query, documents = CASES[2]
    grpc_scores = by_index(rerank(stub, query, documents, instruction=instruction))
    cards = httpx.get(f"{facade.base_url}/v1/models", timeout=30).json()["data"]
    assert any(c["id"] == reranker_name for c in cards)
    mixed: list[Any] = [d if i % 2 else {"text": d} for i, d in enumerate(documents)]  # Cohere's objects too
    body = {"model": reranker_name, "query": query, "documents": mixed, "instruction": instruction}
    reply = httpx.post(f"{facade.base_url}/v1/rerank", json={**body, "return_documents": True}, timeout=60)
    assert reply.status_code == 200, reply.text
    payload = reply.json()
    assert payload["model"] == reranker_name and payload["id"]
    assert payload["usage"]["prompt_tokens"] == payload["usage"]["total_tokens"] > 0
    assert payload["meta"]["billed_units"]["input_tokens"] == payload["usage"]["total_tokens"]
    results = payload["results"]
    assert [r["index"] for r in results] == sorted(range(len(documents)), key=lambda i: -grpc_scores[i])
    for r in results:
        assert abs(r["relevance_score"] - grpc_scores[r["index"]]) <= 1e-9
        assert r["document"] == {"text": documents[r["index"]]}
    top = httpx.post(f"{facade.base_url}/v1/rerank", json={**body, "top_n": 1}, timeout=60).json()["results"]
    assert len(top) == 1 and top[0]["index"] == results[0]["index"] and "document" not in top[0]
    # The default reranker without `model`.
    plain = httpx.post(f"{facade.base_url}/v1/rerank", json={"query": query, "documents": documents}, timeout=60)
    assert plain.status_code == 200 and len(plain.json()["results"]) == len(documents)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"query": "q", "documents": ["d"], "rank_fields": ["x"]}, 400, "unknown parameter"),
        ({"query": "q", "documents": ["d"], "top_n": 0}, 400, "top_n"),
        ({"query": "q", "documents": ["d"], "top_n": "2"}, 400, "top_n"),
        ({"query": "q", "documents": [{"text": "d", "title": "t"}]}, 400, "documents"),
        ({"query": "q", "documents": [1]}, 400, "documents"),
        ({"query": "q", "documents": []}, 400, "no documents"),
        ('{"query": "q\\ud800", "documents": ["d"]}', 400, ""),  # a lone surrogate: sent as raw JSON
        ({"query": "q", "documents": ["d"], "model": "no-such-model"}, 404, "not served"),
        ({"query": "q", "documents": ["d"], "truncate": "START"}, 400, "START"),
        ({"documents": ["d"]}, 400, "query"),
    ],
)
def test_http_cohere_errors(facade: Facade, body: dict[str, Any] | str, status: int, fragment: str) -> None:
    url = f"{facade.base_url}/v1/rerank"
    if isinstance(body, str):
        reply = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        reply = httpx.post(url, json=body, timeout=30)
    assert reply.status_code == status, reply.text
    assert fragment in reply.json()["error"]["message"]


def test_cohere_sdk(facade: Facade, reranker_name: str) -> None:
    """The official Cohere SDK (v1 `Client.rerank`, which posts `/v1/rerank`) against this server."""
    cohere = pytest.importorskip("cohere")
    client = cohere.Client(base_url=facade.base_url, api_key="EMPTY")
    documents = ["The capital of China is Beijing.", "Gravity is a force.", "Beijing is a big city."]
    query = "What is the capital of China?"
    reply = client.rerank(model=reranker_name, query=query, documents=documents, top_n=2, return_documents=True)
    ours = httpx.post(
        f"{facade.base_url}/v1/rerank", json={"query": query, "documents": documents, "top_n": 2}, timeout=60
    ).json()["results"]
    assert [r.index for r in reply.results] == [r["index"] for r in ours]
    assert [r.relevance_score for r in reply.results] == [r["relevance_score"] for r in ours]
    assert all(r.document.text == documents[r.index] for r in reply.results)
    assert reply.meta.billed_units.input_tokens > 0


def test_readme_rerank_python_block_runs(
    facade: Facade, reranker_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("cohere")
    [code] = code_blocks(section(CLIENTS, "## Rerank"), "python")
    code = (
        code.replace("http://localhost:8080", facade.base_url)
        .replace("localhost:50051", facade.target)
        .replace("Qwen3-Reranker-0.6B", reranker_name)
    )
    exec(compile(code, f"{CLIENTS}#rerank", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("0 ") and printed[-1].startswith("[RerankHit(index=0, score=")


def test_http_tei_shape(facade: Facade, stub: pb_grpc.EmbeddingServiceStub) -> None:
    _, query, documents = CASES[1]
    grpc_scores = by_index(rerank(stub, query, documents))
    grpc_raw = by_index(rerank(stub, query, documents, raw_scores=True))
    reply = httpx.post(
        f"{facade.base_url}/rerank", json={"query": query, "texts": documents, "return_text": True}, timeout=60
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()
    assert [r["index"] for r in results] == sorted(range(len(documents)), key=lambda i: -grpc_scores[i])
    for r in results:
        assert abs(r["score"] - grpc_scores[r["index"]]) <= 1e-9 and r["text"] == documents[r["index"]]
    raw = httpx.post(
        f"{facade.base_url}/rerank", json={"query": query, "texts": documents, "raw_scores": True}, timeout=60
    )
    for r in raw.json():
        assert abs(r["score"] - grpc_raw[r["index"]]) <= 1e-9 and "text" not in r
    left = {"query": query, "texts": documents, "truncate": True, "truncation_direction": "Left"}
    refused = httpx.post(f"{facade.base_url}/rerank", json=left, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "truncation_direction"


def test_openapi_and_metrics_show_rerank(facade: Facade, stub: pb_grpc.EmbeddingServiceStub) -> None:
    schema = httpx.get(f"{facade.base_url}/openapi.json", timeout=30).json()
    for path, field in (("/v1/rerank", "documents"), ("/rerank", "texts")):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in body["properties"] and body["additionalProperties"] is False
    rerank(stub, "q", ["a", "b", "c"])
    httpx.post(f"{facade.base_url}/rerank", json={"query": "q", "texts": ["a"]}, timeout=30)
    metrics = httpx.get(f"{facade.base_url}/metrics", timeout=30).text
    for labels in ('api="grpc"', 'method="Rerank"', 'code="OK"'), ('api="http"', 'method="/rerank"', 'code="200"'):
        assert any(
            ln.startswith("qwen3_embed_requests_total{") and all(label in ln for label in labels)
            for ln in metrics.splitlines()
        ), labels
    assert "qwen3_embed_rerank_documents_per_request_count" in metrics


# -- embeddings unchanged beside reranks --


def test_embed_parity_unchanged_while_reranks_run(
    facade: Facade, reference: Any, reference_reranker: Reference
) -> None:
    texts = ["What is the capital of China?", "Explain gravity", "def add(a, b):\n    return a + b", "中文句子。"]
    expected_vectors = reference.encode(texts)
    instruction, query, documents = CASES[0]
    expected_scores = reference_reranker.scores(instruction, query, documents)

    async def run() -> tuple[list[pb.EmbedResponse], list[pb.RerankResponse]]:
        async with grpc.aio.insecure_channel(facade.target) as ch:
            aio = pb_grpc.EmbeddingServiceStub(ch)
            embeds = [aio.Embed(pb.EmbedRequest(inputs=texts), timeout=60) for _ in range(8)]
            reranks = [aio.Rerank(pb.RerankRequest(query=query, documents=documents), timeout=60) for _ in range(8)]
            done = await asyncio.gather(*embeds, *reranks)
        return list(done[:8]), list(done[8:])  # type: ignore[arg-type]

    embedded, reranked = asyncio.run(run())
    for response in embedded:
        got = np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
        for a, b in zip(got, expected_vectors, strict=True):
            assert cosine(a, b) >= 0.99999
    for response in reranked:
        np.testing.assert_allclose(by_index(response), expected_scores, rtol=0, atol=TOLERANCE)


# -- client library and CLI --


@pytest.mark.parametrize("api", ["grpc", "http"])
def test_client_rerank_splits_and_merges(facade: Facade, stub: pb_grpc.EmbeddingServiceStub, api: str) -> None:
    instruction, query, documents = CASES[2]
    documents = documents + CASES[0][2]
    whole = rerank(stub, query, documents, instruction=instruction)
    target = facade.target if api == "grpc" else f"{facade.base_url}/v1"
    with Client(target, api=api, batch_size=3) as client:  # 3 calls, merged
        got = client.rerank(query, documents, instruction=instruction, return_documents=True)
        top = client.rerank(query, documents, instruction=instruction, top_n=2)
    assert [h.index for h in got.results] == [r.index for r in whole.results]
    for hit, r in zip(got.results, whole.results, strict=True):
        assert abs(hit.score - r.score) <= 1e-6 and hit.document == documents[hit.index]
    assert got.prompt_tokens == whole.usage.prompt_tokens
    assert [h.index for h in top.results] == [r.index for r in whole.results[:2]]


def test_cli_rerank(facade: Facade) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "rerank", "--query", "capital of China", "--target", facade.target,
         "--top-n", "2", "Beijing is the capital.", "Gravity pulls.", "Paris is in France."],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("model ") and len(lines) == 3 and lines[1].lstrip().startswith("1. [")


# -- the rerank curl commands of docs/clients.md --


def readme_rerank_curls() -> list[str]:
    return [ln for ln in shell_lines(section(CLIENTS, "## Rerank"), "curl") if "rerank" in ln]


def test_readme_has_both_rerank_curls() -> None:
    paths = {re.search(r"localhost:8080(/\S+)", ln).group(1) for ln in readme_rerank_curls()}  # type: ignore[union-attr]
    assert paths == {"/v1/rerank", "/rerank"}


@pytest.mark.parametrize("line", readme_rerank_curls())
def test_readme_rerank_curl_commands(facade: Facade, reranker_name: str, line: str) -> None:
    """Each rerank curl line's path and body, sent to the live facade (the README's model name is the real
    checkpoint's: the dev reranker's served name stands in for it)."""
    import json
    import shlex

    words = shlex.split(line)
    path = re.search(r"localhost:8080(/\S+)", line).group(1)  # type: ignore[union-attr]
    body = json.loads(words[words.index("-d") + 1])
    if "model" in body:
        assert body["model"].startswith("Qwen3-Reranker")
        body["model"] = reranker_name
    reply = httpx.post(f"{facade.base_url}{path}", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    if path == "/v1/rerank":
        results = data["results"]
        assert len(results) == body.get("top_n", len(body["documents"]))
        assert results[0]["document"]["text"] == body["documents"][results[0]["index"]]
        assert data["usage"]["prompt_tokens"] > 0
    else:
        assert sorted(r["index"] for r in data) == list(range(len(body["texts"])))
        assert all(r["text"] == body["texts"][r["index"]] for r in data)
        assert [r["score"] for r in data] == sorted((r["score"] for r in data), reverse=True)
