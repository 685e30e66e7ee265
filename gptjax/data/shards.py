"""Token shards on disk: the prepare stage writes them, pretraining memmaps them.

Layout of a prepared directory's `tokens/`: `{split}-{i:05d}-of-{n:05d}.bin`, raw little-endian
uint16 (vocabularies up to 65,536) or uint32, each document's tokens followed by the EOS id.
Documents are dealt round-robin to the n shards of their split, so shards are about equal.
`tokens/meta.json` lists every shard with its length.

Reading: `ShardedTokens` presents a split's shards as one 1-D token array (length and slicing),
so the training windows (`gptjax.data.lm.RandomWindows`) can start anywhere and the global batch
i stays a pure function of (seed, i) whatever the number of processes. Each process memmaps
every shard lazily: opening costs nothing and a process reads only the pages under its own
rows' windows, so on a pod each host pulls its share of the data, not the whole corpus (the
shard files must be visible to every host, e.g. on a shared or GCS-fuse filesystem).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import numpy as np

from gptjax.data.tokenizer import Tokenizer, load_tokenizer
from gptjax.errors import GptjaxError

SPLITS = ("train", "val")
PREPARED = "prepared"  # the folder a prepare run writes under its workdir


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.bin"


class ShardWriter:
    """Append documents' token ids to the shards of one split (buffered)."""

    def __init__(self, out_dir: str, split: str, num_shards: int, dtype: np.dtype,
                 eos_id: int, flush_tokens: int = 1 << 20):
        self.paths = [os.path.join(out_dir, shard_name(split, i, num_shards))
                      for i in range(num_shards)]
        self.files = [open(p, "wb") for p in self.paths]
        self.lengths = [0] * num_shards
        self.buffers: list[list[np.ndarray]] = [[] for _ in range(num_shards)]
        self.buffered = [0] * num_shards
        self.dtype, self.eos = dtype, np.array([eos_id], dtype)
        self.flush_tokens = flush_tokens

    def add(self, shard: int, ids: Iterable[int] | np.ndarray) -> int:
        arr = np.asarray(ids, dtype=self.dtype)
        self.buffers[shard] += [arr, self.eos]
        self.buffered[shard] += len(arr) + 1
        if self.buffered[shard] >= self.flush_tokens:
            self._flush(shard)
        return len(arr) + 1

    def _flush(self, shard: int) -> None:
        if self.buffers[shard]:
            data = np.concatenate(self.buffers[shard])
            data.astype(data.dtype.newbyteorder("<"), copy=False).tofile(self.files[shard])
            self.lengths[shard] += len(data)
        self.buffers[shard], self.buffered[shard] = [], 0

    def close(self) -> list[dict]:
        for i, f in enumerate(self.files):
            self._flush(i)
            f.close()
        return [{"file": os.path.basename(p), "tokens": n}
                for p, n in zip(self.paths, self.lengths)]


class ShardedTokens:
    """A split's shards as one read-only 1-D array: len() and [start:stop] / [i]."""

    def __init__(self, paths: list[str], lengths: list[int], dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        keep = [(p, n) for p, n in zip(paths, lengths) if n > 0]  # mmap refuses empty files
        self.paths = [p for p, _ in keep]
        self.offsets = np.concatenate([[0], np.cumsum([n for _, n in keep], dtype=np.int64)])
        self._maps: list[np.memmap | None] = [None] * len(keep)

    def _shard(self, i: int) -> np.memmap:
        if self._maps[i] is None:  # opened on first touch
            self._maps[i] = np.memmap(self.paths[i], dtype=self.dtype.newbyteorder("<"),
                                      mode="r")
        return self._maps[i]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ShardedTokens supports contiguous slices only")
            return self._range(start, max(stop, start))
        i = int(key) + (len(self) if int(key) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(key)
        return self._range(i, i + 1)[0]

    def _range(self, start: int, stop: int) -> np.ndarray:
        out = []
        s = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while start < stop:
            base = int(self.offsets[s])
            end = min(stop, int(self.offsets[s + 1]))
            out.append(self._shard(s)[start - base:end - base])
            start, s = end, s + 1
        if not out:
            return np.zeros(0, self.dtype)
        return np.concatenate(out) if len(out) > 1 else np.asarray(out[0])

    def __array__(self, dtype=None, copy=None):
        arr = self._range(0, len(self))
        return arr.astype(dtype) if dtype is not None else arr


def write_meta(tokens_dir: str, meta: dict) -> None:
    with open(os.path.join(tokens_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")


def open_split(tokens_dir: str, split: str) -> ShardedTokens:
    """A split of a prepared `tokens/` directory, checked against its meta.json."""
    path = os.path.join(tokens_dir, "meta.json")
    if not os.path.isfile(path):
        raise GptjaxError(f"{tokens_dir} has no meta.json: it is not the tokens/ folder of a "
                          "finished `prepare` run; run the prepare stage first")
    with open(path) as f:
        meta = json.load(f)
    shards = meta["splits"][split]
    dtype = np.dtype(meta["dtype"])
    paths = [os.path.join(tokens_dir, s["file"]) for s in shards]
    for p, s in zip(paths, shards):
        size = os.path.getsize(p) if os.path.exists(p) else -1
        if size != s["tokens"] * dtype.itemsize:
            raise GptjaxError(f"token shard {p} is missing or truncated ({size} bytes, expected "
                              f"{s['tokens'] * dtype.itemsize}); rerun the prepare stage")
    return ShardedTokens(paths, [s["tokens"] for s in shards], dtype)


def finished_key(prepared: str) -> str | None:
    """The reuse key of a finished prepare output (meta.json is written last), else None."""
    try:
        with open(os.path.join(prepared, "meta.json")) as f:
            return json.load(f)["key"]
    except (OSError, ValueError, KeyError):
        return None


def open_prepared(path: str) -> tuple[str, Tokenizer]:
    """(tokens dir, tokenizer) of a prepare workdir or of its prepared/ folder."""
    out = os.path.join(path, PREPARED) if os.path.isdir(os.path.join(path, PREPARED)) else path
    if finished_key(out) is None:
        raise GptjaxError(f"data.prepared_dir={path!r} holds no finished prepare run; run "
                          "`python -m gptjax.train --config configs/prepare_<name>.py "
                          f"--workdir {path}` first")
    return os.path.join(out, "tokens"), load_tokenizer(os.path.join(out, "tokenizer.json"))
