"""`qwen3-embed index` and `eval` end to end against the real facade and Triton (dev model): a 20k-row corpus
killed halfway (SIGKILL) and resumed, overload retries against a facade with max_in_flight 1, the OpenAI HTTP
API as a second system."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from indexing.index import IndexConfig, committed_starts, run_index
from service.client import EmbedOptions
from service.triton.runtime import TritonProcess
from tests.helpers import ROOT, Facade, cosine, embed, run_facade, vectors
from tests.unit.test_index_units import MALFORMED_BEIR, MALFORMED_JSONL, write_small_beir

ROWS = 20_000
CHUNK = 1000
BAD = {"bad-empty": "", "bad-long": "word " * 3000}  # 3000 words > the test export's 512 tokens


def write_corpus(path: Path, rows: int) -> dict[str, str | None]:
    """Short varied texts, every 7th row a repeat of another (dedup), plus the bad rows and a null text."""
    texts: dict[str, str | None] = {}
    for i in range(rows):
        j = i % (rows * 6 // 7)
        texts[f"doc-{i}"] = f"passage {j} on topic {j % 97}: item {j * 31 % 1009}"
    texts.update(BAD)
    texts["bad-null"] = None
    with path.open("w") as f:
        for key, text in texts.items():
            f.write(json.dumps({"key": key, "body": text}) + "\n")
    return texts


def index_command(facade: Facade, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "service.cli", "index", str(corpus), str(out), "--id-field", "key",
        "--text-field", "body", "--target", facade.target, "--chunk-rows", str(CHUNK), "--concurrency", "4",
        "--batch-size", "64", "--no-progress", *extra,
    ]  # fmt: skip


def test_index_killed_and_resumed(facade: Facade, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "vectors.parquet"
    texts = write_corpus(corpus, ROWS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(index_command(facade, corpus, out), cwd=ROOT, env=env, stdout=subprocess.PIPE)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if parts.is_dir() and len(committed_starts(parts)) >= (ROWS // CHUNK) // 2:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the job ended before it could be killed halfway"
    first.send_signal(signal.SIGKILL)
    first.wait()
    committed = len(committed_starts(parts))
    assert 0 < committed < ROWS // CHUNK and not out.exists()

    started = time.monotonic()
    second = subprocess.run(index_command(facade, corpus, out), cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    print(f"resume after {committed} chunks: {second.stdout.strip()} ({time.monotonic() - started:.1f} s)")
    assert f"{committed * CHUNK} resumed" in second.stdout

    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    good = [k for k, t in texts.items() if t and k not in BAD]
    assert len(ids) == len(set(ids)) and set(ids) == set(good)  # every good id exactly once
    assert ids == good  # in input order
    rejects = [json.loads(line) for line in out.with_name("vectors.rejects.jsonl").read_text().splitlines()]
    reasons = {r["id"]: r["reason"] for r in rejects}
    assert set(reasons) == {"bad-empty", "bad-long", "bad-null"}
    assert reasons["bad-empty"] == "empty text" and reasons["bad-null"] == "missing text"
    assert "too long" in reasons["bad-long"] or "tokens" in reasons["bad-long"]
    assert not parts.exists()

    # Vectors equal single Embed calls (document prompt), for a sample that includes deduplicated rows.
    sample = [*np.random.default_rng(0).choice(len(ids), 60, replace=False).tolist(), ROWS * 6 // 7 + 1]
    column = table.column("vector")
    with grpc.insecure_channel(facade.target) as channel:
        stub = facade.stub(channel)
        for i in sample:
            expected = vectors(embed(stub, [texts[ids[i]] or ""], prompt_name="document"))[0]
            got = np.asarray(column[i].as_py(), dtype=np.float32)
            assert cosine(got, expected) >= 0.99999, ids[i]


def test_index_retries_against_an_overloaded_facade(
    model_repository: Path, triton: TritonProcess, tmp_path: Path
) -> None:
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "v.parquet"
    texts = write_corpus(corpus, 1500)
    env = {"QWEN3_EMBED_MAX_IN_FLIGHT": "1"}
    with run_facade(model_repository, triton.grpc_url, tmp_path, env=env) as overloaded:
        # Interactive requests are refused at once when the facade is full: index must retry them.
        cfg = IndexConfig(
            corpus, out, "key", "body", target=overloaded.target, concurrency=8, batch_size=16,
            chunk_rows=300, retry_attempts=30, progress=False, priority="interactive",
        )  # fmt: skip
        summary = asyncio.run(run_index(cfg))
        # Bulk ones (index's default) wait for a slot instead: nothing to retry, the same rows written.
        bulk_out = tmp_path / "bulk.parquet"
        bulk = asyncio.run(run_index(replace(cfg, output=bulk_out, priority="bulk")))
    print(summary.line())
    print(bulk.line())
    assert summary.retries > 0  # RESOURCE_EXHAUSTED came back and was retried
    assert summary.written == len([t for t in texts.values() if t]) - 1 and summary.rejected == 3
    assert summary.duplicate_rows > 0 and summary.embedded_texts < summary.written
    assert bulk.retries == 0 and (bulk.written, bulk.rejected) == (summary.written, summary.rejected)


def test_index_through_the_openai_http_api(facade: Facade, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus.csv", tmp_path / "http.parquet"
    corpus.write_text("id,text\n" + "".join(f'{i},"text number {i}, http"\n' for i in range(40)))
    base = IndexConfig(corpus, out, target=facade.target, options=EmbedOptions("document", dimensions=32))
    grpc_summary = asyncio.run(run_index(base))
    http_out = tmp_path / "via-http.parquet"
    http_cfg = IndexConfig(
        corpus, http_out, target=facade.base_url + "/v1", api="http", options=EmbedOptions("document", dimensions=32)
    )
    http_summary = asyncio.run(run_index(http_cfg))
    assert grpc_summary.written == http_summary.written == 40
    a = np.array(pq.read_table(out).column("vector").to_pylist())
    b = np.array(pq.read_table(http_out).column("vector").to_pylist())
    assert a.shape == (40, 32)
    np.testing.assert_allclose(a, b, atol=1e-5)


def write_malformed_corpus(path: Path) -> tuple[list[tuple[str, str]], dict[int, str]]:
    """Good rows around every malformed cell `index` has met (tests/unit: MALFORMED_JSONL), a 4 MB text and a
    line that is not UTF-8. Returns the good (id, text) rows in order and {row: reason fragment} of the rest."""
    good: list[tuple[str, str]] = []
    bad: dict[int, str] = {}
    lines: list[bytes] = []

    def add_good(row_id: str, text: str) -> None:
        good.append((row_id, text))
        lines.append(json.dumps({"id": row_id, "text": text}).encode())

    for k, (line, row_id, text, problem) in enumerate(MALFORMED_JSONL):
        add_good(f"good-{k}", f"a good row number {k} between bad ones")
        if problem is None and text:
            good.append((row_id, text))
        else:
            bad[len(lines)] = problem or "missing text"
        lines.append(line.encode())
    bad[len(lines)] = "too long"  # 4 MB: the server refuses it (more tokens than the model takes), one row
    lines.append(json.dumps({"id": "four-mb", "text": "word " * ((4 << 20) // 5)}).encode())
    bad[len(lines)] = "is not UTF-8"
    lines.append(b'{"id": "latin1", "text": "caf\xe9"}')
    add_good("last", "the last good row")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return good, bad


def check_malformed_output(out: Path, rejects_file: Path, good: list[tuple[str, str]], bad: dict[int, str]) -> None:
    ids = pq.read_table(out).column("id").to_pylist()
    assert ids == [row_id for row_id, _ in good]  # every good row once, in input order; "1" and "1.0" both
    rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert sorted(r["row"] for r in rejects) == sorted(bad)  # every bad row once, none of the good ones
    for record in rejects:
        assert bad[record["row"]] in record["reason"] or "tokens" in record["reason"], record


def test_index_rejects_every_malformed_cell_in_one_run(facade: Facade, tmp_path: Path) -> None:
    """Through the real CLI: object, array, number, boolean and lone-surrogate texts, null/fractional/boolean
    ids, `1` beside `1.0`, a bad line, a non-object line, a 4 MB text, bytes that are not UTF-8: one run writes
    every good row once (with the vector a single Embed call gives) and every bad one to the rejects file."""
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "vectors.parquet"
    good, bad = write_malformed_corpus(corpus)
    cmd = index_command(facade, corpus, out, "--id-field", "id", "--text-field", "text", "--chunk-rows", "7")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{len(good)} written, {len(bad)} rejected" in result.stdout, result.stdout
    check_malformed_output(out, out.with_name("vectors.rejects.jsonl"), good, bad)
    table = pq.read_table(out)
    texts = dict(good)
    with grpc.insecure_channel(facade.target) as channel:
        stub = facade.stub(channel)
        for i, row_id in enumerate(table.column("id").to_pylist()):
            if row_id in ("1", "1.0", "123", "last"):
                expected = vectors(embed(stub, [texts[row_id]], prompt_name="document"))[0]
                got = np.asarray(table.column("vector")[i].as_py(), dtype=np.float32)
                assert cosine(got, expected) >= 0.99999, row_id


def test_index_resumes_after_rejects(facade: Facade, tmp_path: Path) -> None:
    """A job stopped after its first committed chunk (which holds rejects) resumes to the same output: rejects
    never make a rerun fail again."""
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "vectors.parquet"
    good, bad = write_malformed_corpus(corpus)

    class Stop(Exception):
        pass

    cfg = IndexConfig(corpus, out, target=facade.target, chunk_rows=7, concurrency=1, progress=False)

    def stop_after_a_chunk_with_rejects(done: int, total: int, tokens: int) -> None:
        # Several chunks run at once and commit in any order: stop at the first commit that wrote rejects.
        if done > 0 and any(p.stat().st_size for p in cfg.parts_dir.glob("*.rejects.jsonl")):
            raise Stop

    with pytest.raises(Stop):
        asyncio.run(run_index(cfg, on_progress=stop_after_a_chunk_with_rejects))
    parts = cfg.parts_dir
    assert committed_starts(parts) and not out.exists()
    assert any(json.loads(r) for p in parts.glob("*.rejects.jsonl") for r in p.read_text().splitlines())

    cmd = index_command(facade, corpus, out, "--id-field", "id", "--text-field", "text", "--chunk-rows", "7")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert " 0 resumed" not in result.stdout and "resumed" in result.stdout
    check_malformed_output(out, out.with_name("vectors.rejects.jsonl"), good, bad)


@pytest.mark.parametrize("case", sorted(MALFORMED_BEIR))
def test_eval_refuses_a_malformed_beir_folder(tmp_path: Path, case: str) -> None:
    """`eval` validates the folder before calling any system: exit 2, one line naming the problem."""
    folder = tmp_path / "beir"
    write_small_beir(folder)
    breaks, message = MALFORMED_BEIR[case]
    breaks(folder)
    cmd = [sys.executable, "-m", "service.cli", "eval", str(folder), "--system", "x=grpc://127.0.0.1:9"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "eval-results").exists()


def write_beir(folder: Path, docs: int = 120, queries: int = 24) -> None:
    (folder / "qrels").mkdir(parents=True)
    topics = ["rivers", "volcanoes", "chess", "bread", "violins", "glaciers", "comets", "bees"]
    with (folder / "corpus.jsonl").open("w") as f:
        for i in range(docs):
            doc = {"_id": f"d{i}", "title": topics[i % 8], "text": f"note {i} about {topics[i % 8]} {i * 7 % 13}"}
            f.write(json.dumps(doc) + "\n")
    with (folder / "queries.jsonl").open("w") as f, (folder / "qrels" / "test.tsv").open("w") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for q in range(queries):
            f.write(json.dumps({"_id": f"q{q}", "text": f"note {q} about {topics[q % 8]}"}) + "\n")
            qrels.write(f"q{q}\td{q}\t1\n")


def test_eval_two_systems_table_and_plot(facade: Facade, tmp_path: Path) -> None:
    data, out = tmp_path / "beir", tmp_path / "results"
    write_beir(data)
    http = f"{facade.base_url}/v1?query_prompt=query&doc_prompt=document"
    result = subprocess.run(
        [
            sys.executable, "-m", "service.cli", "eval", str(data), "--output-dir", str(out),
            "--system", f"qwen=grpc://{facade.target}?dims=32,48,0&precisions=float32,binary",
            "--system", f"openai-api=http://{http.removeprefix('http://')}", "--k", "1,10",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    rows = [line.split(",") for line in (out / "results.csv").read_text().splitlines()]
    assert rows[0] == ["system", "precision", "dims", "nDCG@10", "R@1", "R@10", "MRR"]
    by_key = {(r[0], r[1], int(r[2])): [float(x) for x in r[3:]] for r in rows[1:]}
    assert len(by_key) == 7
    # The service's own HTTP API with the same prompts is the same system as its gRPC API at full size.
    assert by_key[("openai-api", "float32", 64)] == pytest.approx(by_key[("qwen", "float32", 64)], abs=1e-3)
    assert all(0.0 <= v <= 1.0 for values in by_key.values() for v in values)
    assert (out / "matryoshka.png").stat().st_size > 1000 and "nDCG@10" in (out / "results.md").read_text()
    assert "qwen" in result.stdout and "openai-api" in result.stdout


def test_eval_equals_the_library_on_sentence_transformers_vectors(
    facade: Facade, reference: object, tmp_path: Path
) -> None:
    """`eval` through the service gives the metrics ir-measures computes from the reference model's own vectors
    (sentence-transformers, query prompt for queries, document prompt for the corpus), at 64 and 32 dims."""
    import ir_measures

    from indexing.corpus import read_beir

    data, out = tmp_path / "beir", tmp_path / "results"
    write_beir(data)
    result = subprocess.run(
        [
            sys.executable, "-m", "service.cli", "eval", str(data), "--output-dir", str(out),
            "--system", f"qwen=grpc://{facade.target}?dims=32,0", "--k", "1,10",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [line.split(",") for line in (out / "results.csv").read_text().splitlines()]
    got = {int(r[2]): [float(x) for x in r[3:]] for r in rows[1:]}

    beir = read_beir(data)
    query_ids, doc_ids = list(beir.queries), list(beir.corpus)
    q_full = reference.encode(list(beir.queries.values()), prompt_name="query")  # type: ignore[attr-defined]
    d_full = reference.encode(list(beir.corpus.values()), prompt_name="document")  # type: ignore[attr-defined]
    measures = [ir_measures.parse_measure(m) for m in ("nDCG@10", "R@1", "R@10", "RR")]
    for dims in (64, 32):
        q = q_full[:, :dims] / np.linalg.norm(q_full[:, :dims], axis=1, keepdims=True)
        d = d_full[:, :dims] / np.linalg.norm(d_full[:, :dims], axis=1, keepdims=True)
        scores = q @ d.T
        run = {}
        for qi, row in enumerate(scores):
            top = np.argsort(-row)[:100]  # the same depth the command ranks to
            run[query_ids[qi]] = {doc_ids[j]: float(row[j]) for j in top}
        values = ir_measures.calc_aggregate(measures, beir.qrels, run)
        expected = [float(values[m]) for m in measures]
        assert got[dims] == pytest.approx(expected, abs=1e-4), (dims, got[dims], expected)


def test_readme_python_client_block(facade: Facade, capsys: pytest.CaptureFixture[str]) -> None:
    """The 'Python client' block of docs/clients.md runs as written, aimed at the test facade."""
    from tests.doc_pages import CLIENTS, code_blocks, section

    [code] = code_blocks(section(CLIENTS, "## Python client"), "python")
    exec(compile(code.replace("localhost:50051", facade.target), f"{CLIENTS} (Python client)", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("(1000, 64) ") and lines[1] == "{1: 'input 0 is an empty string'}"
    assert lines[2] == "(1, 64)"
