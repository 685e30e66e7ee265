"""Stage `prepare` end to end: report, shards, determinism, reuse, bad input, pretraining on it."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from conftest import SHARED_DATA, load_config, run_cli
from gptjax.config import base_config
from gptjax.data import lm, shards
from gptjax.data.tokenizer import EOS, CharTokenizer, SentencePieceTokenizer, load_tokenizer
from gptjax.errors import GptjaxError
from gptjax.loops import prepare

N_INVALID = 3  # bytes of bad UTF-8 planted in one otherwise good record


def _c4(n):
    with open(SHARED_DATA / "llamafactory-pretrain-demo" / "c4_demo.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:n]


def _hongloumeng_paragraphs(n):
    text = (SHARED_DATA / "hongloumeng" / "input.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40][:n]


def _make_inputs(d):
    """web.jsonl.gz (English, with URLs and planted problems), book.txt (Chinese paragraphs),
    poems.json (a JSON array whose text is a list of lines), blocklist.txt."""
    d.mkdir(parents=True, exist_ok=True)
    docs = _c4(41)
    lines = [json.dumps({"text": t, "url": f"https://site{i}.example.com/p"}).encode()
             for i, t in enumerate(docs[:40])]
    lines.append(json.dumps({"text": docs[1], "url": "https://ads.spam.com/x"}).encode())
    lines.append(json.dumps({"text": "  " + docs[3].upper() + "\n"}).encode())  # exact dup
    lines.append(json.dumps({"text": docs[5].replace(" the ", " a ", 1)}).encode())  # near dup
    bad = docs[40][:200].encode() + b"\xff\xfe\xfd" + docs[40][200:].encode()  # 3 invalid bytes
    lines.append(b'{"text": "' + bad.replace(b'"', b"'").replace(b"\n", b"\\n") + b'"}')
    lines.append(b'{"text": "' + b"\xff" * 300 + b' mostly garbage"}')  # broken encoding
    (d / "web.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n", mtime=0))
    (d / "book.txt").write_text("\n\n".join(_hongloumeng_paragraphs(120)), encoding="utf-8")
    poems = [{"paragraphs": ["床前明月光，疑是地上霜。", "举头望明月，低头思故乡。"]},
             {"paragraphs": ["白日依山尽，黄河入海流。", "欲穷千里目，更上一层楼。"]}]
    (d / "poems.json").write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    (d / "blocklist.txt").write_text("spam.com\n", encoding="utf-8")
    return d


def _config(d, **over):
    c = base_config()
    c.stage = "prepare"
    p = c.prepare
    p.inputs = (str(d / "web.jsonl.gz"), str(d / "book.txt"), str(d / "poems.json"))
    p.text_field = "text|paragraphs"
    p.url_field = "url"
    p.filters.url_blocklist = str(d / "blocklist.txt")
    p.val_fraction = 0.1
    p.num_shards = 2
    p.tokenizer.vocab_size = 2500
    p.tokenizer.character_coverage = 0.995
    for k, v in over.items():
        node = c
        *parents, leaf = k.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = v
    return c


def _tree(path):
    """{relative path: (sha256, inode, mtime)} of every file under path."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            st = os.stat(full)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = (hashlib.sha256(f.read()).hexdigest(),
                                                    st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    inputs = _make_inputs(root / "inputs")
    result = prepare.run(_config(inputs), str(root / "run1"))
    return root, inputs, result


