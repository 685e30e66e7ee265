"""Reading raw documents: plain text, JSON, JSONL, gzip, Parquet; fields; invalid bytes; bad
input; Parquet streams."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from gptjax.data.readers import ReadStats, decode_counting, expand_inputs, read_documents
from gptjax.errors import GptjaxError


def _write(path, data: bytes, gz=False):
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return str(path)


def _texts(files, **kw):
    return [d.text for d in read_documents(files, **kw)]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_formats(tmp_path, gz):
    ext = ".gz" if gz else ""
    txt = _write(tmp_path / f"a.txt{ext}", b"para one\nline two\n\n\npara two\n", gz)
    jsonl = _write(tmp_path / f"b.jsonl{ext}",
                   b'{"text": "first", "url": "http://x.org/1"}\n\n{"text": "second"}\n', gz)
    arr = _write(tmp_path / f"c.json{ext}", json.dumps(
        [{"paragraphs": ["p1", "p2"]}, {"content": "c"}]).encode(), gz)
    obj = _write(tmp_path / f"d.json{ext}", json.dumps({"text": "one object"}).encode(), gz)
    assert _texts([txt]) == ["para one\nline two", "para two"]
    assert _texts([txt], text_unit="line") == ["para one", "line two", "para two"]
    assert _texts([txt], text_unit="file") == ["para one\nline two\n\n\npara two\n"]
    docs = list(read_documents([jsonl], url_field="url"))
    assert [(d.text, d.url) for d in docs] == [("first", "http://x.org/1"), ("second", None)]
    # "a|b": the first key present; a list of strings is joined with newlines
    assert _texts([arr], text_field="paragraphs|content") == ["p1\np2", "c"]
    assert _texts([obj]) == ["one object"]
    assert all(d.source == jsonl for d in docs)


def test_expand_inputs_dirs_globs_and_order(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.txt", "sub/c.json.gz", "README.md", "notes.bin"):
        (tmp_path / name).write_bytes(b"x")
    found = expand_inputs([str(tmp_path)])
    assert [f.removeprefix(str(tmp_path) + "/") for f in found] == ["a.txt", "b.jsonl",
                                                                    "sub/c.json.gz"]
    assert expand_inputs([str(tmp_path / "*.txt"), str(tmp_path / "a.txt")]) == [
        str(tmp_path / "a.txt")]  # listed once


@pytest.mark.parametrize("inputs,match", [
    ([], "prepare.inputs is empty"),
    (["/no/such/file.txt"], "does not exist"),
    (["/no/such/*.jsonl"], "matches no files"),
])
def test_expand_inputs_errors(inputs, match):
    with pytest.raises(GptjaxError, match=match):
        expand_inputs(inputs)


def test_missing_json_field_is_a_clear_error(tmp_path):
    f = _write(tmp_path / "q.jsonl", b'{"question": "a", "answer": "b"}\n')
    with pytest.raises(GptjaxError, match=r"text field 'text'.*\['question', 'answer'\]"):
        list(read_documents([f]))
    f = _write(tmp_path / "q.json", b'[{"question": "a"}]')
    with pytest.raises(GptjaxError, match="set --config.prepare.text_field"):
        list(read_documents([f]))


def test_records_without_the_field_and_bad_lines_are_counted(tmp_path):
    f = _write(tmp_path / "m.jsonl", b'{"text": "a"}\n{"other": 1}\nnot json\n[1, 2]\n'
                                     b'{"text": 5}\n')
    stats = ReadStats()
    assert _texts([f], stats=stats) == ["a"]
    assert (stats.missing_field, stats.bad_json_lines) == (2, 2)


def test_invalid_json_file_is_a_clear_error(tmp_path):
    f = _write(tmp_path / "bad.json", b'[{"text": "a"},')
    with pytest.raises(GptjaxError, match="not valid JSON"):
        list(read_documents([f]))


def test_non_utf8_bytes_are_counted_never_fatal(tmp_path):
    assert decode_counting(b"caf\xe9 \xff\xfe ok") == ("caf\ufffd \ufffd\ufffd ok", 3)
    assert decode_counting("✓".encode()) == ("✓", 0)
    txt = _write(tmp_path / "l.txt", b"caf\xe9 au lait\n\nclean paragraph\n")
    jsonl = _write(tmp_path / "l.jsonl.gz", b'{"text": "na\xefve"}\n{"text": "fine"}\n', gz=True)
    stats = ReadStats()
    docs = list(read_documents([txt, jsonl], stats=stats))
    assert [(d.text, d.invalid_bytes) for d in docs] == [
        ("caf\ufffd au lait", 1), ("clean paragraph", 0), ("na\ufffdve", 1), ("fine", 0)]
    assert stats.invalid_bytes == 2 and stats.files == 2


def test_unknown_text_unit_is_an_error(tmp_path):
    with pytest.raises(GptjaxError, match="text_unit"):
        list(read_documents([_write(tmp_path / "a.txt", b"x")], text_unit="sentence"))


# --- Parquet --------------------------------------------------------------------------------------

def _parquet(path, table, **kw):
    import pyarrow.parquet as pq
    pq.write_table(table, str(path), **kw)
    return str(path)


def test_parquet_streams_row_groups_like_jsonl(tmp_path):
    import pyarrow as pa
    texts = [f"document {i} " + "word " * (i % 5) for i in range(50)]
    urls = [f"http://x.org/{i}" if i % 3 else None for i in range(50)]
    texts[7] = None  # a null: no text, counted like a JSON record without the field
    pq_path = _parquet(tmp_path / "c.parquet", pa.table({"text": texts, "url": urls}),
                       row_group_size=8)  # 7 row groups, read one batch at a time
    jsonl = _write(tmp_path / "c.jsonl", "".join(
        json.dumps({"text": t, "url": u} if t is not None else {"url": u}) + "\n"
        for t, u in zip(texts, urls)).encode())
    a, b = ReadStats(), ReadStats()
    got = [(d.text, d.url) for d in read_documents([pq_path], url_field="url", stats=a)]
    want = [(d.text, d.url) for d in read_documents([jsonl], url_field="url", stats=b)]
    assert got == want and len(got) == 49 and a.missing_field == b.missing_field == 1
    # a list-of-strings column is joined with newlines, as for JSON; "a|b" picks the column
    lists = _parquet(tmp_path / "l.parquet", pa.table({"paragraphs": [["p1", "p2"], ["c"]]}))
    assert _texts([lists], text_field="text|paragraphs") == ["p1\np2", "c"]
    assert expand_inputs([str(tmp_path)]) == [jsonl, pq_path, lists]  # folders include .parquet


@pytest.mark.parametrize("case, match", [
    ("column", r"c.parquet has no column 'text\|body' \(its columns: \['n', 'title'\]\); set "
               r"--config.prepare.text_field to the column that holds the text"),
    ("type", r"c.parquet column 'n' holds int64, not text; set --config.prepare.text_field"),
    ("truncated", r"c.parquet is not a readable Parquet file \(ArrowInvalid: .*\); it is damaged "
                  r"or truncated: download or export it again"),
    ("garbled", r"c.parquet row 1 onwards cannot be decoded .*download or export it again"),
])
def test_bad_parquet_is_one_clear_line(tmp_path, case, match):
    import pyarrow as pa
    path = _parquet(tmp_path / "c.parquet", pa.table({"n": [1, 2], "title": ["a", "b"]}))
    raw = bytearray(open(path, "rb").read())
    if case == "truncated":
        open(path, "wb").write(raw[:-20])
    elif case == "garbled":  # the text column's data pages, not the footer
        raw = bytearray(open(_parquet(path, pa.table({"title": ["some text"] * 9})), "rb").read())
        raw[8:40] = b"\x00" * 32
        open(path, "wb").write(raw)
    field = {"column": "text|body", "type": "n"}.get(case, "title")
    with pytest.raises(GptjaxError, match=match) as e:
        list(read_documents([path], text_field=field))
    assert "\n" not in str(e.value)


def test_parquet_reading_memory_does_not_grow_with_the_file(tmp_path):
    """Arrow memory in use while streaming a 4.8 MB file of 24 row groups stays at a few record
    batches (1,024 rows each); pyarrow's default pre-buffering would hold every column chunk,
    i.e. the whole file."""
    import pyarrow as pa
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"])
    texts = [" ".join(rng.choice(words, size=70)) for _ in range(12_000)]
    path = _parquet(tmp_path / "big.parquet", pa.table({"text": texts}), row_group_size=500,
                    compression="none", use_dictionary=False)
    size = sum(map(len, texts))
    peak = 0
    for i, d in enumerate(read_documents([path])):
        if i % 100 == 0:
            assert d.text == texts[i]
            peak = max(peak, pa.total_allocated_bytes())
    assert peak < size / 4, (peak, size)
