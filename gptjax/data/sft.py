"""SFT data: dialogue sets and the user's own files -> conversations -> rendered, packed
(B, T+1) batches.

Readers turn each named data set under `data.root` into conversations (lists of role/content
turns); a `data.mixture` entry that is a path, glob or folder of .jsonl / .jsonl.gz / .parquet
files is read in the format its fields say (gptjax.data.formats: messages, prompt/completion,
Alpaca, ShareGPT; forced by `data.format`), rejected rows counted per kind. A mixture string
such as "topical-chat:1,gsm8k:0.5,my/*.jsonl:2" names the sources and their sampling weights
(gptjax.data.sources). Every conversation is rendered by `gptjax.data.chat.render` and cut to
the longest prefix of whole turns that fits the window and ends with an assistant turn. The
grain pipeline mixes the sources by weight (`MapDataset.mix`), shuffles per epoch, gives each
process every process_count-th conversation, and packs conversations first-fit into rows of
T+1 tokens (`grain.experimental.FirstFitPackIterDataset`) with segment ids and positions that
restart per conversation, so attention never crosses from one conversation into another.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Callable, Sequence

import grain
import numpy as np

from gptjax.data import addition, formats, shipped, sources
from gptjax.data.chat import Conversation, parse_human_assistant, render
from gptjax.data.sources import split
from gptjax.data.tokenizer import Tokenizer
from gptjax.errors import GptjaxError, TokenizerCoverageError

Example = tuple[np.ndarray, np.ndarray]  # (ids (L,), loss mask (L,))


def read_source(name: str, root: str) -> list[Conversation]:
    """The conversations of the data set `name` under `root`; a damaged file is one error."""
    try:
        return READERS[name](root)
    except (ValueError, KeyError, TypeError, EOFError, OSError) as e:  # (UnicodeDecodeError,
        # json.JSONDecodeError are ValueErrors; KeyError/TypeError: records of another shape)
        raise GptjaxError(f"data set {name} under data.root={root} cannot be read "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); replace its "
                          "files with the original ones") from None


def read_hh_rlhf_chosen(root: str) -> list[Conversation]:
    """hh-rlhf harmless-base: the human-preferred ('chosen') transcript of each pair."""
    path, = sources.dataset_files(root, "hh-rlhf")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [parse_human_assistant(json.loads(line)["chosen"]) for line in f if line.strip()]


def _alternating(messages: Sequence[str]) -> Conversation:
    """Two-party dialogue: the first speaker is the user, the second the assistant."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": m.strip()}
            for i, m in enumerate(messages)]


def read_topical_chat(root: str) -> list[Conversation]:
    """Topical-Chat (knowledge-grounded chit-chat between two crowd workers)."""
    out = []
    for path in sources.dataset_files(root, "topical-chat"):
        with shipped.open_text(path) as f:
            data = json.load(f)
        for key in sorted(data):
            out.append(_alternating([t["message"] for t in data[key]["content"]]))
    return out


def read_kdconv(root: str) -> list[Conversation]:
    """KdConv (Chinese knowledge-driven dialogues: film, music, travel)."""
    out = []
    for path in sources.dataset_files(root, "kdconv"):
        with shipped.open_text(path) as f:
            for conv in json.load(f):
                out.append(_alternating([m["message"] for m in conv["messages"]]))
    return out


