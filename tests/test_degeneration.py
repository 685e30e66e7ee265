"""Degeneration measures against counts worked out by hand."""

import math

import pytest

from gptjax.evals import degeneration as dg


def test_words_split_spaces_and_cjk():
    assert dg.words("the cat  sat.") == ["the", "cat", "sat."]
    assert dg.words("我爱 you") == ["我", "爱", "you"]
    assert dg.words("") == []


def test_distinct_n_pooled_over_answers():
    # unigrams: a b a | a c -> 5 in all, distinct {a, b, c} = 3
    assert dg.distinct_n(["a b a", "a c"], 1) == pytest.approx(3 / 5)
    # bigrams: (a b) (b a) | (a c) -> 3 distinct of 3
    assert dg.distinct_n(["a b a", "a c"], 2) == pytest.approx(1.0)
    # the same answer twice: bigrams (x y) x2 -> 1 / 2
    assert dg.distinct_n(["x y", "x y"], 2) == pytest.approx(0.5)
    assert math.isnan(dg.distinct_n(["one"], 2)) and math.isnan(dg.distinct_n([], 1))


def test_repeated_ngram_share():
    # "a b a b a b", n=2: bigrams ab ba ab ba ab -> 5, distinct 2 -> 3 repeats
    assert dg.repeated_ngram_share(["a b a b a b"], 2) == pytest.approx(3 / 5)
    # pooled: + "c d e" (2 bigrams, no repeat) -> 3 / 7; across answers is not a repeat
    assert dg.repeated_ngram_share(["a b a b a b", "c d e", "a b"], 2) == pytest.approx(3 / 8)
    assert dg.repeated_ngram_share(["too short"], 4) == 0.0


def test_char_shares():
    # non-space chars of "ab 12 !?" : a b 1 2 ! ? -> 2 digits, 2 symbols of 6
    s = dg.char_shares(["ab 12", "!?"])
    assert s["digit_share"] == pytest.approx(2 / 6)
    assert s["symbol_share"] == pytest.approx(2 / 6)
    assert s["digit_symbol_share"] == pytest.approx(4 / 6)
    assert dg.char_shares(["  "])["digit_symbol_share"] == 0.0
    # the hh-rlhf PPO hack is nearly all digits
    assert dg.char_shares(["ok 10000000001000000000000"])["digit_share"] == pytest.approx(23 / 25)


def test_truncated_fraction_and_summary():
    assert dg.truncated_fraction([True, False, False, True]) == 0.5
    assert dg.truncated_fraction([]) == 0.0
    s = dg.summary(["a b", "a b c d"], stopped=[True, False])
    assert s["truncated_fraction"] == 0.5
    assert s["mean_chars"] == pytest.approx((3 + 7) / 2)
    assert s["mean_words"] == pytest.approx(3.0)
    assert s["distinct_1"] == pytest.approx(4 / 6)
    assert "truncated_fraction" not in dg.summary(["a"])
    with pytest.raises(ValueError):
        dg.summary(["a"], stopped=[True, True])
