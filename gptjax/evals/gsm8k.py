"""GSM8K (Cobbe et al. 2021): exact match of the final number.

A reference answer ends with "#### N". A model's answer is read the same way: the number after
its last "####" if it wrote one (SFT on GSM8K's train split teaches that format), otherwise the
last number in its text. Numbers are compared as values: "1,000", "$1000", "1000.00" and "1000"
are equal; "1/2" is not 0.5 (GSM8K's answers are integers).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence

from gptjax.errors import GptjaxError
from gptjax.rl.verifiers import final_number, last_number


class GSM8KError(GptjaxError):
    """A GSM8K file whose rows cannot be scored (no question, or no '#### N' answer)."""


def reference_answer(answer: str) -> str | None:
    """The number after the last "####" of a GSM8K answer; None without one."""
    if "####" not in answer:
        return None
    return last_number(answer.rsplit("####", 1)[1].split("\n", 1)[0])


def extract(text: str) -> str | None:
    """The final number of a model's answer: after its last "####" when it has one (and a
    number follows), else the last number anywhere; None when it has no number."""
    return final_number(text, "####")


def read(path: str, limit: int = 0) -> list[tuple[str, str]]:
    """(question, reference number) of the first `limit` rows (0 = all) of a GSM8K .jsonl."""
    if not os.path.isfile(path):
        raise GSM8KError(f"GSM8K file {path} does not exist; set --config.eval.gsm8k.path (or "
                         "data.root to the folder holding gsm8k/test.jsonl)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise GSM8KError(f"{path} line {i} is not JSON ({e})") from None
            q, a = r.get("question"), r.get("answer")
            ref = reference_answer(a) if isinstance(a, str) else None
            if not isinstance(q, str) or not q.strip() or ref is None:
                raise GSM8KError(f"{path} line {i} has no question or no final answer "
                                 "'#### N'; every GSM8K row needs both")
            rows.append((q, ref))
            if limit and len(rows) == limit:
                break
    if not rows:
        raise GSM8KError(f"{path} has no rows; give it GSM8K records "
                         '{"question": ..., "answer": "... #### N"}')
    return rows


def exact_match(predictions: Sequence[str], references: Sequence[str]
                ) -> dict[str, float | int | list]:
    """Exact match of each prediction's final number against the reference numbers:
    accuracy, its standard error sqrt(a(1−a)/n), counts, and per-question correctness."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    picked = [extract(p) for p in predictions]
    correct = [p is not None and p == r for p, r in zip(picked, references)]
    n = len(correct)
    acc = sum(correct) / n if n else math.nan
    return {"accuracy": acc, "correct": sum(correct), "questions": n,
            "stderr": math.sqrt(acc * (1 - acc) / n) if n else math.nan,
            "no_number": sum(p is None for p in picked), "extracted": picked,
            "is_correct": correct}


def evaluate(rows: Sequence[tuple[str, str]], answer: Callable[[list[str]], list[str]]
             ) -> dict:
    """Exact match of `answer(questions) -> answers` (any generator: a model's greedy decoder,
    or a stub in the tests) on (question, reference) rows."""
    questions = [q for q, _ in rows]
    answers = answer(questions)
    report = exact_match(answers, [r for _, r in rows])
    report["answers"] = list(answers)
    return report
