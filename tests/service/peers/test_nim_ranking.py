"""NVIDIA NeMo Retriever's reranking API against the live facade: `POST /v1/ranking` as NIM's documented
examples send it, its logits compared with the gRPC API's raw scores and with Qwen3-Reranker's official usage
(transformers: logit = yes - no at the last token, whose sigmoid is the relevance score); NIM's probe and
metrics paths; errors naming the field; auth, body budget and admission as on /v1/embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.gen.embedding.v1 import embedding_pb2 as pb
from tests.helpers import Facade, flooded
from tests.service.test_rerank_api import CASES, Reference

# NIM's documentation example (docs.nvidia.com, "Use NVIDIA NeMo Retriever Reranking NIM"): a query and four
# passages, truncate END; here with the served reranker's name.
NIM_QUERY = "which way should i go?"
NIM_PASSAGES = [
    "two roads diverged in a yellow wood, and sorry i could not travel both and be one traveler, long i stood and "
    "looked down one as far as i could to where it bent in the undergrowth;",
    "then took the other, as just as fair, and having perhaps the better claim because it was grassy and wanted "
    "wear, though as for that the passing there had worn them really about the same,",
    "and both that morning equally lay in leaves no step had trodden black. oh, i marked the first for another "
    "day! yet knowing how way leads on to way i doubted if i should ever come back.",
    "i shall be telling this with a sigh somewhere ages and ages hence: two roads diverged in a wood, and i, i took "
    "the one less traveled by, and that has made all the difference.",
]


@pytest.fixture(scope="module")
def reference_reranker(dev_reranker_dir: Path, default_models: dict[int, Any]) -> Reference:
    return Reference(dev_reranker_dir, int(default_models[pb.MODEL_KIND_RERANKER].max_input_tokens))


def ranking(base_url: str, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/ranking", json=body, timeout=60, **kwargs)


def test_nim_documented_example(facade: Facade, stub: Any, reranker: str, reference_reranker: Reference) -> None:
    body = {
        "model": reranker,
        "query": {"text": NIM_QUERY},
        "passages": [{"text": p} for p in NIM_PASSAGES],
        "truncate": "END",
    }
    reply = ranking(facade.base_url, body)
    assert reply.status_code == 200, reply.text
    rankings = reply.json()["rankings"]
    assert set(reply.json()) == {"rankings"} and all(set(r) == {"index", "logit"} for r in rankings)
    logits = [r["logit"] for r in rankings]
    assert logits == sorted(logits, reverse=True) and sorted(r["index"] for r in rankings) == [0, 1, 2, 3]
    by_index = np.array([next(r["logit"] for r in rankings if r["index"] == i) for i in range(4)])
    raw = stub.Rerank(
        pb.RerankRequest(query=NIM_QUERY, documents=NIM_PASSAGES, raw_scores=True, truncate=pb.TRUNCATE_END),
        timeout=60,
    )
    np.testing.assert_allclose(
        by_index, [next(r.score for r in raw.results if r.index == i) for i in range(4)], atol=1e-9
    )
    expected = reference_reranker.raw("", NIM_QUERY, NIM_PASSAGES)
    np.testing.assert_allclose(by_index, expected, rtol=0, atol=1e-4)  # the logit: yes - no
    np.testing.assert_allclose(1 / (1 + np.exp(-by_index)), 1 / (1 + np.exp(-expected)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_logits_order_and_default_truncation(
    facade: Facade, reranker: str, reference_reranker: Reference, case: int
) -> None:
    _, query, documents = CASES[case]
    body = {"model": reranker, "query": {"text": query}, "passages": [{"text": d} for d in documents]}
    reply = ranking(facade.base_url, {**body, "truncate": "END"})
    assert reply.status_code == 200, reply.text
    expected = reference_reranker.raw("", query, documents)
    got = {r["index"]: r["logit"] for r in reply.json()["rankings"]}
    np.testing.assert_allclose([got[i] for i in range(len(documents))], expected, rtol=0, atol=1e-4)
    assert [r["index"] for r in reply.json()["rankings"]] == sorted(range(len(documents)), key=lambda i: -expected[i])
    lengths = [reference_reranker.untruncated_length("", query, d) for d in documents]
    default = ranking(facade.base_url, body)  # self-hosted NIM's default: NONE, an over-long passage is an error
    if max(lengths) > reference_reranker.max_tokens:
        assert default.status_code == 400 and "truncate" in default.json()["error"]["message"]
    else:
        assert default.json() == reply.json()


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"query": "q", "passages": [{"text": "p"}]}, "query"),
        ({"query": {"text": "q"}, "passages": ["p"]}, "passages"),
        ({"query": {"text": "q"}, "passages": []}, "documents"),
        ({"query": {"text": "q"}, "passages": [{"text": "p", "image": "data:,"}]}, "image"),
        ({"query": {"text": "q"}, "passages": [{"text": "p"}], "truncate": "START"}, "truncate"),
        ({"query": {"text": ""}, "passages": [{"text": "p"}]}, "query"),
        ({"query": {"text": "q"}, "passages": [{"text": "p"}], "top_n": 1}, "top_n"),
        ({"query": {"text": "q"}, "passages": [{"text": "p"}], "model": "nvidia/nv-rerankqa-mistral-4b-v3"}, "model"),
    ],
)
def test_bad_input_names_the_field(facade: Facade, body: dict[str, Any], names: str) -> None:
    reply = ranking(facade.base_url, body)
    assert reply.status_code == (404 if names == "model" else 400), reply.text
    assert names in reply.json()["error"]["message"] or reply.json()["error"]["param"] == names, reply.text


def test_nim_probe_and_metrics_paths(facade: Facade) -> None:
    for path, twin in (("/v1/health/live", "/health/live"), ("/v1/health/ready", "/health/ready")):
        reply = httpx.get(f"{facade.base_url}{path}", timeout=10)
        assert reply.status_code == 200 and reply.json() == httpx.get(f"{facade.base_url}{twin}", timeout=10).json()
    metrics = httpx.get(f"{facade.base_url}/v1/metrics", timeout=10)
    assert metrics.status_code == 200 and 'method="/v1/ranking"' in metrics.text


def test_auth_body_budget_and_admission(guarded: Facade, guard_key: str, reranker: str) -> None:
    key = {"authorization": f"Bearer {guard_key}"}

    def body(passages: list[str]) -> dict[str, Any]:
        return {"model": reranker, "query": {"text": "q"}, "passages": [{"text": p} for p in passages]}

    assert ranking(guarded.base_url, body(["p"])).status_code == 401
    assert ranking(guarded.base_url, body(["p"]), headers={"authorization": "Bearer no"}).status_code == 401
    assert ranking(guarded.base_url, body(["p"]), headers=key).status_code == 200
    for path in ("/v1/health/live", "/v1/health/ready"):  # probes need no key, as /health/*
        assert httpx.get(f"{guarded.base_url}{path}", timeout=10).status_code == 200
    assert httpx.get(f"{guarded.base_url}/v1/metrics", timeout=10).status_code == 401  # as /metrics
    assert ranking(guarded.base_url, body(["x" * 70_000]), headers=key).status_code == 413
    over = ranking(guarded.base_url, {"query": {"text": "q"}, "passages": ["p"] * 5000}, headers=key)
    assert over.status_code == 400 and "JSON values" in over.json()["error"]["message"], over.text
    work = body([f"passage {i} " + "padding words " * 60 for i in range(16)])
    replies = flooded(lambda: ranking(guarded.base_url, work, headers=key))
    assert next(r for r in replies if r.status_code == 429).headers["retry-after"]
