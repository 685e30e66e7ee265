"""Document filters: length limits, URL blocklist, Gopher quality and repetition rules.

Each filter returns None (keep) or the name of the rule that rejects the document; the
pipeline counts rejections per rule. The rules and their default thresholds are those of
Gopher (Rae et al. 2021, appendix A.1.1), the same as datatrove's GopherQualityFilter and
GopherRepetitionFilter. "Words" are whitespace-separated tokens; for text written without
spaces (langid zh / ja) every non-space, non-punctuation character is a token, and the rules
that only make sense for words (word count, mean word length, stop words, alphabetic words) are
skipped.
"""

from __future__ import annotations

import re
import string
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from gptjax.errors import GptjaxError

_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "※", "·", "-", "*", "–", "—", "➢", "►", "→")
_PUNCT = frozenset(string.punctuation) | frozenset("，。！？；：、“”‘’（）《》〈〉【】「」『』…—·")
_CJK_TOKEN = re.compile(r"[^\s" + re.escape("".join(sorted(_PUNCT))) + r"]")
_ALPHA = re.compile(r"[^\W\d_]")


def length_rule(text: str, min_chars: int, max_chars: int) -> str | None:
    """Documents shorter than min_chars or longer than max_chars (0 = no limit) are dropped."""
    if len(text) < min_chars:
        return "too_short"
    if max_chars and len(text) > max_chars:
        return "too_long"
    return None


def load_blocklist(path: str) -> frozenset[str]:
    """Domains, one a line ('#' comments); a domain also blocks its subdomains."""
    if not path:
        return frozenset()
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.split("#", 1)[0].strip().lower() for ln in f]
    except OSError as e:
        raise GptjaxError(f"prepare.filters.url_blocklist: cannot read {path!r} ({e.strerror}); "
                          "give a text file of domains, one a line") from None
    return frozenset(d.lstrip(".").removeprefix("www.") for d in lines if d)


def url_blocked(url: str | None, blocklist: frozenset[str]) -> bool:
    """True if the URL's host or any parent domain of it is in the blocklist."""
    if not url or not blocklist:
        return False
    host = (urlsplit(url if "//" in url else "//" + url).hostname or "").lower().rstrip(".")
    parts = host.split(".")
    return any(".".join(parts[i:]) in blocklist for i in range(len(parts)))


def tokens_of(text: str, cjk: bool) -> list[str]:
    return _CJK_TOKEN.findall(text) if cjk else text.split()


def quality_rule(text: str, words: list[str], cjk: bool, q: Any) -> str | None:
    """Gopher's quality rules; q holds the thresholds (config prepare.quality)."""
    n = len(words)
    if not cjk:
        if n < q.min_words:
            return "gopher_min_words"
        if q.max_words and n > q.max_words:
            return "gopher_max_words"
        stripped = [w.strip(string.punctuation) for w in words]
        mean_len = sum(map(len, stripped)) / max(n, 1)
        if not q.min_mean_word_len <= mean_len <= q.max_mean_word_len:
            return "gopher_mean_word_length"
    n = max(n, 1)
    if (text.count("#") + text.count("...") + text.count("…")) / n > q.max_symbol_word_ratio:
        return "gopher_symbol_ratio"
    lines = [ln for ln in text.split("\n") if ln.strip()] or [""]
    if sum(ln.lstrip().startswith(_BULLETS) for ln in lines) / len(lines) > q.max_bullet_lines:
        return "gopher_bullet_lines"
    ellipsis = sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
    if ellipsis / len(lines) > q.max_ellipsis_lines:
        return "gopher_ellipsis_lines"
    if not cjk:
        if sum(bool(_ALPHA.search(w)) for w in words) / n < q.min_alpha_words:
            return "gopher_alpha_words"
        if len(_STOP_WORDS.intersection(w.lower() for w in words)) < q.min_stop_words:
            return "gopher_stop_words"
    return None


def _duplicate_share(parts: list[str]) -> tuple[float, float]:
    """(share of parts that repeat an earlier one, share of characters in them)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for p in parts:
        if p in seen:
            dup += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    total = sum(map(len, parts))
    return dup / max(len(parts), 1), dup_chars / max(total, 1)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit polynomial hashes of every n-gram of a token-id array (wrapping arithmetic)."""
    h = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for k in range(n):
        h = h * np.uint64(0x100000001B3) + ids[k:len(ids) - n + 1 + k]
    return h


def repetition_rule(text: str, words: list[str], r: Any) -> str | None:
    """Gopher's repetition rules; r holds the thresholds (config prepare.repetition).

    Let c(w) be a token's length and C = sum c(w) over the document.
      duplicate lines / paragraphs: share of them (and of their characters) that repeat an
        earlier one;
      top n-gram (n = 2, 3, 4): c(most frequent n-gram) * its count / C, if it repeats;
      duplicate n-grams (n = 5..10): characters of the tokens covered by any occurrence of an
        n-gram that occurred before, each token counted once, / C.
    """
    lines = [ln for ln in text.split("\n") if ln.strip()]
    frac, chars = _duplicate_share(lines)
    if frac > r.max_dup_line_frac or chars > r.max_dup_line_char_frac:
        return "gopher_dup_lines"
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    frac, chars = _duplicate_share(paras)
    if frac > r.max_dup_para_frac or chars > r.max_dup_para_char_frac:
        return "gopher_dup_paragraphs"
    if len(words) < 2:
        return None
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), np.uint64, len(words))
    lens = np.fromiter(map(len, words), np.int64, len(words))
    total = lens.sum()
    cum = np.concatenate([[0], np.cumsum(lens)])
    for n, limit in r.top_ngram:
        if len(words) < n:
            break
        uniq, first, counts = np.unique(_ngram_hashes(ids, n), return_index=True,
                                        return_counts=True)
        top = np.argmax(counts)
        if counts[top] == 1:
            break  # no n-gram repeats, so no longer one does either
        share = (cum[first[top] + n] - cum[first[top]]) * counts[top] / total
        if share > limit:
            return f"gopher_top_{n}gram"
    for n, limit in r.dup_ngram:
        if len(words) < n:
            break
        h = _ngram_hashes(ids, n)
        _, first = np.unique(h, return_index=True)
        if len(first) == len(h):
            break  # no n-gram repeats, so no longer one does either
        repeat = np.ones(len(h), bool)
        repeat[first] = False
        cover = np.zeros(len(words) + 1, np.int64)
        starts = np.nonzero(repeat)[0]
        np.add.at(cover, starts, 1)
        np.add.at(cover, starts + n, -1)
        covered = np.cumsum(cover[:-1]) > 0
        if lens[covered].sum() / total > limit:
            return f"gopher_dup_{n}gram"
    return None
