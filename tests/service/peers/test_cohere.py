"""Cohere's clients against the live facade: the official `cohere` SDK (ClientV2 and the v1 Client) on
`/v2/embed`, `/v1/embed`, `/v2/rerank`, each compared with the gRPC API's answer for the same request and with
the references (sentence-transformers for vectors; Qwen3-Reranker's official usage in transformers for scores).
Errors in Cohere's shape with the service's statuses; auth, body budget and admission as on /v1/embeddings."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.contract import rerank_body
from service.gen.embedding.v1 import embedding_pb2 as pb
from service.pipeline.reranker import rerank_head
from tests.helpers import PACKED_DTYPE, PACKED_ENCODING, Facade, cosine, embed, flooded, vectors
from tests.service.test_rerank_api import CASES, Reference

cohere = pytest.importorskip("cohere")

TEXTS = ["How are you today?", "The capital of China is Beijing.", "def f(x): return x * 2", "数字 123"]
ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


@pytest.fixture(scope="module")
def v2(facade: Facade) -> Any:
    return cohere.ClientV2(base_url=facade.base_url, api_key="EMPTY")


@pytest.fixture(scope="module")
def v1(facade: Facade) -> Any:
    return cohere.Client(base_url=facade.base_url, api_key="EMPTY")


def packed(stub: Any, texts: list[str], name: str, **kwargs: Any) -> list[bytes]:
    return [e.packed for e in embed(stub, texts, encoding=PACKED_ENCODING[name], **kwargs).embeddings]


def as_bytes(rows: list[list[int]], name: str) -> list[bytes]:
    return [np.asarray(row, dtype=PACKED_DTYPE[name]).tobytes() for row in rows]


# -- embed --


@pytest.mark.parametrize(("input_type", "prompt_name"), [("search_query", "query"), ("search_document", "")])
def test_v2_embed_every_type_equals_grpc_and_the_reference(
    v2: Any, stub: Any, reference: Any, model: str, input_type: str, prompt_name: str
) -> None:
    reply = v2.embed(model=model, texts=TEXTS, input_type=input_type, embedding_types=ALL_TYPES)
    assert reply.response_type == "embeddings_by_type" and reply.id and reply.texts == TEXTS
    assert reply.meta.api_version.version == "2" and reply.meta.billed_units.input_tokens > 0
    got = reply.embeddings
    grpc_vectors = vectors(embed(stub, TEXTS, prompt_name=prompt_name))
    expected = reference.encode(TEXTS, prompt_name=prompt_name or None, normalize_embeddings=True)
    floats = np.asarray(got.float_, dtype=np.float32)
    for a, b, c in zip(floats, grpc_vectors, expected, strict=True):
        assert cosine(a, b) >= 0.99999 and cosine(a, c) >= 0.99999
    np.testing.assert_array_equal(floats, grpc_vectors)  # the same float32 values, written as JSON
    decoded = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in got.base64])
    np.testing.assert_array_equal(decoded, grpc_vectors)
    for name in PACKED_ENCODING:
        rows = getattr(got, name)
        assert all(isinstance(x, int) for row in rows for x in row)
        assert as_bytes(rows, name) == packed(stub, TEXTS, name, prompt_name=prompt_name), name


def test_v2_embed_defaults_dimension_truncation_and_task_types(v2: Any, stub: Any, model: str) -> None:
    plain = v2.embed(model=model, texts=TEXTS[:2], input_type="search_document")
    assert set(plain.embeddings.dict(exclude_none=True)) == {"float"}  # float only by default
    for task in ("classification", "clustering"):  # no prompt: the same vectors as documents
        other = v2.embed(model=model, texts=TEXTS[:2], input_type=task)
        np.testing.assert_array_equal(other.embeddings.float_, plain.embeddings.float_)
    small = v2.embed(model=model, texts=TEXTS, input_type="search_query", output_dimension=32)
    assert small.embeddings.float_ is not None and len(small.embeddings.float_[0]) == 32
    grpc_small = vectors(embed(stub, TEXTS, prompt_name="query", dimensions=32))
    for a, b in zip(small.embeddings.float_, grpc_small, strict=True):
        assert cosine(np.asarray(a), b) >= 0.99999
    long = ["word " * 2000, "short"]
    for side, pb_side in (("END", pb.TRUNCATE_END), ("START", pb.TRUNCATE_START)):
        cut = v2.embed(model=model, texts=long, input_type="search_document", truncate=side)
        for a, b in zip(cut.embeddings.float_, vectors(embed(stub, long, truncate=pb_side)), strict=True):
            assert cosine(np.asarray(a), b) >= 0.99999
    default = v2.embed(model=model, texts=long, input_type="search_document")  # Cohere's default: END
    assert (
        default.embeddings.float_
        == v2.embed(model=model, texts=long, input_type="search_document", truncate="END").embeddings.float_
    )
    with pytest.raises(cohere.BadRequestError) as err:
        v2.embed(model=model, texts=long, input_type="search_document", truncate="NONE")
    assert "limit of 512" in err.value.body["message"]


def test_v2_embed_instruction_extension(facade: Facade, stub: Any, reference: Any, model: str) -> None:
    instruction = "Classify the sentiment of the review"
    body = {"model": model, "texts": TEXTS, "input_type": "classification", "instruction": instruction}
    reply = httpx.post(f"{facade.base_url}/v2/embed", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    got = np.asarray(reply.json()["embeddings"]["float"], dtype=np.float32)
    expected = reference.encode(TEXTS, prompt=f"Instruct: {instruction}\nQuery:", normalize_embeddings=True)
    np.testing.assert_array_equal(got, vectors(embed(stub, TEXTS, instruction=instruction)))
    assert all(cosine(a, b) >= 0.99999 for a, b in zip(got, expected, strict=True))


def test_v1_client_embed_floats_and_by_type(v1: Any, stub: Any, model: str) -> None:
    floats = v1.embed(texts=TEXTS, model=model, input_type="search_query")
    assert floats.response_type == "embeddings_floats" and floats.texts == TEXTS
    np.testing.assert_array_equal(
        np.asarray(floats.embeddings, dtype=np.float32), vectors(embed(stub, TEXTS, prompt_name="query"))
    )
    typed = v1.embed(texts=TEXTS, input_type="search_document", embedding_types=["float", "ubinary", "int8"])
    assert typed.response_type == "embeddings_by_type" and typed.meta.api_version.version == "1"
    np.testing.assert_array_equal(np.asarray(typed.embeddings.float_, dtype=np.float32), vectors(embed(stub, TEXTS)))
    for name in ("ubinary", "int8"):
        assert as_bytes(getattr(typed.embeddings, name), name) == packed(stub, TEXTS, name)
    # The v1 client splits more than 96 texts into calls of 96 and merges them: the order is kept.
    many = [f"text number {i}" for i in range(100)]
    merged = v1.embed(texts=many, model=model, input_type="search_document")
    np.testing.assert_array_equal(np.asarray(merged.embeddings, dtype=np.float32), vectors(embed(stub, many)))


# -- rerank --


class CappedReference(Reference):
    """The official usage with Cohere's max_tokens_per_doc: the whole body tokenized, cut after the head, the
    `<Document>:` label and `cap` of the document's own tokens (then the model's limit, as usual)."""

    def capped_raw(self, query: str, documents: list[str], cap: int) -> np.ndarray:
        before = len(self.tokenizer.encode(rerank_head("", query), add_special_tokens=False))
        before += len(self.tokenizer.encode("<Document>:", add_special_tokens=False))
        body_limit = self.max_tokens - len(self.prefix) - len(self.suffix)
        out = []
        with self.torch.no_grad():
            for document in documents:
                body = self.tokenizer.encode(rerank_body("", query, document), add_special_tokens=False)
                ids = self.torch.tensor([[*self.prefix, *body[: before + cap][:body_limit], *self.suffix]])
                logits = self.model(input_ids=ids).logits[0, -1]
                out.append(float(logits[self.yes_id].double() - logits[self.no_id].double()))
        return np.array(out)


@pytest.fixture(scope="module")
def reference_reranker(dev_reranker_dir: Path, stub: Any) -> CappedReference:
    info = next(m for m in stub.GetInfo(pb.GetInfoRequest(), timeout=30).models if m.kind == pb.MODEL_KIND_RERANKER)
    return CappedReference(dev_reranker_dir, int(info.max_input_tokens))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("cap", [None, 3, 20])
def test_v2_rerank_max_tokens_per_doc_equals_the_official_usage(
    v2: Any, reranker: str, reference_reranker: CappedReference, cap: int | None
) -> None:
    _, query, documents = CASES[0]
    kwargs = {} if cap is None else {"max_tokens_per_doc": cap}
    reply = v2.rerank(model=reranker, query=query, documents=documents, **kwargs)
    assert reply.id and reply.meta.api_version.version == "2" and reply.meta.billed_units.input_tokens > 0
    # Cohere's default cap (4096) is over the dev model's limit (512): the model's limit cuts, END.
    expected = sigmoid(reference_reranker.capped_raw(query, documents, cap or 4096))
    scores = {r.index: r.relevance_score for r in reply.results}
    np.testing.assert_allclose([scores[i] for i in range(len(documents))], expected, rtol=0, atol=1e-5)
    assert [r.index for r in reply.results] == sorted(range(len(documents)), key=lambda i: -expected[i])
    if cap == 3:  # 3 tokens of each document: the long ones' scores change
        full = sigmoid(reference_reranker.raw("", query, documents))
        assert np.abs(full - expected).max() > 1e-3


def test_v2_rerank_top_n_and_documents(facade: Facade, v2: Any, reranker: str) -> None:
    _, query, documents = CASES[1]
    full = v2.rerank(model=reranker, query=query, documents=documents)
    top = v2.rerank(model=reranker, query=query, documents=documents, top_n=2)
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]
    body = {"model": reranker, "query": query, "documents": documents, "return_documents": True}
    echoed = httpx.post(f"{facade.base_url}/v2/rerank", json=body, timeout=60).json()["results"]
    assert all(r["document"] == {"text": documents[r["index"]]} for r in echoed)


def test_v1_client_rerank_equals_v2(v1: Any, v2: Any, reranker: str) -> None:
    _, query, documents = CASES[2]
    one = v1.rerank(model=reranker, query=query, documents=documents, return_documents=True)
    two = v2.rerank(model=reranker, query=query, documents=documents)
    assert [(r.index, r.relevance_score) for r in one.results] == [(r.index, r.relevance_score) for r in two.results]


# -- errors --


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/v2/embed", {"texts": ["x"], "input_type": "search_query"}, 400, "model"),
        ("/v2/embed", {"model": "M", "texts": ["x"]}, 400, "input_type"),
        ("/v2/embed", {"model": "M", "texts": ["x"], "input_type": "image"}, 400, "input_type"),
        ("/v2/embed", {"model": "M", "texts": ["x"], "input_type": "query"}, 400, "input_type"),
        (
            "/v2/embed",
            {"model": "M", "texts": ["x"], "input_type": "search_query", "embedding_types": ["int4"]},
            400,
            "embedding_types",
        ),
        (
            "/v2/embed",
            {"model": "M", "texts": ["x"], "input_type": "search_query", "truncate": "LEFT"},
            400,
            "truncate",
        ),
        (
            "/v2/embed",
            {"model": "M", "texts": ["x"], "input_type": "search_query", "output_dimension": 4},
            400,
            "output_dimension",
        ),
        (
            "/v2/embed",
            {"model": "M", "texts": ["x"], "input_type": "search_query", "max_tokens": 8},
            400,
            "max_tokens",
        ),
        ("/v2/embed", {"model": "M", "texts": ["x"], "input_type": "search_query", "priority": 5}, 400, "priority"),
        ("/v2/embed", {"model": "M", "input_type": "search_query", "images": ["data:,"]}, 400, "images"),
        ("/v2/embed", {"model": "M", "input_type": "search_query", "inputs": []}, 400, "inputs"),
        ("/v2/embed", {"model": "M", "texts": [""], "input_type": "search_query"}, 400, "empty"),
        ("/v2/embed", {"model": "M", "texts": ["x"], "input_type": "search_query", "dims": 3}, 400, "dims"),
        ("/v2/embed", {"model": "embed-v4.0", "texts": ["x"], "input_type": "search_query"}, 404, "embed-v4.0"),
        ("/v1/embed", {"texts": "x"}, 400, "texts"),
        ("/v1/embed", {"texts": ["x"], "input_type": "search_document", "instruction": "Find"}, 400, "instruction"),
        ("/v1/embed", {"texts": ["x"], "model": "R"}, 400, "not a embedding model"),
        ("/v2/rerank", {"model": "R", "query": "q", "documents": []}, 400, "documents"),
        ("/v2/rerank", {"model": "R", "query": "", "documents": ["d"]}, 400, "query"),
        (
            "/v2/rerank",
            {"model": "R", "query": "q", "documents": ["d"], "max_tokens_per_doc": 0},
            400,
            "max_tokens_per_doc",
        ),
        ("/v2/rerank", {"model": "R", "query": "q", "documents": ["d"], "top_n": 0}, 400, "top_n"),
        ("/v2/rerank", {"model": "R", "query": "q", "documents": [{"text": "d"}]}, 400, "documents"),
        (
            "/v2/rerank",
            {"model": "R", "query": "q", "documents": ["d"], "relevant_spans": {"mode": "enabled"}},
            400,
            "relevant_spans",
        ),
        ("/v2/rerank", {"model": "R", "query": "q", "documents": ["d"], "rank_fields": ["x"]}, 400, "rank_fields"),
        ("/v2/rerank", {"model": "rerank-v3.5", "query": "q", "documents": ["d"]}, 404, "rerank-v3.5"),
    ],
)
def test_bad_input_gets_coheres_shape_and_names_the_field(
    facade: Facade, model: str, reranker: str, path: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    body = {k: {"M": model, "R": reranker}.get(v, v) if k == "model" else v for k, v in body.items()}
    reply = httpx.post(f"{facade.base_url}{path}", json=body, timeout=30)
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"message"} and fragment in reply.json()["message"], reply.text


def test_sdk_raises_coheres_exceptions(v2: Any, v1: Any, model: str) -> None:
    with pytest.raises(cohere.NotFoundError) as missing:
        v2.embed(model="embed-v4.0", texts=["x"], input_type="search_query")
    assert "embed-v4.0" in missing.value.body["message"]
    with pytest.raises(cohere.BadRequestError) as bad:
        v2.embed(model=model, texts=["x"], input_type="search_query", output_dimension=4096)
    assert "output_dimension" in bad.value.body["message"]
    with pytest.raises(cohere.BadRequestError):
        v1.embed(texts=["x"], images=["data:image/png;base64,AAAA"])


# -- the gate: auth, body budget, admission --


def route_bodies(model: str, reranker: str, texts: list[str]) -> dict[str, dict[str, Any]]:
    return {
        "/v1/embed": {"texts": texts, "input_type": "search_document"},
        "/v2/embed": {"model": model, "texts": texts, "input_type": "search_document"},
        "/v2/rerank": {"model": reranker, "query": "q", "documents": texts},
    }


def cohere_refusal(reply: httpx.Response, status: int, fragment: str) -> None:
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"message"} and fragment in reply.json()["message"], reply.text


@pytest.mark.parametrize("path", ["/v1/embed", "/v2/embed", "/v2/rerank"])
def test_auth_body_budget_and_admission(guarded: Facade, guard_key: str, model: str, reranker: str, path: str) -> None:
    url = f"{guarded.base_url}{path}"
    key = {"authorization": f"Bearer {guard_key}"}
    body = route_bodies(model, reranker, ["a short text"])[path]
    for headers in ({}, {"authorization": "Bearer wrong"}):  # the gate's refusals, in Cohere's shape too
        cohere_refusal(httpx.post(url, json=body, headers=headers, timeout=30), 401, "API key")
    plain = httpx.post(url, content=b"texts=x", headers={**key, "content-type": "text/plain"}, timeout=30)
    cohere_refusal(plain, 415, "application/json")
    assert httpx.post(url, json=body, headers=key, timeout=60).status_code == 200
    sdk = cohere.ClientV2(base_url=guarded.base_url, api_key="wrong") if path != "/v1/embed" else None
    if sdk is not None:
        with pytest.raises(cohere.UnauthorizedError):
            sdk.embed(model=model, texts=["x"], input_type="search_query")
    # The byte cap (declared and chunked) and the JSON-values budget, as on /v1/embeddings.
    big = route_bodies(model, reranker, ["x" * 70_000])[path]
    cohere_refusal(httpx.post(url, json=big, headers=key, timeout=30), 413, "limit")  # declared

    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ["' + b"y" * 40_000
        yield b"y" * 40_000 + b'"]}'

    chunked = httpx.post(url, content=chunks(), headers={**key, "content-type": "application/json"}, timeout=30)
    cohere_refusal(chunked, 413, "limit")
    values = route_bodies(model, reranker, ["z"] * 5000)[path]
    over = httpx.post(url, json=values, headers=key, timeout=30)
    assert over.status_code == 400 and "JSON values" in over.json()["message"], over.text
    # Admission: one slot, eight callers at once: every answer is 200 or 429 with Retry-After.
    work = route_bodies(model, reranker, [f"caller text {i} " + "padding words " * 60 for i in range(16)])[path]
    replies = flooded(lambda: httpx.post(url, json=work, headers=key, timeout=60))
    limited = next(r for r in replies if r.status_code == 429)
    assert limited.headers["retry-after"] and "overloaded" in limited.json()["message"]


# -- cohere-python's own tests of these routes (github.com/cohere-ai/cohere-python: tests/test_client.py
# test_embed, test_image_embed, test_embed_batch_types, test_embed_batch_v1, test_rerank; and
# tests/test_embed_streaming_integration.py), run as their calls and assertions are, with this server's URL and
# model names in place of api.cohere.com's. A failure left is a documented refusal (docs/clients.md, "Cohere").

PNG_DATA_URI = (  # a 1x1 PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
)
PUBLISHED_TYPES = ["float", "int8", "uint8", "binary", "ubinary"]


def check_published_types(response: Any) -> None:
    """The published test's checks of an embeddings_by_type response: each type present holds its Python type."""
    if response.response_type == "embeddings_by_type":
        assert response.embeddings.float is not None
        assert response.embeddings.float_ is not None
        for name, kind in (("float_", float), ("int8", int), ("uint8", int), ("binary", int), ("ubinary", int)):
            rows = getattr(response.embeddings, name)
            if rows is not None:
                assert type(rows[0][0]) is kind


