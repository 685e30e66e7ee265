"""The prepare stage's report: counts in and out, per filter, dedup, languages, lengths.

Streaming: every count is a running total and the length histograms are fixed log2 bins, so
the report costs no memory per document. `report.json` holds no timings, so two runs on the same
input write byte-identical reports (timings go to stdout).
"""

from __future__ import annotations

import collections
import json
from typing import Any

import numpy as np

N_BINS = 24  # bin k holds lengths in [2^k, 2^(k+1)) characters; the last one is open-ended


def length_bin(n: int) -> int:
    return min(max(int(n).bit_length() - 1, 0), N_BINS - 1)


class Report:
    """Running totals of one prepare run."""

    def __init__(self):
        self.input = collections.Counter()
        self.cleaning = collections.Counter()
        self.removed: dict[str, collections.Counter] = {}  # rule -> documents, characters
        self.languages = {"seen": {}, "kept": {}}
        self.hist = {"input": np.zeros(N_BINS, np.int64), "kept": np.zeros(N_BINS, np.int64)}
        self.output = collections.Counter()
        self.extra: dict[str, Any] = {}

    def saw(self, n_chars: int) -> None:
        self.input["documents"] += 1
        self.input["characters"] += n_chars
        self.hist["input"][length_bin(n_chars)] += 1

    def remove(self, rule: str, n_chars: int) -> None:
        c = self.removed.setdefault(rule, collections.Counter())
        c["documents"] += 1
        c["characters"] += n_chars

    def language(self, which: str, lang: str, n_chars: int) -> None:
        c = self.languages[which].setdefault(lang, collections.Counter())
        c["documents"] += 1
        c["characters"] += n_chars

    def kept(self, n_chars: int, split: str) -> None:
        self.output["documents"] += 1
        self.output["characters"] += n_chars
        self.output[f"{split}_documents"] += 1
        self.hist["kept"][length_bin(n_chars)] += 1

    def to_dict(self) -> dict[str, Any]:
        def plain(d):
            return {k: dict(v) for k, v in sorted(d.items())}
        edges = [2**k for k in range(N_BINS)]
        return {
            "input": dict(self.input),
            "cleaning": dict(sorted(self.cleaning.items())),
            "removed": plain(self.removed),
            "removed_total": {"documents": sum(c["documents"] for c in self.removed.values()),
                              "characters": sum(c["characters"] for c in self.removed.values())},
            "languages": {k: plain(v) for k, v in self.languages.items()},
            "length_histogram": {"bin_start_chars": edges,
                                 "input": self.hist["input"].tolist(),
                                 "kept": self.hist["kept"].tolist()},
            "output": dict(self.output),
            **self.extra,
        }


def write_json(report: dict[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False, sort_keys=False)
        f.write("\n")


def plot_lengths(report: dict[str, Any], path: str) -> None:
    """length_histogram.png: documents per log2 length bin, before and after filtering."""
    import matplotlib
    matplotlib.use("Agg")  # no display; also keeps the PNG free of GUI state
    import matplotlib.pyplot as plt
    h = report["length_histogram"]
    used = [i for i, (a, b) in enumerate(zip(h["input"], h["kept"])) if a or b] or [0]
    lo, hi = used[0], used[-1] + 1
    x = np.arange(lo, hi)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.bar(x - 0.2, h["input"][lo:hi], width=0.4, label="input")
    ax.bar(x + 0.2, h["kept"][lo:hi], width=0.4, label="kept")
    ax.set_xticks(x, [_short(2**k) for k in x], rotation=45, fontsize=8)
    ax.set_xlabel("document length (characters, bin start; bins double)")
    ax.set_ylabel("documents")
    ax.set_title("prepare: document lengths")
    ax.legend()
    fig.tight_layout()
    # No date or software version in the file: the same input gives the same bytes.
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _short(n: int) -> str:
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if n >= size:
            return f"{n // size}{unit}"
    return str(n)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few human lines for stdout."""
    i, o = report["input"], report["output"]
    lines = [f"read {i.get('files', 0)} files: {i.get('documents', 0)} documents, "
             f"{i.get('characters', 0):,} characters ({i.get('invalid_bytes', 0)} invalid "
             "UTF-8 bytes)"]
    for rule, c in report["removed"].items():
        lines.append(f"  removed by {rule}: {c['documents']} documents, "
                     f"{c['characters']:,} characters")
    langs = ", ".join(f"{k} {v['documents']}" for k, v in report["languages"]["kept"].items())
    lines.append(f"kept {o.get('documents', 0)} documents, {o.get('characters', 0):,} "
                 f"characters; languages: {langs}")
    if "tokenizer" in report:
        t = report["tokenizer"]
        lines.append(f"{o['tokens']:,} tokens ({t['tokens_per_char']:.3f} per character) with a "
                     f"{t['vocab_size']}-token {t['kind']} tokenizer")
    return lines