def test_report_counts_every_filter(prepared):
    root, _, result = prepared
    r = result.report
    assert not result.reused
    assert r["input"]["files"] == 3 and r["input"]["invalid_bytes"] == N_INVALID + 300
    assert r["input"]["documents"] == 40 + 5 + 120 + 2
    removed = r["removed"]
    assert removed["url_blocklist"]["documents"] == 1
    assert removed["broken_encoding"]["documents"] == 1
    assert removed["exact_duplicate"]["documents"] == 1
    assert removed["near_duplicate"]["documents"] == 1
    # the record with a few bad bytes survives without them (C4 also has literal U+FFFDs)
    assert r["cleaning"]["replacement_chars_removed"] >= N_INVALID
    corpus = "".join(open(os.path.join(result.out_dir, "corpus", f), encoding="utf-8").read()
                     for f in sorted(os.listdir(os.path.join(result.out_dir, "corpus"))))
    assert json.dumps(_c4(41)[40][150:200])[1:-1] in corpus
    assert set(r["languages"]["kept"]) == {"en", "zh"}
    kept = r["output"]["documents"]
    assert kept == r["input"]["documents"] - r["removed_total"]["documents"]
    assert r["output"]["train_documents"] + r["output"]["val_documents"] == kept
    assert sum(r["length_histogram"]["kept"]) == kept
    assert r["tokenizer"]["tokens_per_char"] < 1.0
    out = result.out_dir
    with open(os.path.join(out, "length_histogram.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
        assert json.load(f) == r


def test_token_shards_decode_to_the_cleaned_corpus(prepared):
    _, _, result = prepared
    out = result.out_dir
    tok = load_tokenizer(os.path.join(out, "tokenizer.json"))
    meta = json.load(open(os.path.join(out, "tokens", "meta.json")))
    assert meta["eos_id"] == tok.specials[EOS] and meta["dtype"] == "uint16"
    for split in shards.SPLITS:
        for i, s in enumerate(meta["splits"][split]):
            ids = np.fromfile(os.path.join(out, "tokens", s["file"]), dtype="<u2")
            assert len(ids) == s["tokens"] and ids[-1] == meta["eos_id"]
            docs = np.split(ids, np.nonzero(ids == meta["eos_id"])[0] + 1)[:-1]
            with open(os.path.join(out, "corpus", f"{split}-{i:05d}-of-00002.jsonl"),
                      encoding="utf-8") as f:
                texts = [json.loads(line)["text"] for line in f]
            assert [tok.decode(d[:-1].tolist()) for d in docs] == texts


def test_same_input_gives_identical_bytes_and_a_rerun_reuses(prepared):
    root, inputs, first = prepared
    second = prepare.run(_config(inputs), str(root / "run2"))
    a, b = _tree(first.out_dir), _tree(second.out_dir)
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    again = prepare.run(_config(inputs), str(root / "run2"))
    assert again.reused and again.report == second.report
    assert _tree(second.out_dir) == b  # not rewritten: same inodes and mtimes


def test_changed_input_or_config_is_redone(prepared, tmp_path):
    _, inputs, first = prepared
    moved = shutil.copytree(inputs, tmp_path / "inputs")
    wd = str(tmp_path / "run")
    shutil.copytree(os.path.dirname(first.out_dir), wd)
    assert prepare.run(_config(moved), wd).reused  # same bytes elsewhere: still reused
    with open(moved / "book.txt", "a", encoding="utf-8") as f:
        f.write("\n\n新加的一段文字，内容与前面的段落都不相同，用来检查重新处理。")
    redone = prepare.run(_config(moved), wd)
    assert not redone.reused
    assert redone.report["input"]["documents"] == first.report["input"]["documents"] + 1
    assert not prepare.run(_config(moved, **{"prepare.dedup.threshold": 0.9}), wd).reused


def test_failed_run_keeps_the_previous_outputs(prepared, tmp_path):
    _, inputs, first = prepared
    wd = str(tmp_path / "run")
    shutil.copytree(os.path.dirname(first.out_dir), wd)
    before = _tree(wd)
    with pytest.raises(GptjaxError, match="vocabulary"):
        prepare.run(_config(inputs, **{"prepare.tokenizer.vocab_size": 60000}), wd)
    with pytest.raises(GptjaxError, match=r"every one of the 167 documents was removed "
                                          r"\(language: 165, "):
        prepare.run(_config(inputs, **{"prepare.filters.languages": ("ko",)}), wd)
    assert _tree(wd) == before  # untouched, and no temporary folder left behind


def _tiny(tmp_path, name, content: bytes):
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("empty", "hold no documents"),
    ("field", r"q.jsonl has the text field 'text\|paragraphs' \(its records have keys "
              r"\['question'\]\)"),
    ("vocab", "lower the tokenizer vocabulary size.*prepare.tokenizer.vocab_size=5000"),
])
def test_bad_input_is_one_clear_message(tmp_path, case, match):
    c = _config(tmp_path)
    c.prepare.filters.url_blocklist = ""
    c.prepare.filters.quality = c.prepare.filters.repetition = False
    c.prepare.dedup.exact = c.prepare.dedup.near = False
    c.prepare.tokenizer.vocab_size = 5000
    if case == "missing":
        c.prepare.inputs = (str(tmp_path / "nope.jsonl"),)
    elif case == "empty":
        c.prepare.inputs = (_tiny(tmp_path, "empty.txt", b"\n\n"),)
    elif case == "field":
        c.prepare.inputs = (_tiny(tmp_path, "q.jsonl", b'{"question": "why?"}\n'),)
    else:
        c.prepare.inputs = (_tiny(tmp_path, "t.txt", "\n\n".join(
            f"short document number {i}" for i in range(30)).encode()),)
    with pytest.raises(GptjaxError, match=match):
        prepare.run(c, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "prepared")


