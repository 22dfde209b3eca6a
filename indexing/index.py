"""`qwen3-embed index`: a corpus -> Parquet (id, vector), resumable.

Checkpointing: the corpus is cut into chunks of `chunk_rows` rows in input order; each finished chunk is
committed as its own Parquet file (one row group) in `<output>.parts/` by an atomic rename, with its rejects
beside it. A killed job leaves only whole parts (and *.tmp files, discarded), so a rerun embeds exactly the
chunks without a part: no row twice, none missing. At the end the parts are merged in input order into
`<output>` (and `<output-stem>.rejects.jsonl`), and the parts folder removed. `job.json` in that folder pins
the input and the options, so a rerun with other settings cannot mix vectors.

A row is never a failed job: a problem found on reading (indexing/corpus.py: a cell that is not a string, an
id that is not a string or an integer, a line that does not parse, a text too big for any request) and a text
the server refuses go to the rejects file with their reason, so a rerun after an interruption resumes past
them instead of failing on them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexing.corpus import read_corpus
from service.client import AsyncClient, EmbedOptions, RetryPolicy

PART_PREFIX = "part-"


@dataclass
class IndexConfig:
    input: Path
    output: Path
    id_field: str = "id"
    text_field: str = "text"
    target: str = "localhost:50051"
    api: str = "grpc"
    api_key: str | None = None
    model: str | None = None
    options: EmbedOptions = field(default_factory=lambda: EmbedOptions(prompt_name="document"))
    concurrency: int = 4
    batch_size: int = 128
    chunk_rows: int = 2048
    timeout_s: float = 60.0
    retry_attempts: int = 8
    rejects: Path | None = None
    progress: bool = True
    priority: str | None = "bulk"  # a backfill must not slow search traffic (service/priority.py)

    @property
    def parts_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".parts")

    @property
    def rejects_path(self) -> Path:
        return self.rejects or self.output.with_name(self.output.stem + ".rejects.jsonl")


@dataclass
class Summary:
    rows: int = 0
    written: int = 0
    rejected: int = 0
    resumed_rows: int = 0
    embedded_texts: int = 0
    duplicate_rows: int = 0
    tokens: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return (self.rows - self.resumed_rows) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"{self.rows} rows: {self.written} written, {self.rejected} rejected, {self.resumed_rows} resumed "
            f"from a previous run; {self.embedded_texts} texts embedded ({self.duplicate_rows} duplicate rows "
            f"reused), {self.tokens} tokens, {self.retries} retries, {self.seconds:.1f} s "
            f"({self.rows_per_s:.0f} rows/s, {self.tokens / max(self.seconds, 1e-9):.0f} tokens/s)"
        )


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def part_name(start: int) -> str:
    return f"{PART_PREFIX}{start:012d}.parquet"


def committed_starts(parts_dir: Path) -> set[int]:
    return {int(p.name[len(PART_PREFIX) : -len(".parquet")]) for p in parts_dir.glob(f"{PART_PREFIX}*.parquet")}


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _vector_type(encoding: str) -> Any:
    import pyarrow as pa

    value = {
        "float": pa.float32(),
        "float16": pa.float16(),
        "binary": pa.int8(),
        "ubinary": pa.uint8(),
        "int8": pa.int8(),
        "uint8": pa.uint8(),
    }[encoding]
    return pa.list_(value)


def _table(ids: list[str], vectors: list[np.ndarray], encoding: str) -> Any:
    import pyarrow as pa

    vtype = _vector_type(encoding)
    if vectors:
        flat = np.concatenate([v.reshape(-1) for v in vectors])
        offsets = np.arange(0, len(flat) + 1, len(vectors[0]), dtype=np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=vtype.value_type))
    else:
        column = pa.array([], type=vtype)
    return pa.table({"id": pa.array(ids, type=pa.string()), "vector": column})


def _fingerprint(cfg: IndexConfig, rows: int) -> dict[str, Any]:
    stat = cfg.input.stat()
    return {
        "input": str(cfg.input.resolve()),
        "input_bytes": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "rows": rows,
        "id_field": cfg.id_field,
        "text_field": cfg.text_field,
        "chunk_rows": cfg.chunk_rows,
        "options": asdict(cfg.options),
    }


async def run_index(cfg: IndexConfig, on_progress: Callable[[int, int, int], None] | None = None) -> Summary:
    """Runs (or resumes) the job; `on_progress(rows_done, rows, tokens)` at the start and after each chunk."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    corpus = read_corpus(cfg.input, cfg.id_field, cfg.text_field)
    ids, texts, problems = corpus.ids, corpus.texts, corpus.problems
    summary = Summary(rows=len(ids))
    parts = cfg.parts_dir
    parts.mkdir(parents=True, exist_ok=True)
    for tmp in parts.glob("*.tmp"):  # half-written by a killed run
        tmp.unlink()
    fingerprint = _fingerprint(cfg, len(ids))
    job_file = parts / "job.json"
    if job_file.exists():
        if json.loads(job_file.read_text()) != fingerprint:
            raise ValueError(
                f"{parts} holds a job with another input or other options; remove it to start over"
            )
    else:
        _atomic_write(job_file, lambda p: p.write_text(json.dumps(fingerprint, indent=1)))

    done = committed_starts(parts)
    starts = list(range(0, len(ids), cfg.chunk_rows))
    pending = [s for s in starts if s not in done]
    summary.resumed_rows = sum(min(s + cfg.chunk_rows, len(ids)) - s for s in starts if s in done)

    # Identical texts are embedded once: rows sharing a hash wait for the first chunk that asks for it.
    # Rows with a problem from reading (a cell that is not a string, a bad id or line) are never sent.
    hashes: list[str | None] = [text_hash(t) if t and i not in problems else None for i, t in enumerate(texts)]
    uses = Counter(hashes[i] for s in pending for i in range(s, min(s + cfg.chunk_rows, len(ids))) if hashes[i])
    shared: dict[str, asyncio.Future[tuple[np.ndarray | None, str]]] = {}
    opts = cfg.options
    retry = RetryPolicy(attempts=cfg.retry_attempts)
    rows_done, tokens = summary.resumed_rows, 0

    async with AsyncClient(
        cfg.target,
        api=cfg.api,
        api_key=cfg.api_key,
        model=cfg.model,
        timeout_s=cfg.timeout_s,
        batch_size=cfg.batch_size,
        retry=retry,
        max_concurrency=cfg.concurrency,
        priority=cfg.priority,
    ) as client:
        await client.limits()
        if on_progress:
            on_progress(rows_done, len(ids), 0)
        loop = asyncio.get_running_loop()

        async def chunk(start: int) -> None:
            nonlocal rows_done, tokens
            end = min(start + cfg.chunk_rows, len(ids))
            mine: dict[str, asyncio.Future[tuple[np.ndarray | None, str]]] = {}
            waits: dict[str, asyncio.Future[tuple[np.ndarray | None, str]]] = {}
            for i in range(start, end):
                h = hashes[i]
                if h is None or h in mine or h in waits:
                    continue
                if h in shared:
                    waits[h] = shared[h]
                else:
                    mine[h] = loop.create_future()
                    if uses[h] > 1:
                        shared[h] = mine[h]
            order = list(mine)
            first_row = {h: i for i in range(end - 1, start - 1, -1) if (h := hashes[i]) in mine}
            try:
                got = await client.embed_rows([texts[first_row[h]] or "" for h in order], opts)
            except BaseException as exc:
                for fut in mine.values():
                    if not fut.done():
                        fut.set_exception(exc)
                raise
            for k, h in enumerate(order):
                mine[h].set_result((got.vectors[k], got.errors.get(k, "")))
            tokens += got.prompt_tokens
            summary.embedded_texts += len(order)
            results = {h: f.result() for h, f in mine.items()}
            for h, fut in waits.items():
                results[h] = await fut
            out_ids: list[str] = []
            out_vectors: list[np.ndarray] = []
            rejects: list[dict[str, Any]] = []
            for i in range(start, end):
                h = hashes[i]
                if h is None:
                    reason = problems.get(i) or ("missing text" if texts[i] is None else "empty text")
                    rejects.append({"row": i, "id": ids[i], "reason": reason})
                    continue
                vector, error = results[h]
                if vector is None:
                    rejects.append({"row": i, "id": ids[i], "reason": error})
                else:
                    row_id = ids[i]
                    assert row_id is not None  # a row without an id has a problem: it was never sent
                    out_ids.append(row_id)
                    out_vectors.append(vector)
                uses[h] -= 1
                if uses[h] == 0:
                    shared.pop(h, None)
            summary.duplicate_rows += sum(h is not None for h in hashes[start:end]) - len(order)
            table = _table(out_ids, out_vectors, opts.encoding)
            rejects_file = parts / f"{PART_PREFIX}{start:012d}.rejects.jsonl"

            def commit() -> None:
                # Rejects first: the part's rename is the commit, and a chunk without it is redone whole.
                _atomic_write(rejects_file, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rejects)))
                _atomic_write(parts / part_name(start), lambda p: pq.write_table(table, p))

            await asyncio.to_thread(commit)
            rows_done += end - start
            if on_progress:
                on_progress(rows_done, len(ids), tokens)

        # A few chunks at a time: enough to keep `concurrency` requests busy while one chunk is committed.
        queue: asyncio.Queue[int] = asyncio.Queue()
        for s in pending:
            queue.put_nowait(s)

        async def worker() -> None:
            while not queue.empty():
                await chunk(queue.get_nowait())

        workers = [asyncio.create_task(worker()) for _ in range(max(2, min(cfg.concurrency, 8)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    summary.tokens, summary.retries = tokens, retry.retries
    _merge(cfg, starts, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _merge(cfg: IndexConfig, starts: list[int], summary: Summary) -> None:
    """Parts -> one Parquet file (a row group per part, input order) and one rejects file; then removes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = cfg.parts_dir
    meta = {
        "qwen3_embed.options": json.dumps(asdict(cfg.options)),
        "qwen3_embed.input": str(cfg.input),
    }
    schema = pa.schema([("id", pa.string()), ("vector", _vector_type(cfg.options.encoding))], metadata=meta)
    tmp = cfg.output.with_name(cfg.output.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for s in starts:
            table = pq.read_table(parts / part_name(s))
            summary.written += table.num_rows
            writer.write_table(table.replace_schema_metadata(meta))
    os.replace(tmp, cfg.output)
    rejects_tmp = cfg.rejects_path.with_name(cfg.rejects_path.name + ".tmp")
    with rejects_tmp.open("w") as out:
        for s in starts:
            text = (parts / f"{PART_PREFIX}{s:012d}.rejects.jsonl").read_text()
            summary.rejected += text.count("\n")
            out.write(text)
    os.replace(rejects_tmp, cfg.rejects_path)
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()


def run_with_progress(cfg: IndexConfig) -> Summary:
    """run_index with a rich progress bar on stderr (rows, tokens/s, ETA) unless `cfg.progress` is off."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]index"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows {task.fields[tps]:>8.0f} tokens/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not cfg.progress,
    )
    started = time.perf_counter()
    with progress:
        task = progress.add_task("index", total=None, tps=0.0)

        def update(rows: int, total: int, tokens: int) -> None:
            tps = tokens / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=rows, total=total, tps=tps)

        return asyncio.run(run_index(cfg, on_progress=update))