def read_gsm8k(root: str) -> list[Conversation]:
    """GSM8K train split: the question as the user turn, the worked answer as the reply."""
    out = []
    path, = sources.dataset_files(root, "gsm8k")
    with shipped.open_text(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out.append([{"role": "user", "content": r["question"]},
                            {"role": "assistant", "content": r["answer"]}])
    return out


def read_self_instruct(root: str) -> list[Conversation]:
    """Self-Instruct's 175 human-written seed tasks: instruction (+ input) -> output."""
    out = []
    path, = sources.dataset_files(root, "self-instruct")
    with shipped.open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            for inst in r["instances"]:
                prompt = r["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
                out.append([{"role": "user", "content": prompt},
                            {"role": "assistant", "content": inst["output"]}])
    return out


READERS: dict[str, Callable[[str], list[Conversation]]] = {
    "hh-rlhf": read_hh_rlhf_chosen, "topical-chat": read_topical_chat, "kdconv": read_kdconv,
    "gsm8k": read_gsm8k, "self-instruct": read_self_instruct,
    "addition": lambda root: addition.sft_conversations(),  # shipped: gptjax/data/addition.py
}


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """"a:1,b:0.5" -> [('a', 1.0), ('b', 0.5)]; a name without weight has weight 1; an entry
    may be a path, glob or folder of conversation files."""
    return sources.parse_mixture(spec, READERS)


def read_files(entry: str, fmt: str = "") -> tuple[list[Conversation], list[formats.FileReport]]:
    """The conversations of every file a mixture entry names, and one report per file."""
    convs, reports = [], []
    for path in sources.expand_files(entry):
        c, rep = formats.read_conversations(path, fmt)
        convs.extend(c)
        reports.append(rep)
    return convs, reports


@dataclasses.dataclass
class Stats:
    conversations: int = 0
    unencodable: int = 0  # a character the (char) tokenizer cannot encode
    too_long: int = 0  # not even the first assistant turn fits the window
    cut: int = 0  # later turns dropped to fit the window
    # file sources: rows that are no conversation, by kind (formats.PROBLEMS), and where each
    # kind first happened ("PATH line N why")
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    first_rejected: dict[str, str] = dataclasses.field(default_factory=dict)

    def kept(self) -> int:
        return self.conversations - self.unencodable - self.too_long


def _fit(conversation: Conversation, tok: Tokenizer, max_len: int
         ) -> tuple[Example | None, int]:
    """(rendering of the longest fitting prefix, or None; the number of turns it keeps)."""
    ids, mask = render(conversation, tok)
    if len(ids) <= max_len:
        return (ids, mask), len(conversation)
    for n in range(len(conversation) - 1, 0, -1):
        if conversation[n - 1]["role"] != "assistant":
            continue
        ids, mask = render(conversation[:n], tok)
        if len(ids) <= max_len:
            return (ids, mask), n
    return None, 0


def fit_window(conversation: Conversation, tok: Tokenizer, max_len: int) -> Example | None:
    """Render the longest prefix of whole turns that fits max_len tokens and ends with an
    assistant turn; None when no such prefix exists."""
    return _fit(conversation, tok, max_len)[0]


def tokenize(conversations: Sequence[Conversation], tok: Tokenizer, max_len: int
             ) -> tuple[list[tuple[Conversation, Example]], Stats]:
    """[(conversation, its example)] for the usable conversations, and what was dropped."""
    stats = Stats(conversations=len(conversations))
    out = []
    for conv in conversations:
        try:
            ex, kept = _fit(conv, tok, max_len)
        except TokenizerCoverageError:
            stats.unencodable += 1
            continue
        if ex is None:
            stats.too_long += 1
            continue
        if kept < len(conv):
            stats.cut += 1
        out.append((conv, ex))
    return out, stats


def _as_record(ex: Example) -> dict[str, np.ndarray]:
    return {"tokens": ex[0], "weights": ex[1]}


def _pack(ds: grain.IterDataset, width: int, rows: int, shuffle: bool, seed: int
          ) -> grain.IterDataset:
    packed = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct={"tokens": width, "weights": width}, num_packing_bins=rows,
        seed=seed, shuffle_bins=shuffle)
    return packed.map(_batch_fields).batch(rows)


def _batch_fields(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"tokens": x["tokens"].astype(np.int32), "weights": x["weights"].astype(np.float32),
            "segment_ids": x["tokens_segment_ids"].astype(np.int32),
            "positions": x["tokens_positions"].astype(np.int32)}


def _rows(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise GptjaxError(f"train.batch_size={global_batch} must divide among "
                          f"{process_count} processes")
    return global_batch // process_count


def train_iterator(sources: Sequence[list[Example]], weights: Sequence[float], seq_len: int,
                   global_batch: int, seed: int, process_index: int = 0,
                   process_count: int = 1) -> grain.DatasetIterator:
    """Checkpointable iterator of this process's packed rows: dicts of (rows, T+1) arrays
    'tokens', 'weights' (loss mask), 'segment_ids' (0 = padding) and 'positions'."""
    rows = _rows(global_batch, process_count)
    parts = [grain.MapDataset.source(ex).shuffle(seed=seed + i).repeat()
             for i, ex in enumerate(sources)]
    mixed = grain.MapDataset.mix(parts, weights=list(weights)) if len(parts) > 1 else parts[0]
    mine = mixed[process_index::process_count].map(_as_record)
    return iter(_pack(mine.to_iter_dataset(), seq_len + 1, rows, True, seed))


def val_batches(examples: list[Example], seq_len: int, global_batch: int, num_batches: int,
                process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    """The fixed validation set, packed the same way: dict of (num_batches, rows, T+1)."""
    if not examples:
        raise GptjaxError("the validation split is empty; raise data.val_fraction")
    rows = _rows(global_batch, process_count)
    ds = grain.MapDataset.source(examples).repeat()[process_index::process_count]
    it = iter(_pack(ds.map(_as_record).to_iter_dataset(), seq_len + 1, rows, False, 0))
    batches = [next(it) for _ in range(num_batches)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def load(root: str, mixture: str, tok: Tokenizer, seq_len: int, val_fraction: float,
         fmt: str = "") -> tuple[list[list[Example]], list[float], list[Example], dict[str, Stats]]:
    """(per-source train examples, weights, pooled validation examples, per-source stats).
    fmt: the format of the mixture's files ("" = detected per file)."""
    train, weights, val, stats = [], [], [], {}
    for name, weight in parse_mixture(mixture):
        reports = []
        if sources.is_file_entry(name):
            conversations, reports = read_files(name, fmt)
        else:
            conversations = read_source(name, root)
        # Split the usable conversations, so the held-out part never ends up all unusable.
        usable, stats[name] = tokenize(conversations, tok, seq_len + 1)
        stats[name].rejected, stats[name].first_rejected = formats.merge_reports(reports)
        tr, va = split(usable, val_fraction)
        if tr:  # a source with nothing usable is reported in the stats and left out
            train.append([ex for _, ex in tr])
            weights.append(weight)
            val.extend(ex for _, ex in va)
    if not train:
        detail = "; ".join(f"{n}: {st.unencodable} with characters the tokenizer lacks, "
                           f"{st.too_long} too long" for n, st in stats.items())
        raise GptjaxError(
            f"no conversation can be used ({detail}). Raise data.seq_len (up to the model's "
            "block size) or start from a model whose tokenizer covers the text.")
    return train, weights, val, stats
