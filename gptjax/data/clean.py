"""Text cleaning: mojibake repair, control characters, broken encodings, NFKC, whitespace.

Each step is a switch in `prepare.clean` and counts what it changed. Order matters and is fixed:
mojibake first (NFKC would turn the "™" of "â€™" into "TM" and make it unrepairable), then
control characters and U+FFFD, then NFKC, then whitespace (NFKC maps many exotic spaces to
U+0020, which the whitespace step then collapses).
"""

from __future__ import annotations

import collections
import functools
import re
import unicodedata

REPLACEMENT = "\ufffd"
_KEEP_FORMAT = {"\u200c", "\u200d"}  # ZWNJ, ZWJ: they change how scripts and emoji render


@functools.lru_cache(maxsize=1)
def _control_re() -> re.Pattern:
    """C0/C1 controls except tab and newline, and format characters (BOM, zero-width space,
    bidi marks, soft hyphen) except ZWJ/ZWNJ, as a class of code point ranges. (Format
    characters live in the BMP, plane 1 and the tag block of plane 14.)"""
    points = [c for c in (*range(0x20000), *range(0xE0000, 0xE1000))
              if unicodedata.category(chr(c)) in ("Cc", "Cf")
              and chr(c) not in "\t\n\r\x0b\x0c" and chr(c) not in _KEEP_FORMAT]
    ranges, start, prev = [], points[0], points[0]
    for c in points[1:] + [-1]:
        if c != prev + 1:
            ranges.append(f"\\U{start:08x}" + (f"-\\U{prev:08x}" if prev > start else ""))
            start = c
        prev = c
    return re.compile("[" + "".join(ranges) + "]+")


def _cp1252_char(b: int) -> str:
    try:
        return bytes([b]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8D, 0x8F, 0x90, 0x9D: latin-1 passes them through
        return chr(b)


_TO_BYTE = {_cp1252_char(b): b for b in range(0x80, 0x100)}
_CONT = "".join(re.escape(_cp1252_char(b)) for b in range(0x80, 0xC0))


def _leads(lo: int, hi: int) -> str:
    return "".join(re.escape(_cp1252_char(b)) for b in range(lo, hi + 1))


# UTF-8 read as cp1252/latin-1: a lead byte's character followed by exactly the number of
# continuation bytes it announces ("Ã©" = C3 A9 = "é", "â€™" = E2 80 99 = "’").
_MOJIBAKE = re.compile(f"[{_leads(0xC2, 0xDF)}][{_CONT}]|[{_leads(0xE0, 0xEF)}][{_CONT}]{{2}}"
                       f"|[{_leads(0xF0, 0xF4)}][{_CONT}]{{3}}")
_MOJIBAKE_HINT = re.compile(f"[{_leads(0xC2, 0xF4)}][{_CONT}]")


def fix_mojibake(text: str) -> tuple[str, int]:
    """Repair UTF-8 text that was decoded as cp1252/latin-1; (text, sequences repaired).

    A sequence is replaced only when its bytes are valid UTF-8, so ordinary accented text
    ("café", "Ångström") is left alone.
    """
    if not _MOJIBAKE_HINT.search(text):
        return text, 0
    fixed = 0

    def repl(m: re.Match) -> str:
        nonlocal fixed
        try:
            out = bytes(_TO_BYTE[c] for c in m.group()).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return m.group()
        fixed += 1
        return out
    return _MOJIBAKE.sub(repl, text), fixed


_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_SPACES = re.compile(r"[^\S\n\t]")  # every Unicode space except newline and tab
_INNER_RUN = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TRAILING = re.compile(r"[ \t]+(?=\n|$)")
_BLANK_RUN = re.compile(r"\n{3,}")


def fix_whitespace(text: str) -> str:
    """One newline convention, Unicode spaces as U+0020, runs of spaces inside a line collapsed
    (leading indentation kept), no trailing spaces, at most one blank line in a row, no blank
    lines at the ends."""
    text = _NEWLINES.sub("\n", text)
    text = _SPACES.sub(" ", text)
    text = _INNER_RUN.sub(" ", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip("\n").rstrip()


def clean_text(text: str, *, nfkc: bool = True, whitespace: bool = True, control: bool = True,
               mojibake: bool = True, counts: collections.Counter | None = None) -> str:
    """The cleaned text; what each step changed is added to `counts` (characters or
    sequences). U+FFFD characters (invalid input bytes) are removed here; whether a document
    has so many that it should be dropped instead is `replacement_fraction`'s job."""
    counts = counts if counts is not None else collections.Counter()
    if mojibake:
        text, n = fix_mojibake(text)
        counts["mojibake_repaired"] += n
    if REPLACEMENT in text:
        n = text.count(REPLACEMENT)
        counts["replacement_chars_removed"] += n
        text = text.replace(REPLACEMENT, "")
    if control:
        text, n = _control_re().subn("", text)
        counts["control_runs_removed"] += n
    if nfkc and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
        counts["nfkc_changed_docs"] += 1
    if whitespace:
        text = fix_whitespace(text)
    return text


def replacement_fraction(text: str) -> float:
    """Share of U+FFFD among the characters: the trace of bytes that were not UTF-8."""
    return text.count(REPLACEMENT) / max(len(text), 1)