def test_published_embed(v1: Any, model: str) -> None:
    response = v1.embed(
        texts=["hello", "goodbye"], model=model, input_type="classification", embedding_types=PUBLISHED_TYPES
    )
    check_published_types(response)
    assert response.response_type == "embeddings_by_type"  # (not in the original: it must not pass vacuously)


@pytest.mark.xfail(raises=cohere.BadRequestError, strict=True, reason="refused: images (a text-only model)")
def test_published_image_embed(v1: Any, model: str) -> None:
    response = v1.embed(images=[PNG_DATA_URI], model=model, input_type="image", embedding_types=["float"])
    check_published_types(response)


def test_published_embed_batch_types(v1: Any, model: str) -> None:
    response = v1.embed(
        texts=["hello"] * 100, model=model, input_type="classification", embedding_types=PUBLISHED_TYPES
    )
    assert response.response_type == "embeddings_by_type"
    for rows in (
        response.texts,
        *(getattr(response.embeddings, n) for n in ("float_", "int8", "uint8", "binary", "ubinary")),
    ):
        assert len(rows or []) == 100


def test_published_embed_batch_v1(v1: Any, model: str) -> None:
    response = v1.embed(texts=["hello"] * 100, model=model, input_type="classification")
    assert response.response_type == "embeddings_floats"
    assert len(response.embeddings) == 100


