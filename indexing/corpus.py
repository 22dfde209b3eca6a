"""Reading corpora: JSONL, CSV/TSV or Parquet for `index`; BEIR folders (corpus, queries, qrels) for `eval`.

`index` never embeds anything but a string cell, and never turns an id into other text: a cell of another
type, a line that does not parse or an id that is not a string or an integer is a row *problem* (a reject with
its reason), not a failed job and never a Python repr. Ids keep their exact text:
- JSONL: a string as is; a JSON number only when integer-valued, kept as written (`1` is "1", `1.0` is "1.0",
  so they stay two ids); null, true/false, objects, arrays, 1.5 and 1e400 are rejects.
- CSV/TSV: every cell is text, as written ("007" keeps its zeros).
- Parquet, by column type: strings as is; integer columns as decimal digits; float or decimal columns hold
  integer ids when written by pandas with gaps, so an integer value is its digits ("123", never "123.0") and
  anything else (1.5, NaN, beyond 2^53 where floats skip integers) is a reject; other types are rejects.
Text cells must be strings (Parquet: a string column); numbers, booleans, objects, arrays and binary are
rejects, as are lone surrogates (not Unicode; no request could carry them).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A text beyond this many UTF-8 bytes cannot travel in one request under the server's default 16 MiB message
# and body limits once JSON escapes it: refused here rather than retried as overload until the job fails.
MAX_TEXT_BYTES = 8 << 20
# Integers above this are not all representable as float64: a float id there may not be the id written.
MAX_EXACT_FLOAT_INT = 1 << 53


def corpus_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"{path}: unknown corpus format (use .jsonl, .csv, .tsv or .parquet)")


@dataclass
class Corpus:
    """Rows in input order: `ids[i]` (None when the row has no usable id), `texts[i]` (None: no text) and
    `problems[i]`, the reason row i is rejected before anything is sent."""

    ids: list[str | None] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)
    problems: dict[int, str] = field(default_factory=dict)

    def add(self, row_id: str | None, text: str | None, problems: list[str]) -> None:
        if problems:
            self.problems[len(self.ids)] = "; ".join(problems)
        self.ids.append(row_id)
        self.texts.append(text)

    def __len__(self) -> int:
        return len(self.ids)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a JSON \ud800 escape, or undecodable bytes escaped)
        return False
    return True


def check_text(text: str) -> str | None:
    """Why a string text cannot be embedded, or None."""
    if not _is_unicode(text):
        return "text is not valid Unicode (a lone surrogate or bytes that are not UTF-8)"
    if len(text) > MAX_TEXT_BYTES // 4 and len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        return f"text is {len(text.encode('utf-8'))} bytes, over the {MAX_TEXT_BYTES} a request can carry"
    return None


def check_id(row_id: str) -> str | None:
    if not row_id:
        return "empty id"
    if not _is_unicode(row_id):
        return "id is not valid Unicode (a lone surrogate or bytes that are not UTF-8)"
    return None


# ------------------------------------------------------------------------------------------------- JSONL


class _Number(str):
    """A JSON number kept as the literal text it was written as."""


class _Object(dict[str, Any]):
    duplicates: set[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.duplicates = set()
    if len(obj) < len(pairs):  # JSON allows a key twice and the last one would silently win
        keys = [k for k, _ in pairs]
        obj.duplicates = {k for k in obj if keys.count(k) > 1}
    return obj


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, _Number):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string"


def _json_loads(line: str) -> Any:
    line = line.removeprefix("\ufeff")  # a byte-order mark some editors write at the start of the file
    return json.loads(line, parse_int=_Number, parse_float=_Number, parse_constant=_Number, object_pairs_hook=_object)


def _json_problem(exc: ValueError | RecursionError) -> str:
    """Why a line does not parse, placed by column (the line number is the file's, given by the caller)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"


def json_id(value: Any) -> tuple[str | None, str | None]:
    """(id text, problem) for a JSON value: a string, or an integer-valued number kept as written."""
    if isinstance(value, _Number):
        try:
            number = float(value)
        except ValueError:  # NaN/Infinity literals
            number = math.nan
        if not math.isfinite(number) or not number.is_integer():
            return None, f"id {value[:40]} is not an integer"
        return str(value), None
    if isinstance(value, str):
        return value, check_id(value)
    return None, f"id is {_json_kind(value)}, not a string or an integer"


def _text_cell(value: Any) -> tuple[str | None, str | None]:
    """(text, problem): None for null or absent; strings only."""
    if value is None:
        return None, None
    if isinstance(value, str) and not isinstance(value, _Number):
        return value, check_text(value)
    return None, f"text is {_json_kind(value)}, not a string"


def read_jsonl(path: Path, id_field: str, text_field: str) -> Corpus:
    corpus = Corpus()
    seen_id = seen_text = False
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                value = _json_loads(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                corpus.add(None, None, [f"line {number} is not UTF-8"])
                continue
            except (ValueError, RecursionError) as exc:
                corpus.add(None, None, [f"line {number} is not valid JSON: {_json_problem(exc)}"])
                continue
            if not isinstance(value, _Object):
                corpus.add(None, None, [f"line {number} is {_json_kind(value)}, not a JSON object"])
                continue
            problems = []
            if dup := value.duplicates & {id_field, text_field}:
                problems.append(f"line {number} has the field(s) {', '.join(sorted(dup))} twice")
            seen_id |= id_field in value
            seen_text |= text_field in value
            row_id, id_problem = json_id(value[id_field]) if id_field in value else (None, "missing id")
            text, text_problem = _text_cell(value.get(text_field))
            problems += [p for p in (id_problem, text_problem) if p]
            corpus.add(row_id, text, problems)
    _require_fields(path, corpus, {id_field: seen_id, text_field: seen_text})
    return corpus


def _require_fields(path: Path, corpus: Corpus, seen: dict[str, bool]) -> None:
    """A field no row has is a wrong --id-field/--text-field, not a corpus of rejects."""
    parsed = len(corpus) > 0 and not all(p.startswith("line ") for p in corpus.problems.values())
    for name, present in seen.items():
        if parsed and not present:
            raise ValueError(f"{path}: no row has the field {name!r}")


# --------------------------------------------------------------------------------------------------- CSV


def read_delimited(path: Path, id_field: str, text_field: str, delimiter: str) -> Corpus:
    corpus = Corpus()
    line = 1
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a long text is the server's to judge (or MAX_TEXT_BYTES), not csv's
    try:
        # surrogateescape: bytes that are not UTF-8 reach the row, which is then rejected, not the whole file.
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = csv.reader(f, delimiter=delimiter)
            header = next(rows, None)
            if header is None:
                raise ValueError(f"{path}: empty file (no header line)")
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            for name in (id_field, text_field):
                if name not in header:
                    raise ValueError(f"{path}: no field {name!r} (fields: {', '.join(header)[:200]})")
            id_at, text_at = header.index(id_field), header.index(text_field)
            line = rows.line_num + 1
            for row in rows:
                if not row:  # a blank line
                    line = rows.line_num + 1
                    continue
                if len(row) != len(header):
                    corpus.add(None, None, [f"line {line} has {len(row)} fields, the header {len(header)}"])
                else:
                    row_id, text = row[id_at], row[text_at]
                    problems = [p for p in (check_id(row_id), check_text(text) if text else None) if p]
                    corpus.add(row_id if not problems or _is_unicode(row_id) else None, text, problems)
                line = rows.line_num + 1
    except csv.Error as exc:  # rare with these settings; the rows before stand, the reject says where it stopped
        corpus.add(None, None, [f"line {line} cannot be parsed: {exc}"])
    finally:
        csv.field_size_limit(limit)
    return corpus


# ----------------------------------------------------------------------------------------------- Parquet


def _kind(pa: Any, dtype: Any) -> str:
    if pa.types.is_dictionary(dtype):
        return _kind(pa, dtype.value_type)
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return "string"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "float"
    return "other"


def _strings(pa: Any, column: Any) -> list[str | None]:
    """A string column's values; invalid UTF-8 comes back with surrogates (rejected per row), not as an error."""
    try:
        return column.to_pylist()  # type: ignore[no-any-return]
    except (UnicodeDecodeError, pa.ArrowException):
        raw = column.cast(pa.large_binary()).to_pylist()
        return [None if v is None else v.decode("utf-8", "surrogateescape") for v in raw]


def _parquet_ids(pa: Any, column: Any) -> list[tuple[str | None, str | None]]:
    kind = _kind(pa, column.type)
    if kind == "other":
        return [(None, f"id column has type {column.type}; ids must be strings or integers")] * len(column)
    out: list[tuple[str | None, str | None]] = []
    values = _strings(pa, column) if kind == "string" else column.to_pylist()
    for value in values:
        if value is None or (kind == "float" and isinstance(value, float) and math.isnan(value)):
            out.append((None, "missing id"))
        elif kind == "string":
            out.append((value, check_id(value)))
        elif kind == "integer":
            out.append((str(value), None))
        elif value != int(value) or abs(value) > MAX_EXACT_FLOAT_INT:  # float, decimal (finite: NaN above)
            out.append((None, f"id {value} is not an integer (column type {column.type})"))
        else:
            out.append((str(int(value)), None))
    return out


def _parquet_texts(pa: Any, column: Any) -> list[tuple[str | None, str | None]]:
    if _kind(pa, column.type) != "string":
        problem = f"text is {column.type}, not a string"
        return [(None, None if null else problem) for null in column.is_null().to_pylist()]
    return [(t, None if t is None else check_text(t)) for t in _strings(pa, column)]


def read_parquet(path: Path, id_field: str, text_field: str) -> Corpus:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    for name in (id_field, text_field):
        if name not in names:
            raise ValueError(f"{path}: no field {name!r} (fields: {', '.join(names)})")
    table = pq.read_table(path, columns=[id_field, text_field])
    corpus = Corpus()
    ids = _parquet_ids(pa, table.column(id_field).combine_chunks())
    texts = _parquet_texts(pa, table.column(text_field).combine_chunks())
    for (row_id, id_problem), (text, text_problem) in zip(ids, texts, strict=True):
        corpus.add(row_id, text, [p for p in (id_problem, text_problem) if p])
    return corpus


def read_corpus(path: Path, id_field: str, text_field: str) -> Corpus:
    """Every row of the corpus, in input order, with the problems found on reading. Held in memory."""
    fmt = corpus_format(path)
    if fmt == "parquet":
        return read_parquet(path, id_field, text_field)
    if fmt == "jsonl":
        return read_jsonl(path, id_field, text_field)
    return read_delimited(path, id_field, text_field, "\t" if fmt == "tsv" else ",")


# -------------------------------------------------------------------------------------------------- BEIR


class BeirError(ValueError):
    """A BEIR folder `eval` cannot score as given: one message naming the file, the line and the problem."""


@dataclass
class BeirData:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise BeirError(f"{path} is missing")
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                value = _json_loads(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError:
                raise BeirError(f"{where} is not UTF-8") from None
            except (ValueError, RecursionError) as exc:
                raise BeirError(f"{where} is not valid JSON: {_json_problem(exc)}") from None
            if not isinstance(value, dict):
                raise BeirError(f"{where} is {_json_kind(value)}, not a JSON object")
            yield number, value


def _beir_id(value: dict[str, Any], where: str, seen: dict[str, int], number: int) -> str:
    if "_id" not in value:
        raise BeirError(f"{where} has no _id")
    row_id, problem = json_id(value["_id"])
    if problem or row_id is None:
        raise BeirError(f"{where}: {problem}")
    if row_id in seen:
        raise BeirError(f"{where} repeats _id {row_id[:80]!r} (first at line {seen[row_id]})")
    seen[row_id] = number
    return row_id


def _beir_string(value: dict[str, Any], name: str, where: str, required: bool) -> str:
    cell = value.get(name)
    if cell is None:
        if required:
            raise BeirError(f"{where} has no {name!r}")
        return ""
    if not isinstance(cell, str) or isinstance(cell, _Number):
        raise BeirError(f"{where}: {name!r} is {_json_kind(cell)}, not a string")
    if not _is_unicode(cell):
        raise BeirError(f"{where}: {name!r} is not valid Unicode")
    return cell


QRELS_HEADER = ["query-id", "corpus-id", "score"]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """qrels/<split>.tsv: a header line, then query-id, corpus-id, integer score. A file without the header
    is refused (its first judgement would otherwise be read as the header and lost), as is a judgement given
    twice (one would silently win)."""
    if not path.is_file():
        raise BeirError(f"{path} is missing")
    name = f"{path.parent.name}/{path.name}"
    qrels: dict[str, dict[str, int]] = {}
    first_at: dict[tuple[str, str], int] = {}
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None:
            raise BeirError(f"{name} is empty (expected the header {chr(9).join(QRELS_HEADER)!r})")
        if [h.strip().lower() for h in header] != QRELS_HEADER:
            raise BeirError(
                f"{name} line 1 is not the header query-id<TAB>corpus-id<TAB>score (got {header[:3]!r}); "
                "add it: BEIR qrels start with a header, and a first judgement must not be taken for one"
            )
        for row in rows:
            where = f"{name} line {rows.line_num}"
            if not row or row == [""]:
                continue
            if len(row) != 3:
                raise BeirError(f"{where} has {len(row)} fields, expected 3 (query-id, corpus-id, score)")
            query, doc, score = row
            if not query or not doc or not _is_unicode(query + doc):
                raise BeirError(f"{where} has an empty or invalid query-id or corpus-id")
            try:
                value = int(score)
            except ValueError:
                raise BeirError(f"{where}: score {score[:40]!r} is not an integer") from None
            if (query, doc) in first_at:
                raise BeirError(
                    f"{where} judges ({query[:80]}, {doc[:80]}) again (first at line {first_at[query, doc]})"
                )
            first_at[query, doc] = rows.line_num
            qrels.setdefault(query, {})[doc] = value
    if not qrels:
        raise BeirError(f"{name} holds no judgement")
    return qrels


def read_beir(folder: Path, split: str = "test") -> BeirData:
    """A BEIR folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv (query-id,
    corpus-id, score, with a header). Title and text are joined as BEIR's own evaluation does. Only queries
    with judgements are kept. Raises BeirError for the first problem: a missing file or field, an empty
    corpus, a qrels file without its header, a judgement of an unknown query or document."""
    if not folder.is_dir():
        raise BeirError(f"{folder} is not a folder (expected corpus.jsonl, queries.jsonl, qrels/{split}.tsv)")
    corpus: dict[str, str] = {}
    seen: dict[str, int] = {}
    for number, doc in _jsonl_objects(folder / "corpus.jsonl"):
        where = f"corpus.jsonl line {number}"
        doc_id = _beir_id(doc, where, seen, number)
        title = _beir_string(doc, "title", where, required=False)
        text = _beir_string(doc, "text", where, required=True)
        joined = f"{title} {text}".strip()
        if not joined:
            raise BeirError(f"{where}: document {doc_id[:80]!r} has an empty title and text")
        corpus[doc_id] = joined
    if not corpus:
        raise BeirError("corpus.jsonl holds no document")
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    all_queries: dict[str, str] = {}
    seen = {}
    for number, query in _jsonl_objects(folder / "queries.jsonl"):
        where = f"queries.jsonl line {number}"
        query_id = _beir_id(query, where, seen, number)
        text = _beir_string(query, "text", where, required=True)
        if not text.strip():
            raise BeirError(f"{where}: query {query_id[:80]!r} has an empty text")
        all_queries[query_id] = text
    for query_id, judged in qrels.items():
        if query_id not in all_queries:
            raise BeirError(f"qrels/{split}.tsv judges query {query_id[:80]!r}, which queries.jsonl does not have")
        for doc_id in judged:
            if doc_id not in corpus:
                raise BeirError(f"qrels/{split}.tsv judges document {doc_id[:80]!r}, which corpus.jsonl does not have")
    queries = {q: t for q, t in all_queries.items() if q in qrels}
    return BeirData(corpus, queries, qrels)
