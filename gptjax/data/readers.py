"""Raw documents from plain text, JSON, JSONL (each optionally gzip-compressed) and Parquet files.

Formats, by file name (a trailing `.gz` is decompressed on the fly):
  *.jsonl    one JSON object per line (streamed: the file never sits in memory);
  *.json     a JSON array of objects, or one object (parsed whole: use JSONL for big files);
  *.parquet  a table with a text column (FineWeb, C4 and Wikipedia dumps of the HF hub), read
             with pyarrow one record batch of one row group at a time (streamed);
  other      plain text, split into documents by `text_unit`: "file" (the whole file),
             "paragraph" (blank-line separated, streamed) or "line" (one document a line).

Bytes that are not valid UTF-8 never stop a run: each invalid byte becomes U+FFFD and is counted
(`Document.invalid_bytes`); the cleaning step then drops or strips them and the report says how
many there were.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import gzip
import io
import json
import os
from typing import Iterable, Iterator

from gptjax.errors import GptjaxError

TEXT_UNITS = ("file", "paragraph", "line")
_SUFFIXES = (".txt", ".json", ".jsonl", ".md", ".parquet")  # what a directory input contributes


@dataclasses.dataclass
class Document:
    text: str
    source: str  # path of the file it came from
    url: str | None = None
    invalid_bytes: int = 0  # bytes of the source that were not UTF-8 (now U+FFFD each)


@dataclasses.dataclass
class ReadStats:
    files: int = 0
    bytes: int = 0  # raw size of the inputs as stored (compressed size for .gz)
    invalid_bytes: int = 0
    missing_field: int = 0  # JSON records without the text field (skipped)
    bad_json_lines: int = 0  # JSONL lines that are not JSON objects (skipped)


# Invalid UTF-8 bytes -> U+FFFD, one per byte, counted. A codec error handler is global, so the
# count lives in a module-level cell; the pipeline reads it per document (single-threaded).
_INVALID = [0]


def _count_invalid(err: UnicodeDecodeError):
    _INVALID[0] += err.end - err.start
    return "\ufffd" * (err.end - err.start), err.end


codecs.register_error("gptjax.count_invalid", _count_invalid)


def decode_counting(raw: bytes) -> tuple[str, int]:
    """UTF-8 decode that never fails: (text, number of invalid bytes replaced by U+FFFD)."""
    before = _INVALID[0]
    text = raw.decode("utf-8", errors="gptjax.count_invalid")
    return text, _INVALID[0] - before


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Files named by paths, glob patterns (`**` recurses) or directories, sorted per entry."""
    patterns = list(patterns)
    if not patterns:
        raise GptjaxError("prepare.inputs is empty: give it text, JSON or JSONL files, e.g. "
                          "--config.prepare.inputs=\"('data/*.jsonl.gz',)\"")
    files: list[str] = []
    for pat in patterns:
        if os.path.isdir(pat):
            found = sorted(p for p in glob.glob(os.path.join(pat, "**", "*"), recursive=True)
                           if os.path.isfile(p) and _stem(p).endswith(_SUFFIXES)
                           and os.path.basename(p).lower() != "readme.md")
        elif glob.has_magic(pat):
            found = sorted(p for p in glob.glob(pat, recursive=True) if os.path.isfile(p))
        elif os.path.isfile(pat):
            found = [pat]
        else:
            raise GptjaxError(f"input {pat!r} does not exist (working directory {os.getcwd()}); "
                              "fix the path in prepare.inputs")
        if not found:
            raise GptjaxError(f"input {pat!r} matches no files; fix prepare.inputs")
        files.extend(f for f in found if f not in files)
    return files


def _stem(path: str) -> str:
    return path[:-3] if path.endswith(".gz") else path


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _field(record: dict, names: list[str]):
    for name in names:
        if name in record:
            return record[name]
    return None