def test_published_rerank(v1: Any, reranker: str) -> None:
    docs = [
        "Carson City is the capital city of the American state of Nevada.",
        "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean. Its capital is "
        "Saipan.",
        "Washington, D.C. (also known as simply Washington or D.C., and officially as the District of Columbia) is the "
        "capital of the United States. It is a federal district.",
        "Capital punishment (the death penalty) has existed in the United States since beforethe United States was a "
        "country. As of 2017, capital punishment is legal in 30 of the 50 states.",
    ]
    response = v1.rerank(model=reranker, query="What is the capital of the United States?", documents=docs, top_n=3)
    assert len(response.results) == 3  # (the original prints the response; this checks it too)


@pytest.mark.skipif(
    not hasattr(cohere.ClientV2, "embed_stream"), reason="the installed SDK's ClientV2 has no embed_stream"
)
def test_published_streaming_memory_efficient_processing(v2: Any, model: str) -> None:
    texts = [f"This is test document number {i}" for i in range(20)]
    count = 0
    for embedding in v2.embed_stream(
        model=model, input_type="search_document", texts=texts, batch_size=5, embedding_types=["float"]
    ):
        assert isinstance(embedding.embedding, list) and len(embedding.embedding) > 0
        assert embedding.text == texts[embedding.index]
        count += 1
    assert count == len(texts)


