"""GSM8K answer extraction and exact match, by hand and with a stub answerer."""

import json

import pytest

from conftest import SHARED_DATA
from gptjax.evals import gsm8k


@pytest.mark.parametrize("text,number", [
    ("Janet sells 9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
    ("so it costs $1,000.00 in all", "1000"),
    ("The answer is 7.", "7"),
    ("she has -3 left", "-3"),
    ("first 4, then 5\n#### 0.50", "0.5"),
    ("#### 12\nand later 99", "12"),  # the number after '####', not the last one
    ("#### none\n I think 42", "42"),  # '####' without a number: the last number
    ("1,2,3", "3"),
    ("x 10000000001000000000000", "10000000001000000000000"),
    ("no digits here", None),
])
def test_extract(text, number):
    assert gsm8k.extract(text) == number


def test_reference_answer_needs_the_marker():
    assert gsm8k.reference_answer("work\n#### 1,234") == "1234"
    assert gsm8k.reference_answer("work, 1234") is None


def test_exact_match_by_hand():
    r = gsm8k.exact_match(["#### 18", "it is 3.0", "I do not know", "#### 5"],
                          ["18", "3", "7", "6"])
    assert (r["correct"], r["questions"], r["no_number"]) == (2, 4, 1)
    assert r["accuracy"] == 0.5 and r["stderr"] == pytest.approx(0.25)
    assert r["is_correct"] == [True, True, False, False]


def test_an_answerer_that_is_always_right_scores_one():
    rows = gsm8k.read(str(SHARED_DATA / "gsm8k" / "test.jsonl"), limit=20)
    truth = dict(rows)
    # a stub generator at the function level: knows every answer, writes it in prose
    r = gsm8k.evaluate(rows, lambda qs: [f"Working... so ${int(truth[q]):,} in all." for q in qs])
    assert (r["accuracy"], r["questions"]) == (1.0, 20)
    half = gsm8k.evaluate(rows, lambda qs: [f"#### {truth[q] if i % 2 else '-1'}"
                                            for i, q in enumerate(qs)])
    assert half["accuracy"] == 0.5


@pytest.mark.parametrize("row", [{"question": "q"}, {"question": "q", "answer": "just 5"},
                                 {"answer": "#### 5"}])
def test_rows_without_an_answer_are_refused(tmp_path, row):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "ok", "answer": "#### 1"}) + "\n" + json.dumps(row))
    with pytest.raises(gsm8k.GSM8KError, match="line 2 has no question or no final answer"):
        gsm8k.read(str(path))
