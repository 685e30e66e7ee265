"""Reading raw documents: plain text, JSON, JSONL, gzip; fields; invalid bytes; bad input."""

from __future__ import annotations

import gzip
import json

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
