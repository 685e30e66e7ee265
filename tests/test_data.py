"""gptjax.data: the char tokenizer, corpus preparation and the train / validation pipelines.

The pipelines run on `np.arange` "corpora", where a window's tokens say where it came from:
a row is a real window of the corpus exactly when each token is the previous one plus one.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from gptjax.data.lm import (RandomWindows, prepare_char_corpus, read_text, train_iterator,
                            val_batches)
from gptjax.data.tokenizer import (ASSISTANT, END_OF_TURN, SPECIAL_TOKENS, USER, CharTokenizer,
                                   SentencePieceTokenizer, load_tokenizer, save_tokenizer,
                                   special_id, with_special_tokens)
from gptjax.errors import GptjaxError

TEXT = "hello world\nthe quick brown fox!\n"


# --- tokenizer ---------------------------------------------------------------------------------

def test_char_tokenizer_round_trip_and_save_load(tmp_path):
    tok = CharTokenizer.train(TEXT + "é✓")
    assert tok.chars == sorted(set(TEXT + "é✓"))
    ids = tok.encode("the fox é✓")
    assert ids == [tok.chars.index(c) for c in "the fox é✓"]
    assert tok.decode(ids) == "the fox é✓"
    path = str(tmp_path / "tokenizer.json")
    save_tokenizer(tok, path)
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.chars == tok.chars and loaded.vocab_size == tok.vocab_size
    assert loaded.encode("the fox é✓") == ids


def test_char_tokenizer_special_tokens_follow_the_chars():
    tok = CharTokenizer.train(TEXT)
    n = len(set(TEXT))
    assert [tok.specials[t] for t in SPECIAL_TOKENS] == list(range(n, n + len(SPECIAL_TOKENS)))
    ids = tok.encode(f"{USER}hello{END_OF_TURN}{ASSISTANT}")
    assert ids == [tok.specials[USER], *tok.encode("hello"), tok.specials[END_OF_TURN],
                   tok.specials[ASSISTANT]]
    assert tok.decode(ids) == f"{USER}hello{END_OF_TURN}{ASSISTANT}"


def test_with_special_tokens_appends_without_moving_ids(tmp_path):
    old = CharTokenizer.train(TEXT, specials=())
    assert old.specials == {}
    with pytest.raises(GptjaxError, match="sft"):
        special_id(old, END_OF_TURN)
    new = with_special_tokens(old)
    assert new.encode(TEXT) == old.encode(TEXT)
    assert new.vocab_size == old.vocab_size + len(SPECIAL_TOKENS)
    assert special_id(new, END_OF_TURN) == old.vocab_size + SPECIAL_TOKENS.index(END_OF_TURN)
    assert with_special_tokens(new) is new
    save_tokenizer(new, str(tmp_path / "t.json"))
    assert load_tokenizer(str(tmp_path / "t.json")).specials == new.specials


def _sp_corpus():
    english = TEXT * 20 + "the cat sat on the mat. A dog ran far away, and then came back!\n" * 30
    chinese = "满纸荒唐言，一把辛酸泪。都云作者痴，谁解其中味？\n" * 30
    return (english + chinese).splitlines(keepends=True)


def test_sentencepiece_specials_round_trip_and_save_load(tmp_path):
    tok = SentencePieceTokenizer.train(iter(_sp_corpus()), vocab_size=400)
    assert set(tok.specials) == set(SPECIAL_TOKENS)
    text = f"{USER}the quick 狐狸 🦊\n\n  x\t{END_OF_TURN}"
    ids = tok.encode(text)
    assert tok.specials[USER] == ids[0] and tok.specials[END_OF_TURN] == ids[-1]
    assert tok.decode(ids) == text  # byte fallback: the emoji and tab were never seen
    save_tokenizer(tok, str(tmp_path / "t.json"))
    loaded = load_tokenizer(str(tmp_path / "t.json"))
    assert loaded.encode(text) == ids and loaded.vocab_size == tok.vocab_size


def test_sentencepiece_add_specials_appends_at_the_end():
    tok = SentencePieceTokenizer.train(iter(_sp_corpus()), vocab_size=400)
    grown = tok.add_specials(["<|tool|>"])
    assert grown.vocab_size == tok.vocab_size + 1
    assert grown.sp.piece_to_id("<|tool|>") == tok.vocab_size
    assert grown.encode("the cat 满纸") == tok.encode("the cat 满纸")


def test_sentencepiece_vocab_too_large_is_a_clear_error():
    with pytest.raises(GptjaxError, match="vocabulary size"):
        SentencePieceTokenizer.train(iter(["tiny corpus\n"] * 3), vocab_size=5000)


def test_char_tokenizer_unknown_char_raises():
    with pytest.raises(GptjaxError, match="'Z'"):
        CharTokenizer.train(TEXT).encode("helloZ")


def test_load_tokenizer_missing_file_raises(tmp_path):
    with pytest.raises(GptjaxError, match="no tokenizer"):
        load_tokenizer(str(tmp_path / "nope.json"))


# --- read_text / prepare_char_corpus -----------------------------------------------------------

@pytest.mark.parametrize("content", [None, b"", b"  \n\t \n", b"caf\xe9 latin-1"],
                         ids=["missing", "empty", "whitespace", "not-utf8"])
def test_read_text_errors_name_the_path(tmp_path, content):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GptjaxError) as err:
        read_text(str(path))
    assert str(path) in str(err.value)


def test_read_text_reads_utf8(tmp_path):
    (tmp_path / "a.txt").write_text("café ✓\n", encoding="utf-8")
    assert read_text(str(tmp_path / "a.txt")) == "café ✓\n"


def _decoded(split, tok):
    return tok.decode(np.asarray(split).tolist())


def test_prepare_char_corpus_splits_and_caches(tmp_path):
    text_path, out = tmp_path / "input.txt", str(tmp_path / "data")
    text = TEXT * 3  # 99 characters
    text_path.write_text(text, encoding="utf-8")
    splits = prepare_char_corpus(str(text_path), out, val_fraction=0.1)
    n_val = int(len(text) * 0.1)  # 9
    assert len(splits.train) == len(text) - n_val and len(splits.val) == n_val
    assert _decoded(splits.train, splits.tokenizer) == text[:-n_val]
    assert _decoded(splits.val, splits.tokenizer) == text[-n_val:]
    assert splits.tokenizer.vocab_size == len(set(text)) + len(SPECIAL_TOKENS)

    names = ("train.bin", "val.bin", "meta.json", "tokenizer.json")

    def stamps():  # a rewrite replaces the file: new inode, new mtime
        return {n: (st.st_ino, st.st_mtime_ns)
                for n, st in ((n, os.stat(os.path.join(out, n))) for n in names)}
    before = stamps()
    again = prepare_char_corpus(str(text_path), out, val_fraction=0.1)  # reused, not rewritten
    assert stamps() == before
    np.testing.assert_array_equal(again.train, splits.train)
    assert again.tokenizer.chars == splits.tokenizer.chars

    new_text = "a different text, with new letters: XYZ\n" * 2
    text_path.write_text(new_text, encoding="utf-8")  # same path, new content: redone
    redone = prepare_char_corpus(str(text_path), out, val_fraction=0.1)
    n_val = int(len(new_text) * 0.1)
    assert _decoded(redone.train, redone.tokenizer) == new_text[:-n_val]
    assert _decoded(redone.val, redone.tokenizer) == new_text[-n_val:]
    assert "X" in redone.tokenizer.chars

    redone = prepare_char_corpus(str(text_path), out, val_fraction=0.25)  # new split: redone
    assert len(redone.val) == int(len(new_text) * 0.25)


def test_prepare_char_corpus_too_small_raises(tmp_path):
    (tmp_path / "t.txt").write_text("abc", encoding="utf-8")
    with pytest.raises(GptjaxError, match="too few"):
        prepare_char_corpus(str(tmp_path / "t.txt"), str(tmp_path / "d"), val_fraction=0.1)


# --- training windows --------------------------------------------------------------------------

CORPUS = np.arange(1000, dtype=np.uint16)
SEQ, BATCH = 8, 4


def _assert_real_windows(batch):
    assert batch.shape[1] == SEQ + 1 and batch.dtype == np.int32
    inputs, targets = batch[:, :-1], batch[:, 1:]
    np.testing.assert_array_equal(targets, inputs + 1)  # the next token of the corpus


def test_random_windows_deterministic_and_next_token_targets():
    w = RandomWindows(CORPUS, SEQ, BATCH, seed=0)
    b3 = w(3)
    assert b3.shape == (BATCH, SEQ + 1)
    _assert_real_windows(b3)
    np.testing.assert_array_equal(RandomWindows(CORPUS, SEQ, BATCH, seed=0)(3), b3)
    assert not np.array_equal(w(4), b3)
    assert not np.array_equal(RandomWindows(CORPUS, SEQ, BATCH, seed=1)(3), b3)
    starts = np.concatenate([w(i)[:, 0] for i in range(50)])
    assert starts.min() >= 0 and starts.max() <= len(CORPUS) - SEQ - 1


def test_random_windows_processes_split_the_global_batch():
    whole = RandomWindows(CORPUS, SEQ, BATCH, seed=0)(7)
    parts = [RandomWindows(CORPUS, SEQ, BATCH, seed=0, process_index=p, process_count=2)(7)
             for p in range(2)]
    assert parts[0].shape == (BATCH // 2, SEQ + 1)
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_random_windows_errors():
    with pytest.raises(GptjaxError, match="fewer than one window"):
        RandomWindows(np.arange(5, dtype=np.uint16), seq_len=8, global_batch=2, seed=0)
    with pytest.raises(GptjaxError, match="must divide"):
        RandomWindows(CORPUS, SEQ, global_batch=3, seed=0, process_count=2)


def test_train_iterator_batches_and_processes():
    it = train_iterator(CORPUS, SEQ, BATCH, seed=0)
    batches = [next(it) for _ in range(3)]
    w = RandomWindows(CORPUS, SEQ, BATCH, seed=0)
    for i, b in enumerate(batches):  # batch i of the stream is RandomWindows' batch i
        np.testing.assert_array_equal(b, w(i))
    halves = [train_iterator(CORPUS, SEQ, BATCH, seed=0, process_index=p, process_count=2)
              for p in range(2)]
    for b in batches:
        np.testing.assert_array_equal(np.concatenate([next(h) for h in halves]), b)


def test_train_iterator_state_resumes_the_stream():
    it = train_iterator(CORPUS, SEQ, BATCH, seed=0)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    resumed = train_iterator(CORPUS, SEQ, BATCH, seed=0)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(2)]
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)
    assert not np.array_equal(got[0], first[0])  # really resumed, not restarted


# --- validation windows ------------------------------------------------------------------------

def test_val_batches_fixed_and_split_across_processes():
    tokens = np.arange(100, dtype=np.uint16)
    vb = val_batches(tokens, SEQ, BATCH, num_batches=3)
    assert len(vb) == 3
    for b in vb:
        assert b.shape == (BATCH, SEQ + 1)
        _assert_real_windows(b)
    starts = np.concatenate([b[:, 0] for b in vb])
    # Evenly spaced from the first window to the last one that fits (100 - 9 = 91).
    np.testing.assert_array_equal(starts, np.linspace(0, 91, 12).astype(np.int64))
    again = val_batches(tokens, SEQ, BATCH, num_batches=3)
    for a, b in zip(again, vb):
        np.testing.assert_array_equal(a, b)
    parts = [val_batches(tokens, SEQ, BATCH, 3, process_index=p, process_count=2)
             for p in range(2)]
    for i in range(3):
        assert parts[0][i].shape == (BATCH // 2, SEQ + 1)
        np.testing.assert_array_equal(np.concatenate([parts[0][i], parts[1][i]]), vb[i])


def test_val_batches_too_short_raises():
    with pytest.raises(GptjaxError, match="validation split"):
        val_batches(np.arange(5, dtype=np.uint16), SEQ, BATCH, num_batches=1)
