"""Degeneration measures of generated answers: plain functions over lists of strings.

The ways a policy optimised against a learned reward goes wrong show in its text before any
judge sees them: fewer distinct words (mode collapse), loops (repeated n-grams), strings of
digits and symbols (the hh-rlhf PPO hack "... 10000000001000000000000"), answers that never
stop (cut at the token limit). Used beside every win rate by the eval stage and as monitors
by PPO; none of them needs a model (the fluency measure, perplexity under a base model, is in
`gptjax.evals.perplexity`).

Words: an answer is split into maximal runs of non-space characters, except that every CJK
character is a word of its own (Chinese text has no spaces; a whole sentence would otherwise
be one "word").
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Sequence

# CJK unified ideographs (+ extension A, compatibility), kana, hangul: one word per character.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def words(text: str) -> list[str]:
    """The words of a text (runs of non-space characters; each CJK character alone)."""
    return _WORD.findall(text)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(answers: Sequence[str], n: int,
               tokenize: Callable[[str], list[str]] = words) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams, pooled over the answers.

        distinct-n = |∪_a {n-grams of a}| / Σ_a (#n-grams of a)

    1.0 = no n-gram ever repeats (within or across answers); a collapsed policy that gives the
    same answer to every prompt drives it towards 1 / #answers. nan when no answer has n words
    (one-word answers have no bigrams: that is not a lack of variety).
    """
    seen: set[tuple[str, ...]] = set()
    total = 0
    for a in answers:
        grams = ngrams(tokenize(a), n)
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else math.nan


def repeated_ngram_share(answers: Sequence[str], n: int = 4,
                         tokenize: Callable[[str], list[str]] = words) -> float:
    """The share of n-grams that repeat an earlier n-gram of the same answer, pooled:

        rep-n = Σ_a (#n-grams of a − #distinct n-grams of a) / Σ_a #n-grams of a

    (Welleck et al. 2019's seq-rep-n, pooled over answers so that short answers weigh less).
    0.0 = no answer repeats itself; a loop "a b a b a b" with n = 2 gives 3/5. 0.0 when no
    answer has n words.
    """
    repeats = total = 0
    for a in answers:
        grams = ngrams(tokenize(a), n)
        repeats += len(grams) - len(set(grams))
        total += len(grams)
    return repeats / total if total else 0.0


def _is_symbol(ch: str) -> bool:
    """Unicode punctuation (P*) or symbol (S*), e.g. . , ! ? # $ + = ~ ・ 。"""
    return unicodedata.category(ch)[0] in "PS"


def char_shares(answers: Sequence[str]) -> dict[str, float]:
    """Shares of the answers' non-space characters that are digits (Unicode N*), punctuation or
    symbols (P*, S*), and both together, pooled over the answers (0.0 for no characters)."""
    digits = symbols = total = 0
    for a in answers:
        for ch in a:
            if ch.isspace():
                continue
            total += 1
            if unicodedata.category(ch)[0] == "N":
                digits += 1
            elif _is_symbol(ch):
                symbols += 1
    if not total:
        return {"digit_share": 0.0, "symbol_share": 0.0, "digit_symbol_share": 0.0}
    return {"digit_share": digits / total, "symbol_share": symbols / total,
            "digit_symbol_share": (digits + symbols) / total}


def truncated_fraction(stopped: Sequence[bool]) -> float:
    """The fraction of answers cut at the token limit: stopped[i] is whether answer i ended
    with its own end-of-turn token (False = it ran out of tokens). 0.0 for no answers."""
    return sum(1 for s in stopped if not s) / len(stopped) if len(stopped) else 0.0


def summary(answers: Sequence[str], stopped: Sequence[bool] | None = None,
            rep_n: int = 4) -> dict[str, float]:
    """Every measure above for one set of answers, as a flat dict of floats:
    distinct_1, distinct_2, repeated_{rep_n}gram_share, digit_share, symbol_share,
    digit_symbol_share, mean_chars, mean_words, and truncated_fraction when `stopped` is given."""
    n = max(len(answers), 1)
    out = {"distinct_1": distinct_n(answers, 1), "distinct_2": distinct_n(answers, 2),
           f"repeated_{rep_n}gram_share": repeated_ngram_share(answers, rep_n),
           **char_shares(answers),
           "mean_chars": sum(len(a) for a in answers) / n,
           "mean_words": sum(len(words(a)) for a in answers) / n}
    if stopped is not None:
        if len(stopped) != len(answers):
            raise ValueError(f"stopped has {len(stopped)} entries for {len(answers)} answers")
        out["truncated_fraction"] = truncated_fraction(stopped)
    return out
