"""Where fine-tuning data comes from: the named data sets under `data.root`, the user's own files,
the `name:weight` mixture that picks among them, and the fixed train/validation split.

SFT, the reward model and PPO all read `data.mixture` through `parse_mixture`: a comma-separated
list of entries, each a named data set (its files under `data.root`, table `DATASETS`) or a path,
glob (`**` recurses) or folder of `.jsonl`, `.jsonl.gz` or `.parquet` files, optionally followed
by `:weight` (default 1). `iter_rows` reads any of those files as one dict per line / row: JSONL
line by line, Parquet one record batch at a time (pyarrow), so neither sits in memory whole.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gptjax.data import shipped
from gptjax.errors import GptjaxError

# The named data sets: their files under data.root ("" = the subsets shipped in the package,
# gptjax/data/shipped.py; the repository's ../shared/data has the full sets).
DATASETS: dict[str, tuple[str, ...]] = {
    "hh-rlhf": ("hh-rlhf-harmless-base-test/test.jsonl.gz",),
    "topical-chat": tuple(f"topical-chat/{n}.json"
                          for n in ("valid_freq", "valid_rare", "test_freq", "test_rare")),
    "kdconv": tuple(f"kdconv/{d}/{s}.json"
                    for d in ("film", "music", "travel") for s in ("dev", "test")),
    "gsm8k": ("gsm8k/train.jsonl",),
    "self-instruct": ("self-instruct/seed_tasks.jsonl",),
    "finegrained-rlhf": ("finegrained-rlhf-qa-feedback/dev_feedback.json",),
}
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")  # what a mixture entry's files may be
_LOOKS_LIKE_FILE = (*FILE_SUFFIXES, ".json", ".gz", ".txt", ".csv")


def need(path: str) -> str:
    """The path of a named data set's file (or of its `.gz` copy, as the package ships some),
    or a clear error pointing at data.root."""
    found = shipped.resolve(path)
    if found is None:
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise GptjaxError(f"data file {path} {what}; set --config.data.root to the folder "
                          "holding the data sets (\"\" = the subsets shipped in the package; "
                          "the repository's ../shared/data has the full sets)")
    return found


def dataset_files(root: str, name: str) -> list[str]:
    """The files of named data set `name` under root ("" = the package's), each checked to
    exist."""
    return [need(os.path.join(shipped.data_root(root), rel)) for rel in DATASETS[name]]


def split(items: list, val_fraction: float) -> tuple[list, list]:
    """A fixed train/validation split (seed 0, whatever the run's seed): the held-out part is
    the same for every run, so validation losses compare across runs."""
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    n_val = max(1, int(round(len(order) * val_fraction))) if len(order) > 1 else 0
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [items[i] for i in train], [items[i] for i in val]


def is_file_entry(entry: str) -> bool:
    """A mixture entry that names files (a path, glob or folder), not a named data set."""
    return (glob.has_magic(entry) or "/" in entry or os.sep in entry
            or entry.lower().endswith(_LOOKS_LIKE_FILE))


def parse_mixture(spec: str, known: Iterable[str], what: str = "data set",
                  example: str = "'topical-chat:1,gsm8k:0.5'") -> list[tuple[str, float]]:
    """"a:1,b:0.5,my/*.jsonl:2" -> [('a', 1.0), ('b', 0.5), ('my/*.jsonl', 2.0)]; an entry
    without a weight has weight 1. Names must be in `known`; file entries are kept as written
    (`expand_files` resolves them)."""
    known = sorted(known)
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, w = part.rpartition(":")
        if not sep:
            name, w = part, ""
        name = name.strip()
        if not is_file_entry(name) and name not in known:
            raise GptjaxError(f"data.mixture names unknown {what} {name!r}; known: {known}, or a "
                              "path, glob or folder of .jsonl, .jsonl.gz or .parquet files")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise GptjaxError(f"data.mixture weight {w!r} of {name} is not a number") from None
        if weight <= 0:
            raise GptjaxError(f"data.mixture weight of {name} must be > 0 (got {weight})")
        out.append((name, weight))
    if not out:
        raise GptjaxError(f"data.mixture is empty; name at least one {what}, e.g. {example}")
    return out


def _supported(path: str) -> bool:
    return path.lower().endswith(FILE_SUFFIXES)


def expand_files(entry: str) -> list[str]:
    """The files a mixture entry names (sorted): one file, a glob's matches or a folder's
    .jsonl / .jsonl.gz / .parquet files (recursively)."""
    if os.path.isdir(entry):
        found = sorted(p for p in glob.glob(os.path.join(entry, "**", "*"), recursive=True)
                       if os.path.isfile(p) and _supported(p))
    elif glob.has_magic(entry):
        found = sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
    elif os.path.isfile(entry):
        found = [entry]
    else:
        raise GptjaxError(f"data.mixture entry {entry!r} does not exist (working directory "
                          f"{os.getcwd()}); fix the path")
    if not found:
        raise GptjaxError(f"data.mixture entry {entry!r} matches no .jsonl, .jsonl.gz or .parquet "
                          "file; fix the path or glob")
    for path in found:
        if not _supported(path):
            raise GptjaxError(f"{path}: data.mixture reads .jsonl, .jsonl.gz and .parquet files "
                              "(one record a line or row); convert it, e.g. a JSON array to "
                              "JSONL with one object per line")
    return found


OnBad = Callable[[str, str], None]  # (where, why) of a row that is not a JSON object


def _raise_bad(where: str, why: str) -> None:
    raise GptjaxError(f"{where} {why}; fix or delete that line")


def iter_rows(path: str, on_bad: OnBad | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of a .jsonl / .jsonl.gz / .parquet file, in order;
    `where` is "PATH line N" (JSONL) or "PATH row N" (Parquet, counted from 1). A JSONL line
    that is not a JSON object goes to on_bad(where, why), or is an error when on_bad is None."""
    if path.lower().endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    on_bad = on_bad or _raise_bad
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(need_file(path), "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    on_bad(f"{path} line {i}", f"is not JSON ({e})")
                    continue
                if not isinstance(rec, dict):
                    on_bad(f"{path} line {i}", f"is a JSON {type(rec).__name__}, not an object")
                    continue
                yield f"{path} line {i}", rec
    except (UnicodeDecodeError, OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise GptjaxError(f"{path} cannot be read as UTF-8 JSONL ({one_line(e)}); "
                          "re-export it as UTF-8 text (gzip-compressed only if named .gz)"
                          ) from None


def need_file(path: str) -> str:
    if not os.path.isfile(path):
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise GptjaxError(f"data file {path} {what}; fix the path in data.mixture")
    return path


def one_line(e: BaseException) -> str:
    """An exception as 'Type: message' on one line (pyarrow's messages span several)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def parquet_file(path: str):
    """A pyarrow ParquetFile, or one clear line for a file that is no Parquet file. Without
    pre-buffering: pyarrow's default reads ahead the column chunks of every row group a batch
    iterator will visit, i.e. the whole file (measured: memory grew by the file's size)."""
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(need_file(path), pre_buffer=False)
    except GptjaxError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for damaged files
        raise GptjaxError(f"{path} is not a readable Parquet file ({one_line(e)}); "
                          "it is damaged or truncated: download or export it again") from None


def parquet_batches(pf, path: str, columns: list[str] | None = None, batch_size: int = 1024):
    """(first row number, record batch) of a Parquet file, streamed: pyarrow reads and decodes
    one batch of one row group at a time, so memory stays at a row group's size, not the
    file's."""
    row = 1
    it = pf.iter_batches(batch_size=batch_size, columns=columns)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:
            raise GptjaxError(f"{path} row {row} onwards cannot be decoded ({one_line(e)}); the "
                              "file is damaged: download or export it again") from None
        yield row, batch
        row += batch.num_rows


def _parquet_rows(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    pf = parquet_file(path)
    for first, batch in parquet_batches(pf, path, batch_size=256):
        for i, rec in enumerate(batch.to_pylist()):
            yield f"{path} row {first + i}", rec
