"""Language-model data: raw text -> token memmaps -> grain pipelines of (B, T+1) windows.

Training batches are random windows; batch i is a pure function of (seed, i), so the grain
iterator state (the next batch index) is all a checkpoint needs to resume the stream exactly, and
the global batch is the same whatever the number of processes: each process builds only its own
rows of it. Validation uses a fixed set of evenly spaced windows of the held-out split.
"""

from __future__ import annotations

import hashlib
import gzip
import importlib.resources
import json
import os
from dataclasses import dataclass

import grain
import numpy as np

from gptjax.data.shards import open_prepared, open_split
from gptjax.data.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, save_tokenizer
from gptjax.errors import GptjaxError

EMBEDDED_TEXT = "tinyshakespeare.txt"
_MAX_BATCHES = 1 << 40  # the training stream is unbounded in practice


def embedded_path(name: str) -> str:
    """A data file shipped in the package (gptjax/data/assets/, licenses beside them)."""
    return str(importlib.resources.files("gptjax.data") / "assets" / name)


def embedded_text_path() -> str:
    return embedded_path(EMBEDDED_TEXT)


def read_text(path: str) -> str:
    """Read a UTF-8 text file (gzip-compressed if its name ends with .gz), with one clear error
    for missing, empty or non-UTF-8 input."""
    if not os.path.isfile(path):
        what = "is a directory, not a file" if os.path.isdir(path) else "does not exist"
        raise GptjaxError(f"data file {path!r} {what}. Set --config.data.text_path to a UTF-8 "
                          "text file, or leave it empty for the shipped Tiny Shakespeare.")
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise GptjaxError(f"data file {path!r} is not a readable gzip file ({e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GptjaxError(
            f"data file {path!r} is not UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}). "
            "Convert it first, e.g. `iconv -f latin1 -t utf-8`.") from None
    if not text.strip():
        raise GptjaxError(f"data file {path!r} is empty; give it some text to train on.")
    return text


@dataclass
class TokenSplits:
    train: np.ndarray  # 1-D memmap of token ids (or ShardedTokens: len() and slicing)
    val: np.ndarray
    tokenizer: Tokenizer


def prepare_char_corpus(text_path: str, out_dir: str, val_fraction: float) -> TokenSplits:
    """Tokenize a text file with a char tokenizer into out_dir/{train,val}.bin (uint16) once.

    A later call with the same file and split reuses the files (keyed by the text's sha256).
    """
    text_path = text_path or embedded_text_path()
    text = read_text(text_path)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, "meta.json")
    key = {"source_sha256": digest, "val_fraction": val_fraction, "tokenizer": "char+specials"}
    tok_path = os.path.join(out_dir, "tokenizer.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if {k: meta.get(k) for k in key} == key:
            return _open_splits(out_dir, load_tokenizer(tok_path))
    tok = CharTokenizer.train(text)
    ids = np.asarray(tok.encode(text), dtype=np.uint16)
    n_val = int(len(ids) * val_fraction)
    if len(ids) - n_val < 2 or n_val < 2:
        raise GptjaxError(f"data file {text_path!r} has only {len(ids)} tokens: too few to split "
                          f"into train and validation (val_fraction={val_fraction}).")
    # Every process of a multi-process run may prepare the same folder at once (hosts need not
    # share a disk): each writes its own temporary files, and the renames are atomic.
    tmp_suffix = f".tmp{os.getpid()}"
    for name, part in (("train", ids[: len(ids) - n_val]), ("val", ids[len(ids) - n_val:])):
        tmp = os.path.join(out_dir, f"{name}.bin{tmp_suffix}")
        part.tofile(tmp)
        os.replace(tmp, os.path.join(out_dir, f"{name}.bin"))
    save_tokenizer(tok, tok_path)
    with open(meta_path + tmp_suffix, "w") as f:
        json.dump({**key, "source": text_path, "tokens": len(ids), "vocab_size": tok.vocab_size}, f)
    os.replace(meta_path + tmp_suffix, meta_path)
    return _open_splits(out_dir, tok)


def corpus_for(data_config, out_dir: str) -> TokenSplits:
    """The token splits a pretraining run reads, per the config's `data` section.

    With `data.prepared_dir` set: the token shards and tokenizer of a `prepare` run, memmapped
    lazily (`gptjax.data.shards.ShardedTokens`: every process opens every shard and reads only
    the pages under its own rows' windows). Otherwise: `text_path` tokenized by character.
    """
    if data_config.prepared_dir:
        tokens_dir, tok = open_prepared(data_config.prepared_dir)
        return TokenSplits(train=open_split(tokens_dir, "train"),
                           val=open_split(tokens_dir, "val"), tokenizer=tok)
    return prepare_char_corpus(data_config.text_path, out_dir, data_config.val_fraction)


def _open_splits(out_dir: str, tok: Tokenizer) -> TokenSplits:
    def mm(name):
        return np.memmap(os.path.join(out_dir, f"{name}.bin"), dtype=np.uint16, mode="r")
    return TokenSplits(train=mm("train"), val=mm("val"), tokenizer=tok)


class RandomWindows:
    """Batch i -> this process's rows of a (global_batch, seq_len + 1) block of random windows."""

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        if len(tokens) < seq_len + 1:
            raise GptjaxError(f"the training split has {len(tokens)} tokens, fewer than one window "
                              f"of seq_len+1={seq_len + 1}; use more text or a shorter seq_len.")
        if global_batch % process_count:
            raise GptjaxError(f"train.batch_size={global_batch} must divide among "
                              f"{process_count} processes")
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.global_batch = global_batch
        rows = global_batch // process_count
        self.rows = slice(process_index * rows, (process_index + 1) * rows)

    def __call__(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(index)])
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch)
        return _gather(self.tokens, starts[self.rows], self.seq_len + 1)


def _gather(tokens: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    return np.stack([tokens[s:s + width] for s in starts]).astype(np.int32)


def train_iterator(tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """A checkpointable grain iterator of this process's (rows, seq_len + 1) int32 batches."""
    windows = RandomWindows(tokens, seq_len, global_batch, seed, process_index, process_count)
    ds = grain.MapDataset.range(_MAX_BATCHES).map(windows)
    # One background thread prefetches a few batches; the work per batch is a memmap gather.
    opts = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    return iter(ds.to_iter_dataset(read_options=opts))


def val_batches(tokens: np.ndarray, seq_len: int, global_batch: int, num_batches: int,
                process_index: int = 0, process_count: int = 1) -> list[np.ndarray]:
    """The fixed validation set: num_batches * global_batch evenly spaced windows."""
    n = num_batches * global_batch
    if global_batch % process_count:
        raise GptjaxError(f"train.batch_size={global_batch} must divide among "
                          f"{process_count} processes")
    if len(tokens) < seq_len + 1:
        raise GptjaxError(f"the validation split has {len(tokens)} tokens, fewer than one window "
                          f"of {seq_len + 1}; raise data.val_fraction or use more text.")
    starts = np.linspace(0, len(tokens) - seq_len - 1, n).astype(np.int64)
    rows = global_batch // process_count
    out = []
    for b in range(num_batches):
        block = starts[b * global_batch:(b + 1) * global_batch]
        out.append(_gather(tokens, block[process_index * rows:(process_index + 1) * rows],
                           seq_len + 1))
    return out
