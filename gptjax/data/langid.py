"""A small, dependency-free language identifier from script and character statistics.

What it measures, per document (its first `max_chars` characters):
  1. the script of every letter: Han (CJK ideographs), kana, Hangul, Latin, Cyrillic, Arabic,
     other; the majority script decides, a Han or kana character weighing as much as 3
     alphabetic letters (one carries about a word's worth of text);
  2. Han: Chinese ("zh") unless kana make up >= 10% of the Han + kana letters (Japanese mixes
     kana into nearly every sentence), then "ja";
  3. Latin: English ("en") when >= 12% of the words are among the 60 most frequent English
     function words (English prose runs at 40-50%; French, German or Spanish prose, whose own
     function words differ, scores under 5%). A text of fewer than 8 words is too short for
     that statistic and is called English when all its letters are ASCII.
Labels: en, zh, ja, ko, latin (non-English Latin script), cyrillic, arabic, other, und (no
letters). The accuracy on the shipped corpora is measured by tests/test_langid.py and
benchmarks/prepare_throughput.py (see the README).
"""

from __future__ import annotations

import re

LABELS = ("en", "zh", "ja", "ko", "latin", "cyrillic", "arabic", "other", "und")
CJK_LABELS = ("zh", "ja")  # scripts written without spaces between words

_EN_FUNCTION_WORDS = frozenset("""
the of and to a in is that it for was on are as with be by at this have from or an but not
they his her which you he she we were been has had will would their there what all can
if so no do one its my me our your who them than then these into up out about i him his us
more when how some very just only also each per may should shall here now thou thee thy hath
""".split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

# Code point ranges -> script. Han includes the CJK extensions and compatibility ideographs.
_RANGES = (
    (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00C0, 0x024F, "latin"),
    (0x1E00, 0x1EFF, "latin"), (0x0400, 0x052F, "cyrillic"), (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"), (0x3040, 0x30FF, "kana"), (0x31F0, 0x31FF, "kana"),
    (0xFF66, 0xFF9F, "kana"), (0x1100, 0x11FF, "hangul"), (0xAC00, 0xD7AF, "hangul"),
    (0x3130, 0x318F, "hangul"), (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"),
    (0xF900, 0xFAFF, "han"), (0x20000, 0x3134F, "han"),
)
_SCRIPT_RES = {}
for _lo, _hi, _name in _RANGES:
    _SCRIPT_RES.setdefault(_name, []).append(f"\\U{_lo:08x}-\\U{_hi:08x}")
_SCRIPT_RES = {k: re.compile("[" + "".join(v) + "]") for k, v in _SCRIPT_RES.items()}
_ANY_LETTER = re.compile(r"[^\W\d_]")
_NON_ASCII_LATIN = re.compile("[\u00c0-\u024f\u1e00-\u1eff]")


def script_counts(text: str) -> dict[str, int]:
    """Letters per script; letters of no listed script count as "other"."""
    counts = {name: len(rx.findall(text)) for name, rx in _SCRIPT_RES.items()}
    counts["other"] = max(len(_ANY_LETTER.findall(text)) - sum(counts.values()), 0)
    return counts


def english_function_word_rate(text: str) -> tuple[float, int]:
    """(share of words that are frequent English function words, number of words)."""
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0, 0
    return sum(w in _EN_FUNCTION_WORDS for w in words) / len(words), len(words)


def identify(text: str, max_chars: int = 4000) -> str:
    """The language label of a text (see the module docstring for the rules)."""
    sample = text[:max_chars]
    counts = script_counts(sample)
    total = sum(counts.values())
    if total == 0:
        return "und"
    han_kana = counts["han"] + counts["kana"]
    top = max(("latin", "cyrillic", "arabic", "hangul", "other"), key=counts.__getitem__)
    if 3 * han_kana >= counts[top]:
        return "ja" if counts["kana"] >= 0.1 * han_kana else "zh"
    if top == "hangul":
        return "ko"
    if top != "latin":
        return top
    rate, n_words = english_function_word_rate(sample)
    latin_ascii = _NON_ASCII_LATIN.search(sample) is None
    if n_words < 8:
        return "en" if latin_ascii else "latin"
    return "en" if rate >= 0.12 or (rate >= 0.04 and latin_ascii) else "latin"
