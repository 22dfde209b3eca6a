"""Reading corpora: JSONL, CSV/TSV or Parquet for `index`; BEIR folders (corpus, queries, qrels) for `eval`."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


def corpus_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"{path}: unknown corpus format (use .jsonl, .csv, .tsv or .parquet)")


def read_corpus(path: Path, id_field: str, text_field: str) -> tuple[list[str], list[str | None]]:
    """(ids as strings, texts; None where the row has no text). The whole corpus is held in memory."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    fmt = corpus_format(path)
    if fmt == "parquet":
        table = pq.read_table(path, columns=[id_field, text_field])
    elif fmt == "jsonl":
        table = pjson.read_json(path)
    else:
        # Every column as a string: ids like "007" keep their zeros and texts are never parsed as numbers.
        table = pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types={id_field: pa.string(), text_field: pa.string()}),
        )
    for name in (id_field, text_field):
        if name not in table.column_names:
            raise ValueError(f"{path}: no field {name!r} (fields: {', '.join(table.column_names)})")
    ids = [str(v) for v in table.column(id_field).to_pylist()]
    texts = [None if v is None else str(v) for v in table.column(text_field).to_pylist()]
    return ids, texts


@dataclass
class BeirData:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_beir(folder: Path, split: str = "test") -> BeirData:
    """A BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv (query-id,
    corpus-id, score, with a header). Title and text are joined as BEIR's own evaluation does. Only queries
    with judgements are kept."""
    corpus: dict[str, str] = {}
    with (folder / "corpus.jsonl").open() as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                title, text = doc.get("title") or "", doc.get("text") or ""
                corpus[str(doc["_id"])] = f"{title} {text}".strip()
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / f"{split}.tsv").open(newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows, None)
        for row in rows:
            if len(row) >= 3:
                qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    queries: dict[str, str] = {}
    with (folder / "queries.jsonl").open() as f:
        for line in f:
            if line.strip():
                query = json.loads(line)
                if str(query["_id"]) in qrels:
                    queries[str(query["_id"])] = query["text"]
    return BeirData(corpus, queries, qrels)
