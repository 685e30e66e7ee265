"""decode(encode(text)) == text for any text: English, Chinese, emoji, arbitrary bytes.

The sentencepiece tokenizer is trained on a little English and Chinese only, so most of what
hypothesis generates (other scripts, emoji, control characters, lone combining marks, the
literal U+2581 that sentencepiece uses for spaces) must go through byte fallback and still
come back unchanged.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import SHARED_DATA
from gptjax.data.tokenizer import SPECIAL_TOKENS, CharTokenizer, SentencePieceTokenizer

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _training_lines():
    en = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000]
    zh = (SHARED_DATA / "hongloumeng" / "input.txt").read_text(encoding="utf-8")[:30_000]
    return [ln for ln in (en + zh).splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def sp():
    return SentencePieceTokenizer.train(iter(_training_lines()), vocab_size=3000,
                                        character_coverage=0.995)


def _round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@SETTINGS
@given(st.text(max_size=200))
def test_any_unicode_text(sp, text):
    _round_trip(sp, text)


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes(sp, raw):
    # Bytes become text two ways: latin-1 (every byte a character) and UTF-8 with invalid
    # sequences replaced, which is how the prepare stage reads non-UTF-8 input.
    _round_trip(sp, raw.decode("latin-1"))
    _round_trip(sp, raw.decode("utf-8", errors="replace"))


_PIECES = st.sampled_from(["the ", "quick ", "狐狸", "红楼梦", "，", "。", "🦊", "👩‍👩‍👧", "\n",
                           "\t", "  ", "\u2581", "▁▁", "e\u0301", "\r\n", "\x00", "<0x41>",
                           "<unk>", "\ufffd", *SPECIAL_TOKENS])


@SETTINGS
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_generated_mixtures_of_tricky_pieces(sp, text):
    _round_trip(sp, text)


def test_known_corner_cases(sp):
    for text in ["", " ", "\u2581", "a\u2581b", " \u2581 ", "x" * 5000, "满纸荒唐言 🦊 the end\n"]:
        _round_trip(sp, text)
    assert sp.encode_batch(["a\u2581b", "plain"]) == [sp.encode("a\u2581b"), sp.encode("plain")]


@SETTINGS
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=100))
def test_char_tokenizer_round_trip_on_its_alphabet(text):
    tok = CharTokenizer.train(text + "a")
    _round_trip(tok, text)


def test_vocabulary_too_small_for_the_characters_is_a_clear_error():
    from gptjax.errors import GptjaxError
    with pytest.raises(GptjaxError, match=r"cannot hold the \d+ characters.*raise the tokenizer "
                                          "vocabulary size"):
        SentencePieceTokenizer.train(iter(_training_lines()), vocab_size=400)