def test_cli_alias_reports_errors_in_one_line(tmp_path):
    r = run_cli("gptjax.prepare", "--config", "configs/prepare_english.py", "--workdir",
                str(tmp_path / "w"), f"--config.prepare.inputs=('{tmp_path}/missing.txt',)")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "missing.txt" in r.stderr
    r = run_cli("gptjax.prepare", "--config", "configs/tiny.py")
    assert r.returncode == 2 and "not 'prepare'" in r.stderr


# --- reading the shards back --------------------------------------------------------------------

def test_sharded_tokens_behave_as_one_array(tmp_path):
    whole = np.arange(1000, dtype=np.uint16)
    cuts = [0, 130, 130, 600, 1000]  # one empty shard
    paths = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        paths.append(str(tmp_path / f"s{i}.bin"))
        whole[a:b].tofile(paths[-1])
    st = shards.ShardedTokens(paths, np.diff(cuts).tolist(), np.uint16)
    assert len(st) == 1000 and st[999] == 999 and st[-1] == 999
    for a, b in [(0, 10), (125, 140), (0, 1000), (590, 610), (995, 1000), (300, 300)]:
        np.testing.assert_array_equal(st[a:b], whole[a:b])
    for pc in (1, 2, 4):  # batch i is the same whatever the number of processes
        parts = [lm.RandomWindows(st, 8, 4, seed=0, process_index=p, process_count=pc)(5)
                 for p in range(pc)]
        np.testing.assert_array_equal(np.concatenate(parts),
                                      lm.RandomWindows(whole, 8, 4, seed=0)(5))


def test_corpus_for_reads_the_prepared_shards(prepared):
    root, _, result = prepared
    data = base_config().data
    data.prepared_dir = os.path.dirname(result.out_dir)
    splits = lm.corpus_for(data, str(root / "unused"))
    assert isinstance(splits.train, shards.ShardedTokens)
    assert len(splits.train) + len(splits.val) == result.report["output"]["tokens"]
    assert isinstance(splits.tokenizer, SentencePieceTokenizer)
    data.prepared_dir = str(root / "nothing_here")
    with pytest.raises(GptjaxError, match="holds no finished prepare run"):
        lm.corpus_for(data, str(root / "unused"))


@pytest.mark.slow
def test_pretrain_on_prepared_shards(prepared, tmp_path):
    _, _, result = prepared
    vocab = result.report["tokenizer"]["vocab_size"]
    wd = tmp_path / "pre"
    r = run_cli("gptjax.train", "--config", "configs/tiny.py", "--config.train.progress=False",
                f"--config.data.prepared_dir={os.path.dirname(result.out_dir)}",
                f"--config.model.vocab_size={vocab}", "--config.train.steps=4",
                "--config.train.eval_every=4", "--config.train.eval_batches=1",
                "--workdir", str(wd))
    assert r.returncode == 0, r.stderr
    with open(wd / "tokenizer.json") as a, open(os.path.join(result.out_dir,
                                                             "tokenizer.json")) as b:
        assert json.load(a) == json.load(b)  # the workdir is self-contained
    records = [json.loads(line) for line in open(wd / "metrics.jsonl")]
    assert np.isfinite(records[-1]["val_loss"])


# --- the shipped configs and the tokenizers on the shipped text ---------------------------------

