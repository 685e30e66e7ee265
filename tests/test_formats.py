"""Your own SFT files: each format (messages, prompt/completion, Alpaca, ShareGPT) in .jsonl,
.jsonl.gz and .parquet renders to the ids and loss mask of the same conversations given through
the built-in readers; detection, forcing, rejected rows, mixing with named sets, bad input."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from conftest import SHARED_DATA, write_rows

from gptjax.data import formats, sft as sft_data, sources
from gptjax.data.lm import embedded_path
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import GptjaxError

ROLE_TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}


@functools.lru_cache(maxsize=1)
def _builtin():
    """Single-turn (GSM8K), multi-turn (Topical-Chat, cut to end with the assistant) and
    hand-written ones with a system turn and a two-line Alpaca instruction + input."""
    convs = sft_data.read_gsm8k(str(SHARED_DATA))[:12]
    for c in sft_data.read_topical_chat(str(SHARED_DATA))[:6]:
        convs.append(c[:len(c) // 2 * 2])
    convs.append([{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Sort these numbers.\n3, 1, 2"},
                  {"role": "assistant", "content": "1, 2, 3"}])
    convs.append([{"role": "system", "content": "You are a tutor."},
                  {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6"}])
    tok = CharTokenizer.train("".join(t["content"] for c in convs for t in c))
    return tuple(convs), tok


def as_format(conv, fmt, i):
    """One conversation as a record of `fmt` (alternating between the format's variants)."""
    if fmt == "messages":
        return {"messages": conv}
    if fmt == "prompt_completion":  # list form; _string_form below writes the string form
        return {"prompt": conv[:-1], "completion": conv[-1:]}
    system = [t["content"] for t in conv if t["role"] == "system"]
    body = [t for t in conv if t["role"] != "system"]
    if fmt == "alpaca":
        instruction, _, extra = body[-2]["content"].partition("\n")
        rec = {"instruction": instruction, "input": extra, "output": body[-1]["content"],
               "history": [[body[k]["content"], body[k + 1]["content"]]
                           for k in range(0, len(body) - 2, 2)]}
        return {**rec, "system": system[0]} if system else rec
    if fmt == "sharegpt":
        top = system and i % 2  # the system prompt as a column or as the first turn
        turns = [{"from": ROLE_TO_SHAREGPT[t["role"]], "value": t["content"]}
                 for t in (body if top else conv)]
        return {"conversations": turns, **({"system": system[0]} if top else {})}
    raise ValueError(fmt)


def _examples(convs, tok):
    usable, stats = sft_data.tokenize(convs, tok, 100_000)
    assert stats.kept() == len(convs)
    return [ex for _, ex in usable]


@pytest.mark.parametrize("fmt", formats.FORMATS)
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_each_format_renders_like_the_builtin_reader(tmp_path, fmt, suffix):
    convs, tok = _builtin()
    convs = list(convs)
    rows = [as_format(c, fmt, i) for i, c in enumerate(convs)]
    entry = write_rows(tmp_path / f"mine{suffix}", rows)
    if fmt == "prompt_completion":  # plus the string form, in a second file: a glob entry
        single = [c for c in convs if len(c) == 2]
        write_rows(tmp_path / f"mine2{suffix}", [
            {"prompt": c[0]["content"], "completion": c[1]["content"]} for c in single])
        convs = convs + single
        entry = str(tmp_path / f"mine*{suffix}")
    got, reports = sft_data.read_files(entry)
    assert [r.format for r in reports] == [fmt] * len(reports) and not any(
        r.rejected for r in reports)
    for (ids, mask), (want_ids, want_mask) in zip(_examples(got, tok), _examples(convs, tok),
                                                  strict=True):
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(mask, want_mask)


def test_files_mix_by_weight_with_named_sets(tmp_path):
    named = sft_data.read_self_instruct(str(SHARED_DATA))
    convs = named[:40]
    path = write_rows(tmp_path / "si.parquet", [as_format(c, "sharegpt", 0) for c in convs])
    tok = CharTokenizer.train("".join(t["content"] for c in named for t in c))
    train, weights, val, stats = sft_data.load(str(SHARED_DATA), f"self-instruct:1,{path}:0.5",
                                               tok, 4096, 0.1)
    assert weights == [1.0, 0.5] and set(stats) == {"self-instruct", path}
    assert stats[path].conversations == 40 and stats[path].rejected == {}
    # the file's 36 training conversations: the split of the named set's first 40, rendered
    want, _ = sources.split(_examples(convs, tok), 0.1)
    assert len(train[1]) == len(want) == 36
    assert len(val) == round(stats["self-instruct"].kept() * 0.1) + 4
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(train[1], want))


def test_rejected_rows_are_counted_with_file_and_line(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps(good),
        "this line is not JSON",
        json.dumps({"messages": [{"role": "tool", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "  "},
                                 {"role": "assistant", "content": "a"}]}),
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps({"messages": [{"role": "user", "content": 5},
                                 {"role": "assistant", "content": "a"}]}),
        json.dumps({"text": "no messages field"}),
        json.dumps(good)]) + "\n")
    convs, rep = formats.read_conversations(str(path))
    assert len(convs) == 2 and rep.rows == 8 and rep.format == "messages"
    assert dict(rep.rejected) == {"not_json": 1, "unknown_role": 1, "empty_turn": 1,
                                  "no_assistant": 1, "wrong_type": 1, "missing_field": 1}
    assert rep.first["not_json"].startswith(f"{path} line 2 is not JSON")
    assert rep.first["unknown_role"] == (f"{path} line 3 turn 0 has role 'tool'; known: "
                                         "['assistant', 'system', 'user']")
    assert rep.first["missing_field"].startswith(f"{path} line 7 has no 'messages'")


