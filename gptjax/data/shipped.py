"""The data sets shipped inside the package: where they are, how `data.root` finds them, and how
they were cut from the full sets.

`data.root = ""` (the default) is the package's own `assets/sets/` folder: small subsets of
the named data sets (hh-rlhf, Topical-Chat, KdConv, GSM8K, Self-Instruct, FineGrainedRLHF,
MT-bench / Vicuna questions), laid out with the full sets' folder and file names, so the
readers of gptjax/data read either. A file there may be stored gzip-compressed as `NAME.gz`;
`open_text(path)` reads `path` or, when only that exists, `path.gz`. Any other `data.root` is a
folder of the full sets (the repository's ../shared/data) or of your own files.

Each shipped folder keeps the full set's LICENSE and SOURCE.md next to the subset, and
`SUBSETS` says what was kept. `python -m gptjax.data.shipped --from ../shared/data` rebuilds
`assets/sets/` from the full sets byte for byte (gzip without a timestamp), which the tests
check.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import sys
from typing import IO

from gptjax.errors import GptjaxError

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
SETS = os.path.join(ASSETS, "sets")

# (file under the set's folder, kind, records kept: the first n, 0 = all, how it is stored).
# kind: "copy" (the file as it is), "jsonl" (lines), "json-list" (a JSON array), "json-dict"
# (a JSON object; the first n keys in sorted order, the order the reader visits them).
SUBSETS: dict[str, list[tuple[str, str, int, str]]] = {
    "hh-rlhf-harmless-base-test": [("test.jsonl.gz", "copy", 0, "as is")],
    "topical-chat": [(f"{n}.json", "json-dict", 60, "gzip")
                     for n in ("valid_freq", "valid_rare", "test_freq", "test_rare")],
    "kdconv": [(f"{d}/{s}.json", "json-list", 15, "gzip")
               for d in ("film", "music", "travel") for s in ("dev", "test")],
    "gsm8k": [("train.jsonl", "jsonl", 1500, "gzip"), ("test.jsonl", "jsonl", 250, "plain")],
    "self-instruct": [("seed_tasks.jsonl", "jsonl", 0, "gzip")],
    "finegrained-rlhf-qa-feedback": [("dev_feedback.json", "json-list", 120, "gzip")],
    "mt-bench": [("mt_bench_question.jsonl", "copy", 0, "as is"),
                 ("vicuna_bench_question.jsonl", "copy", 0, "as is")],
}
NOTES = ("LICENSE", "DATALICENSE", "SOURCE.md", "DATA_README.md")  # copied beside each subset


def data_root(root: str) -> str:
    """The folder the named data sets are read from: the shipped subsets for "" (the default),
    otherwise `root` itself."""
    return root or SETS


def resolve(path: str) -> str | None:
    """`path`, or `path.gz` when only the compressed copy exists, or None."""
    if os.path.isfile(path):
        return path
    if os.path.isfile(path + ".gz"):
        return path + ".gz"
    return None


def open_text(path: str, missing: str = "") -> IO[str]:
    """A data file opened as UTF-8 text, read from `path.gz` when only that exists; a missing
    file is one GptjaxError (`missing`: what to do about it)."""
    found = resolve(path)
    if found is None:
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise GptjaxError(f"data file {path} {what}; " + (missing or (
            "set --config.data.root to the folder holding the data sets (\"\" = the subsets "
            "shipped in the package; the repository's ../shared/data has the full sets)")))
    if found.endswith(".gz"):
        return gzip.open(found, "rt", encoding="utf-8")
    return open(found, encoding="utf-8")


def _subset(src: str, kind: str, n: int) -> bytes:
    """The first n records of a full-set file, in its own format."""
    if kind == "jsonl":
        with open(src, encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
        return "".join(lines[:n] if n else lines).encode("utf-8")
    with open(src, encoding="utf-8") as f:
        data = json.load(f)
    if kind == "json-dict":
        data = {k: data[k] for k in sorted(data)[:n or None]}
    else:
        data = data[:n or None]
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def _gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(data)
    return out.getvalue()


def build(full_root: str, out: str = SETS) -> list[str]:
    """Write the shipped subsets of the full sets under `full_root` into `out`; the files."""
    written = []
    for folder, files in SUBSETS.items():
        src_dir, dst_dir = os.path.join(full_root, folder), os.path.join(out, folder)
        if not os.path.isdir(src_dir):
            raise GptjaxError(f"{src_dir} does not exist: --from must be the folder holding the "
                              "full data sets (the repository's ../shared/data)")
        os.makedirs(dst_dir, exist_ok=True)
        for note in NOTES:
            if os.path.isfile(os.path.join(src_dir, note)):
                shutil.copyfile(os.path.join(src_dir, note), os.path.join(dst_dir, note))
                written.append(os.path.join(dst_dir, note))
        for rel, kind, n, stored in files:
            src = os.path.join(src_dir, rel)
            if kind == "copy":
                with open(src, "rb") as f:
                    data = f.read()
            else:
                data = _subset(src, kind, n)
            dst = os.path.join(dst_dir, rel + (".gz" if stored == "gzip" else ""))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(dst, "wb") as f:
                f.write(_gzip(data) if stored == "gzip" else data)
            written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gptjax.data.shipped", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="full_root", required=True,
                    help="the folder holding the full data sets (../shared/data)")
    ap.add_argument("--out", default=SETS, help="where to write (default: the package's own)")
    args = ap.parse_args(argv)
    for path in build(args.full_root, args.out):
        print(f"{os.path.getsize(path):>9,} {os.path.relpath(path, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