def _as_text(value) -> str | None:
    """A field's text: a string, or a list of strings (paragraphs) joined with newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return None


def read_documents(files: list[str], text_field: str = "text", url_field: str = "",
                   text_unit: str = "paragraph", stats: ReadStats | None = None
                   ) -> Iterator[Document]:
    """Every document of every file, in order.

    text_field: the JSON key (Parquet column) holding the text; "a|b" tries a, then b. A list
    of strings (e.g. a poem's paragraphs) is joined with newlines. url_field: the key of the
    record's URL ("" = none). A JSON file in which no record has the text field, and a Parquet
    file without such a column or whose column holds no text, are errors.
    """
    if text_unit not in TEXT_UNITS:
        raise GptjaxError(f"prepare.text_unit={text_unit!r}: use one of {TEXT_UNITS}")
    stats = stats if stats is not None else ReadStats()
    names = [n for n in text_field.split("|") if n]
    if not names:
        raise GptjaxError("prepare.text_field is empty: name the JSON key holding the text")
    for path in files:
        stats.files += 1
        stats.bytes += os.path.getsize(path)
        stem = _stem(path).lower()
        if stem.endswith(".jsonl"):
            yield from _jsonl(path, names, url_field, stats)
        elif stem.endswith(".parquet"):
            yield from _parquet(path, names, url_field, stats)
        elif stem.endswith(".json"):
            yield from _json(path, names, url_field, stats)
        else:
            yield from _plain(path, text_unit, stats)


def _records_to_docs(path, records, names, url_field, stats, first_keys):
    found = 0
    for rec in records:
        if not isinstance(rec, dict):
            stats.bad_json_lines += 1
            continue
        if first_keys is not None and not first_keys:
            first_keys.extend([k for k in rec if k != "__invalid"][:12])
        text = _as_text(_field(rec, names))
        if text is None:
            stats.missing_field += 1
            continue
        found += 1
        url = rec.get(url_field) if url_field else None
        yield found, Document(text, path, url if isinstance(url, str) else None,
                              rec.pop("__invalid", 0))


def _missing_field_error(path, names, keys):
    return GptjaxError(
        f"no record of {path} has the text field {'|'.join(names)!r} (its records have keys "
        f"{keys}); set --config.prepare.text_field to the key that holds the text")


def _jsonl(path, names, url_field, stats):
    def records():
        with _open_binary(path) as f:
            for raw in f:
                line, bad = decode_counting(raw)
                if bad:
                    stats.invalid_bytes += bad
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    stats.bad_json_lines += 1
                    continue
                if isinstance(rec, dict) and bad:
                    rec["__invalid"] = bad
                yield rec
    keys: list[str] = []
    found = 0
    for found, doc in _records_to_docs(path, records(), names, url_field, stats, keys):
        yield doc
    if not found and keys:
        raise _missing_field_error(path, names, keys)


def _json(path, names, url_field, stats):
    with _open_binary(path) as f:
        text, bad = decode_counting(f.read())
    stats.invalid_bytes += bad
    try:
        data = json.loads(text)
    except ValueError as e:
        raise GptjaxError(f"{path} is not valid JSON ({e}); fix the file or, for one object a "
                          "line, name it *.jsonl") from None
    records = data if isinstance(data, list) else [data]
    keys: list[str] = []
    found = 0
    for found, doc in _records_to_docs(path, records, names, url_field, stats, keys):
        doc.invalid_bytes = bad if found == 1 else 0  # attributed to the file's first document
        yield doc
    if not found and keys:
        raise _missing_field_error(path, names, keys)


def _plain(path, text_unit, stats):
    with _open_binary(path) as f:
        if text_unit == "file":
            text, bad = decode_counting(f.read())
            stats.invalid_bytes += bad
            yield Document(text, path, None, bad)
            return
        buf: list[str] = []
        bad_in_buf = 0
        for raw in io.BufferedReader(f):
            line, bad = decode_counting(raw)
            stats.invalid_bytes += bad
            if text_unit == "line":
                if line.strip():
                    yield Document(line.rstrip("\r\n"), path, None, bad)
                continue
            if line.strip():
                buf.append(line)
                bad_in_buf += bad
            elif buf:
                yield Document("".join(buf).rstrip("\r\n"), path, None, bad_in_buf)
                buf, bad_in_buf = [], 0
        if buf:
            yield Document("".join(buf).rstrip("\r\n"), path, None, bad_in_buf)


def _text_column(path: str, schema, names: list[str]) -> tuple[str, bool]:
    """(the first of `names` that is a column, whether it holds lists of strings)."""
    import pyarrow as pa
    name = next((n for n in names if n in schema.names), None)
    if name is None:
        raise GptjaxError(
            f"{path} has no column {'|'.join(names)!r} (its columns: {schema.names[:12]}); set "
            "--config.prepare.text_field to the column that holds the text")
    kind = schema.field(name).type
    if any(f(kind) for f in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
                             pa.types.is_large_binary)):
        return name, False
    if ((pa.types.is_list(kind) or pa.types.is_large_list(kind))
            and (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type))):
        return name, True
    raise GptjaxError(f"{path} column {name!r} holds {kind}, not text; set "
                      "--config.prepare.text_field to a string column")


def _parquet(path, names, url_field, stats):
    """Documents of a Parquet file's text column: a record batch at a time; a null is counted
    as a missing field. Values are read as bytes and decoded here, so invalid UTF-8 is counted
    as it is for the other formats."""
    import pyarrow as pa
    from gptjax.data.sources import parquet_batches, parquet_file
    pf = parquet_file(path)
    schema = pf.schema_arrow
    name, is_list = _text_column(path, schema, names)
    url = url_field if url_field and url_field in schema.names else None
    columns = [name] + ([url] if url and url != name else [])
    for _, batch in parquet_batches(pf, path, columns):
        col = batch.column(name)
        if pa.types.is_string(col.type):  # a zero-copy view of the UTF-8 bytes
            col = col.cast(pa.binary())
        elif pa.types.is_large_string(col.type):
            col = col.cast(pa.large_binary())
        urls = batch.column(url).to_pylist() if url else None
        for i, value in enumerate(col.to_pylist()):
            if value is None or (is_list and None in value):  # as JSON's null: no text
                stats.missing_field += 1
                continue
            if is_list:
                text, bad = "\n".join(value), 0
            else:
                text, bad = decode_counting(value)
            stats.invalid_bytes += bad
            u = urls[i] if urls else None
            yield Document(text, path, u if isinstance(u, str) else None, bad)
