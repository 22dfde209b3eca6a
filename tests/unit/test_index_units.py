"""The client's chunking and retries (against a fault-injecting gRPC stub and a mocked HTTP server), corpus
reading, and the eval metrics on a hand-checked case. No Triton needed."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
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
    jsonl = read_corpus(tmp_path / "c.jsonl", "doc", "body")
    assert (jsonl.ids, jsonl.texts, jsonl.problems) == (["7", "8", "9"], ["seven", None, "nine, with comma"], {})
    delimited = read_corpus(tmp_path / "c.csv", "doc", "body")
    assert delimited.ids == ["007", "8", "9"] and delimited.texts == ["seven", "", "nine, with comma"]
    parquet = read_corpus(tmp_path / "c.parquet", "doc", "body")
    assert (parquet.ids, parquet.texts, parquet.problems) == (["7", "8", "9"], ["seven", None, "nine, with comma"], {})
    for name in ("c.jsonl", "c.csv", "c.parquet"):
        with pytest.raises(ValueError, match=r"no (row has the )?field"):
            read_corpus(tmp_path / name, "id", "body")


# Every malformed JSONL row `index` has met, with what must come of it: (id, text, problem or None).
MALFORMED_JSONL = [
    ('{"id": "s1", "text": "fine"}', "s1", "fine", None),
    ('{"id": 1, "text": "int id"}', "1", "int id", None),
    ('{"id": 1.0, "text": "float id written 1.0"}', "1.0", "float id written 1.0", None),
    ('{"id": 123, "text": "int id beside floats"}', "123", "int id beside floats", None),
    ('{"id": 12345678901234567890123, "text": "big int id"}', "12345678901234567890123", "big int id", None),
    ('{"id": 4.5, "text": "fractional id"}', None, "fractional id", "id 4.5 is not an integer"),
    ('{"id": 1e400, "text": "infinite id"}', None, "infinite id", "id 1e400 is not an integer"),
    ('{"id": null, "text": "null id"}', None, "null id", "id is null, not a string or an integer"),
    ('{"text": "no id"}', None, "no id", "missing id"),
    ('{"id": true, "text": "bool id"}', None, "bool id", "id is a boolean, not a string or an integer"),
    ('{"id": {"a": 1}, "text": "object id"}', None, "object id", "id is an object, not a string or an integer"),
    ('{"id": "", "text": "empty id"}', "", "empty id", "empty id"),
    ('{"id": "o1", "text": {"title": "t", "body": "b"}}', "o1", None, "text is an object, not a string"),
    ('{"id": "l1", "text": ["a", "b"]}', "l1", None, "text is an array, not a string"),
    ('{"id": "n1", "text": 42}', "n1", None, "text is a number, not a string"),
    ('{"id": "b1", "text": false}', "b1", None, "text is a boolean, not a string"),
    ('{"id": "u1", "text": "lone \\ud800 surrogate"}', "u1", None, "not valid Unicode"),
    ('{"id": "d1", "text": "first", "text": "second"}', "d1", "second", "has the field(s) text twice"),
    ('{"id": "nul", "text": null}', "nul", None, None),
    ('{"id": "broken", "text": ', None, None, "is not valid JSON"),
    ('["an", "array"]', None, None, "is an array, not a JSON object"),
    ('"just a string"', None, None, "is a string, not a JSON object"),
    ("[" * 100_000, None, None, "is not valid JSON: nested too deeply"),
]


def test_jsonl_rows_keep_exact_ids_and_reject_every_non_string_cell(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    raw = b"".join(line.encode() + b"\n" for line, *_ in MALFORMED_JSONL)
    raw += b'{"id": "latin1", "text": "caf\xe9"}\n\n   \n'  # bytes that are not UTF-8, then blank lines
    path.write_bytes(raw)
    corpus = read_corpus(path, "id", "text")
    assert len(corpus) == len(MALFORMED_JSONL) + 1  # one row per non-blank line, parsable or not
    for i, (line, row_id, text, problem) in enumerate(MALFORMED_JSONL):
        got_problem = corpus.problems.get(i)
        if problem is None:
            assert got_problem is None, (line, got_problem)
            assert (corpus.ids[i], corpus.texts[i]) == (row_id, text), line
        else:
            assert got_problem is not None and problem in got_problem, (line, got_problem)
        if row_id is not None and problem != "empty id":
            assert corpus.ids[i] == row_id, line
        assert "{'" not in (corpus.texts[i] or "") and "[" not in (corpus.texts[i] or "")  # never a repr
    assert corpus.problems[len(MALFORMED_JSONL)] == f"line {len(MALFORMED_JSONL) + 1} is not UTF-8"
    assert corpus.ids.count("1") == 1 and corpus.ids.count("1.0") == 1
    broken = [line for line, *_ in MALFORMED_JSONL].index('{"id": "broken", "text": ')
    assert corpus.problems[broken] == f"line {broken + 1} is not valid JSON: Expecting value at column 26"


def test_an_oversized_text_is_a_reject_not_a_failed_read(tmp_path: Path) -> None:
    from indexing.corpus import MAX_TEXT_BYTES

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "huge", "text": "é" * (MAX_TEXT_BYTES // 2 + 1)}) + "\n")
    corpus = read_corpus(path, "id", "text")
    assert "bytes, over the" in corpus.problems[0]


def test_parquet_by_column_type(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    float_ids = pa.table(
        {"id": pa.array([123.0, 1.5, None, float("nan"), 2.0**60], pa.float64()), "text": ["a", "b", "c", "d", "e"]}
    )
    pq.write_table(float_ids, tmp_path / "f.parquet")
    got = read_corpus(tmp_path / "f.parquet", "id", "text")
    assert got.ids[0] == "123" and 0 not in got.problems  # never "123.0"
    assert "id 1.5 is not an integer" in got.problems[1]
    assert got.problems[2] == got.problems[3] == "missing id"
    assert "not an integer" in got.problems[4]

    binary = pa.table({"id": pa.array([7, 8], pa.int64()), "text": pa.array([b"bytes", None], pa.binary())})
    pq.write_table(binary, tmp_path / "b.parquet")
    got = read_corpus(tmp_path / "b.parquet", "id", "text")
    assert got.ids == ["7", "8"] and got.problems == {0: "text is binary, not a string"}
    assert got.texts == [None, None]  # never "b'bytes'"

    nested = pa.table({"id": ["x"], "text": pa.array([{"title": "t", "text": "b"}])})
    pq.write_table(nested, tmp_path / "n.parquet")
    assert "not a string" in read_corpus(tmp_path / "n.parquet", "id", "text").problems[0]
    bool_ids = pa.table({"id": [True], "text": ["t"]})
    pq.write_table(bool_ids, tmp_path / "i.parquet")
    assert "ids must be strings or integers" in read_corpus(tmp_path / "i.parquet", "id", "text").problems[0]


def test_csv_ragged_and_undecodable_rows_are_rejects(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b'id,text\n1,one\n2,two,extra\n3\n4,"multi\nline"\n,no id\n5,caf\xe9\n6,"4.0"\n\n7,seven\n')
    got = read_corpus(path, "id", "text")
    assert got.ids[0] == "1" and got.texts[0] == "one"
    assert got.problems[1] == "line 3 has 3 fields, the header 2"
    assert got.problems[2] == "line 4 has 1 fields, the header 2"
    assert got.texts[3] == "multi\nline" and 3 not in got.problems
    assert got.problems[4] == "empty id"
    assert "not valid Unicode" in got.problems[5]
    assert got.texts[6] == "4.0" and got.ids[6] == "6"  # CSV cells are text as written
    assert got.ids[7] == "7" and 7 not in got.problems and len(got) == 8


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


def write_small_beir(folder: Path) -> None:
    (folder / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"T{i}", "text": f"body {i}"} for i in range(1, 4)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n')
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n")


def _replace(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _append(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text((folder / name).read_text() + text)


QRELS = "qrels/test.tsv"
# Each malformed BEIR folder: (how it is broken, the one message `eval` must give). Shared with the CLI test.
MALFORMED_BEIR: dict[str, tuple[Callable[[Path], None], str]] = {
    "no-corpus": (_remove("corpus.jsonl"), "corpus.jsonl is missing"),
    "empty-corpus": (_replace("corpus.jsonl", "\n"), "corpus.jsonl holds no document"),
    "doc-without-id": (_append("corpus.jsonl", '{"text": "x"}\n'), "corpus.jsonl line 4 has no _id"),
    "doc-without-text": (_append("corpus.jsonl", '{"_id": "d9", "title": "t"}\n'), "line 4 has no 'text'"),
    "doc-text-object": (
        _append("corpus.jsonl", '{"_id": "d9", "text": {"a": 1}}\n'),
        "corpus.jsonl line 4: 'text' is an object, not a string",
    ),
    "doc-null-id": (_append("corpus.jsonl", '{"_id": null, "text": "x"}\n'), "line 4: id is null"),
    "doc-bad-json": (_append("corpus.jsonl", '{"_id": "d9", \n'), "corpus.jsonl line 4 is not valid JSON"),
    "doc-repeated-id": (_append("corpus.jsonl", '{"_id": "d1", "text": "x"}\n'), "repeats _id 'd1'"),
    "no-queries": (_remove("queries.jsonl"), "queries.jsonl is missing"),
    "query-without-text": (_append("queries.jsonl", '{"_id": "q3"}\n'), "queries.jsonl line 3 has no 'text'"),
    "no-qrels": (_remove(QRELS), "test.tsv is missing"),
    "qrels-without-header": (
        _replace(QRELS, "q1\td1\t1\nq2\td2\t1\n"),
        "test.tsv line 1 is not the header query-id<TAB>corpus-id<TAB>score",
    ),
    "qrels-only-header": (_replace(QRELS, "query-id\tcorpus-id\tscore\n"), "test.tsv holds no judgement"),
    "qrels-short-row": (_append(QRELS, "q1\td3\n"), "test.tsv line 4 has 2 fields, expected 3"),
    "qrels-fractional-score": (_append(QRELS, "q1\td3\t0.5\n"), "score '0.5' is not an integer"),
    "qrels-repeated": (_append(QRELS, "q1\td1\t0\n"), "line 4 judges (q1, d1) again (first at line 2)"),
    "qrels-unknown-query": (_append(QRELS, "q9\td1\t1\n"), "judges query 'q9', which queries.jsonl does not have"),
    "qrels-unknown-doc": (_append(QRELS, "q1\td9\t1\n"), "judges document 'd9', which corpus.jsonl does not have"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_BEIR))
def test_read_beir_refuses_each_malformed_folder(tmp_path: Path, case: str) -> None:
    from indexing.corpus import BeirError

    folder = tmp_path / "beir"
    write_small_beir(folder)
    assert len(read_beir(folder).qrels) == 2  # the folder is good before it is broken
    breaks, message = MALFORMED_BEIR[case]
    breaks(folder)
    with pytest.raises(BeirError) as exc:
        read_beir(folder)
    assert message in str(exc.value)


def test_read_beir_keeps_every_judgement_and_exact_ids(tmp_path: Path) -> None:
    folder = tmp_path / "beir"
    write_small_beir(folder)
    _append("corpus.jsonl", '{"_id": 10, "text": "an integer id"}\n{"_id": "10.0", "text": "not the same"}\n')(folder)
    _append(QRELS, "q1\t10\t0\nq1\t10.0\t1\n")(folder)
    data = read_beir(folder)
    assert data.qrels == {"q1": {"d1": 1, "10": 0, "10.0": 1}, "q2": {"d2": 2}}
    assert data.corpus["10"] == "an integer id" and data.corpus["10.0"] == "not the same"