@pytest.mark.parametrize("client", ["v1", "v2"])
def test_published_streaming_types(request: pytest.FixtureRequest, model: str, client: str) -> None:
    """The streaming tests with the v1 Client too: its embed_stream exists in the installed SDK."""
    sdk = request.getfixturevalue(client)
    if not hasattr(sdk, "embed_stream"):
        pytest.skip(f"the installed SDK's {type(sdk).__name__} has no embed_stream")
    texts = [f"This is test document number {i}" for i in range(20)]
    seen = [
        e
        for e in sdk.embed_stream(
            model=model, input_type="search_document", texts=texts, batch_size=5, embedding_types=["float"]
        )
    ]
    assert [e.index for e in seen] == list(range(20)) and all(e.text == texts[e.index] and e.embedding for e in seen)
    both = list(
        sdk.embed_stream(
            model=model,
            input_type="search_document",
            texts=["Hello world", "Test embedding"],
            embedding_types=["int8", "float"],
        )
    )
    assert {"int8", "float"} <= {e.embedding_type for e in both}


# -- docs/clients.md --


def test_the_docs_cohere_block_runs(
    facade: Facade, model: str, reranker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "Cohere" section's Python block as written, aimed at the test facade (the dev models stand in for the
    real checkpoints the page names). Its curl lines run in tests/service/test_doc_commands.py."""
    from tests.doc_pages import CLIENTS, code_blocks, section

    [code] = code_blocks(section(CLIENTS, "### Cohere"), "python")
    for text, here in [
        ("http://localhost:8080", facade.base_url),
        ("Qwen3-Embedding-0.6B", model),
        ("Qwen3-Reranker-0.6B", reranker),
    ]:
        assert text in code
        code = code.replace(text, here)
    exec(compile(code, f"{CLIENTS} (Cohere)", "exec"), {})
    sizes, ranked = capsys.readouterr().out.splitlines()
    assert sizes == "64 64 8"  # the dev model's 64 dimensions: 64 floats, 64 int8, 8 bytes of bits
    assert ranked.startswith("[(0, ") and ", (1, " in ranked


async def test_async_client_v2(facade: Facade, stub: Any, model: str, reranker: str) -> None:
    """cohere.AsyncClientV2, as asyncio applications call it: the same answers as the sync client's routes."""
    client = cohere.AsyncClientV2(base_url=facade.base_url, api_key="EMPTY")
    reply = await client.embed(
        model=model, texts=TEXTS, input_type="search_query", embedding_types=["float", "ubinary"]
    )
    np.testing.assert_array_equal(
        np.asarray(reply.embeddings.float_, dtype=np.float32), vectors(embed(stub, TEXTS, prompt_name="query"))
    )
    assert as_bytes(reply.embeddings.ubinary, "ubinary") == packed(stub, TEXTS, "ubinary", prompt_name="query")
    _, query, documents = CASES[0]
    ranked = await client.rerank(model=reranker, query=query, documents=documents, top_n=2, max_tokens_per_doc=16)
    assert len(ranked.results) == 2 and ranked.results[0].relevance_score >= ranked.results[1].relevance_score