def test_chinese_classics_config_on_a_subset(tmp_path):
    c = load_config("prepare_chinese_classics")
    poetry = SHARED_DATA / "chinese-poetry"
    c.prepare.inputs = (str(poetry / "诗经"), str(poetry / "论语"))
    c.prepare.tokenizer.vocab_size = 3000
    c.prepare.tokenizer.character_coverage = 0.99
    r = prepare.run(c, str(tmp_path / "zh")).report
    assert set(r["languages"]["kept"]) == {"zh"}
    assert r["output"]["documents"] > 300  # the stanzas' refrains are not "repetition"
    assert r["tokenizer"]["tokens_per_char"] < 1.0


def test_sentencepiece_beats_char_tokens_per_character():
    en_train, en_test = _c4(300)[:250], _c4(300)[250:]
    zh = _hongloumeng_paragraphs(1500)
    zh_train, zh_test = zh[:1300], zh[1300:]
    sp = SentencePieceTokenizer.train(iter(en_train + zh_train), vocab_size=6000,
                                      character_coverage=0.9995)
    for texts in (en_test, zh_test):
        char = CharTokenizer.train("".join(texts))
        n_chars = sum(map(len, texts))
        sp_rate = sum(len(sp.encode(t)) for t in texts) / n_chars
        char_rate = sum(len(char.encode(t)) for t in texts) / n_chars
        assert char_rate == 1.0
        assert sp_rate < 0.9 * char_rate, sp_rate


# --- Parquet corpora ----------------------------------------------------------------------------

def _parquet_and_jsonl(d, n=60):
    """The first n shipped C4 documents as a Parquet file (4 row groups) and as JSONL."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    with gzip.open(lm.embedded_path("c4_demo.jsonl.gz"), "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:n]
    d.mkdir()
    pq.write_table(pa.table({"id": list(range(n)), "text": texts}), str(d / "c4.parquet"),
                   row_group_size=16)
    (d / "c4.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(d / "c4.parquet"), str(d / "c4.jsonl")


def test_parquet_corpus_prepares_byte_identical_to_the_same_rows_as_jsonl(tmp_path):
    parquet, jsonl = _parquet_and_jsonl(tmp_path / "in")
    outs = {}
    for name, path in (("parquet", parquet), ("jsonl", jsonl)):
        c = base_config()
        c.stage = "prepare"
        c.prepare.inputs, c.prepare.num_shards = (path,), 2
        c.prepare.tokenizer.vocab_size = 600
        outs[name] = prepare.run(c, str(tmp_path / name))
    a, b = (os.path.join(outs[k].out_dir, "tokens") for k in ("parquet", "jsonl"))
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)) and len(os.listdir(a)) == 5
    for name in os.listdir(a):  # 4 token shards and their meta.json
        with open(os.path.join(a, name), "rb") as x, open(os.path.join(b, name), "rb") as y:
            assert x.read() == y.read(), name
    with open(os.path.join(outs["parquet"].out_dir, "tokenizer.json"), "rb") as x, \
            open(os.path.join(outs["jsonl"].out_dir, "tokenizer.json"), "rb") as y:
        assert x.read() == y.read()
    assert outs["parquet"].report["output"] == outs["jsonl"].report["output"]
    assert outs["parquet"].report["output"]["documents"] > 40
    # so pretraining reads the same token arrays and tokenizer from either
    data = base_config().data
    splits = {}
    for k, r in outs.items():
        data.prepared_dir = os.path.dirname(r.out_dir)
        splits[k] = lm.corpus_for(data, str(tmp_path / f"pre_{k}"))
    for split in ("train", "val"):
        np.testing.assert_array_equal(getattr(splits["parquet"], split)[:],
                                      getattr(splits["jsonl"], split)[:])


def test_cli_bad_parquet_exits_2_with_one_line(tmp_path):
    parquet, _ = _parquet_and_jsonl(tmp_path / "in", n=4)
    raw = open(parquet, "rb").read()
    open(parquet, "wb").write(raw[: len(raw) // 2])  # a download cut short
    r = run_cli("gptjax.prepare", "--config", "configs/prepare_english.py", "--workdir",
                str(tmp_path / "w"), f"--config.prepare.inputs=('{parquet}',)")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert f"{parquet} is not a readable Parquet file" in r.stderr and "export it again" in r.stderr