def test_format_is_forced_and_a_file_with_nothing_usable_is_one_error(tmp_path):
    # fields of two formats: detection takes "messages"; forcing reads it as Alpaca
    row = {"messages": [{"role": "user", "content": "a"}], "instruction": "say hi",
           "output": "hi"}
    path = write_rows(tmp_path / "both.jsonl", [row])
    with pytest.raises(GptjaxError) as e:
        formats.read_conversations(path)
    msg = str(e.value)
    assert "\n" not in msg and f"{path}: none of its 1 rows" in msg and "line 1" in msg
    assert "--config.data.format" in msg
    assert formats.read_conversations(path, "alpaca")[0] == [
        [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"}]]
    bad = write_rows(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(GptjaxError, match=r"odd.jsonl line 1: cannot tell the conversation "
                                          r"format from the fields \['answer', 'question'\]"):
        formats.read_conversations(bad)
    notjson = tmp_path / "notjson.jsonl"
    notjson.write_text("{oops\n")
    with pytest.raises(GptjaxError, match=r"notjson.jsonl holds no JSON record \(.*notjson.jsonl "
                                          r"line 1 is not JSON \(.*\)\); give it one JSON"):
        formats.read_conversations(str(notjson))
    with pytest.raises(GptjaxError, match="data.format='chatml'"):
        formats.check_format("chatml")


@pytest.mark.parametrize("entry, match", [
    ("{tmp}/missing.jsonl", "does not exist"),
    ("{tmp}/*.nothing", "matches no .jsonl"),
    ("{tmp}/data.json", "reads .jsonl, .jsonl.gz and .parquet files"),
    ("{tmp}/broken.parquet", r"broken.parquet is not a readable Parquet file"),
])
def test_bad_file_entries(tmp_path, entry, match):
    (tmp_path / "data.json").write_text("[]")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(GptjaxError, match=match):
        sft_data.read_files(entry.format(tmp=tmp_path))


def test_mixture_entries_names_and_files():
    assert sources.parse_mixture("a.jsonl:2, data/*.parquet, gsm8k", ["gsm8k"]) == [
        ("a.jsonl", 2.0), ("data/*.parquet", 1.0), ("gsm8k", 1.0)]
    with pytest.raises(GptjaxError, match="unknown data set 'nope'.*or a path, glob or folder"):
        sources.parse_mixture("nope", ["gsm8k"])


def test_shipped_examples_are_read_without_rejections():
    for name, fmt in [("sft_messages.jsonl", "messages"), ("sft_messages.parquet", "messages"),
                      ("sft_prompt_completion.jsonl", "prompt_completion"),
                      ("sft_alpaca.jsonl", "alpaca"), ("sft_sharegpt.jsonl", "sharegpt")]:
        convs, rep = formats.read_conversations(embedded_path(f"examples/{name}"))
        assert rep.format == fmt and len(convs) == 3 and not rep.rejected, name
    convs, _ = formats.read_conversations(embedded_path("examples/sft_alpaca.jsonl"))
    assert convs[0][0] == {"role": "user", "content": "Sort these numbers in ascending order."
                                                      "\n5, 2, 9"}  # LLaMA-Factory's join
    assert [t["role"] for t in convs[2]] == ["system", "user", "assistant", "user", "assistant"]


def test_sft_cli_trains_on_a_file_and_reports_rejected_rows(trained, tmp_path):
    import os

    from conftest import run_cli
    good = [{"conversations": [{"from": "human", "value": f"speak {w}"},
                               {"from": "gpt", "value": f"{w}, my lord."}]}
            for w in ("now", "again", "softly", "here", "there", "once", "twice", "anon")]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good[:4]) + "not json\n"
                    + json.dumps({"conversations": [{"from": "tool", "value": "x"}]}) + "\n"
                    + "".join(json.dumps(r) + "\n" for r in good[4:]))
    wd = tmp_path / "sft"
    r = run_cli("gptjax.train", "--config", "configs/sft_dialogues.py",
                f"--config.init_from={trained}", f"--config.data.mixture={path}",
                "--config.data.val_fraction=0.25", "--config.train.steps=2",
                "--config.train.batch_size=2",
                "--config.train.eval_every=2", "--config.train.eval_batches=1",
                "--config.train.checkpoint_every=2", "--config.train.progress=False",
                "--workdir", str(wd))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"sft data {path}: 8 of 8 conversations" in r.stdout
    assert f"1 rows rejected as not_json, the first at {path} line 5 is not JSON" in r.stdout
    assert f"1 rows rejected as unknown_role, the first at {path} line 6 turn 0 has from 'tool'" \
        in r.stdout
    stats = json.load(open(os.path.join(wd, "data_stats.json")))[str(path)]
    assert stats["rejected"] == {"not_json": 1, "unknown_role": 1} and stats["kept"] == 8
