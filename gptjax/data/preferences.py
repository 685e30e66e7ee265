"""Reward-model data: prompts with K >= 2 answers and which answer humans preferred.

A `Preference` holds a prompt (conversation turns before the answer), its K answers, and the
labeled pairs (w, l) = "answer w preferred to answer l". A full ranking gives all C(K, 2) pairs
minus ties; direct pairwise comparisons (possibly not transitive) are used as they are. Each
answer is rendered once as prompt + assistant turn (gptjax.data.chat.render) and batches hold
all K answers of a prompt, so the model scores every answer once, not once per pair.

Readers: hh-rlhf harmless-base (pairs), FineGrainedRLHF qa-feedback (4 answers, 6 human
comparisons each) and a generic JSONL ({"prompt", "answers", "ranks"} or {"prompt", "chosen",
"rejected"}; the prompt is a string or a list of turns).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import grain
import numpy as np

from gptjax.data import shipped
from gptjax.data.chat import Conversation, parse_human_assistant, render
from gptjax.data.sft import split
from gptjax.data.tokenizer import Tokenizer
from gptjax.errors import GptjaxError


@dataclasses.dataclass
class Preference:
    prompt: Conversation
    answers: list[str]
    pairs: list[tuple[int, int]]  # (preferred, other)


def from_ranks(prompt: Conversation, answers: list[str], ranks: Sequence[float],
               where: str = "record") -> Preference:
    """A ranked record (lower rank = better; equal ranks are ties and give no pair)."""
    if len(answers) < 2 or len(ranks) != len(answers):
        raise GptjaxError(f"{where}: needs >= 2 answers and one rank per answer "
                          f"(got {len(answers)} answers, {len(ranks)} ranks)")
    if len(set(answers)) < len(answers):
        raise GptjaxError(f"{where}: two answers are identical, so no preference between them "
                          "can be learned; remove the duplicate")
    pairs = [(i, j) for i in range(len(answers)) for j in range(len(answers))
             if ranks[i] < ranks[j]]
    return Preference(list(prompt), list(answers), pairs)


def read_hh_rlhf(root: str) -> list[Preference]:
    """hh-rlhf harmless-base: chosen/rejected transcripts sharing all but the last reply."""
    path = os.path.join(root, "hh-rlhf-harmless-base-test", "test.jsonl.gz")
    out = []
    for i, r in enumerate(_jsonl(path)):
        chosen, rejected = (parse_human_assistant(r[k]) for k in ("chosen", "rejected"))
        if (chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant"
                or chosen[:-1] != rejected[:-1]
                or chosen[-1]["content"] == rejected[-1]["content"]):
            continue  # not a pair of answers to one prompt (a few records of the data set)
        out.append(Preference(chosen[:-1], [chosen[-1]["content"], rejected[-1]["content"]],
                              [(0, 1)]))
    return out


def read_finegrained(root: str) -> list[Preference]:
    """FineGrainedRLHF qa-feedback (dev): 4 answers per question, 6 pairwise human judgements
    (1vs2, 1vs3, 1vs4, 2vs3, 2vs4, 3vs4: 1 = first better, 2 = second, 0 = no preference).
    The comparisons are used directly, so non-transitive judgements need no ranking."""
    path = os.path.join(root, "finegrained-rlhf-qa-feedback", "dev_feedback.json")
    with shipped.open_text(path) as f:
        data = json.load(f)
    order = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    out = []
    for r in data:
        answers = [r[f"prediction {k}"] for k in range(1, 5)]
        pairs = []
        for (a, b), v in zip(order, r["preference"]):
            if v == 1:
                pairs.append((a, b))
            elif v == 2:
                pairs.append((b, a))
        if pairs and len(set(answers)) == 4:
            out.append(Preference([{"role": "user", "content": r["question"]}], answers, pairs))
    return out


def read_jsonl(path: str) -> list[Preference]:
    """Generic preference records, one JSON object per line (see the module docstring)."""
    out = []
    for i, r in enumerate(_jsonl(path), 1):
        where = f"{path} line {i}"
        if "prompt" not in r:
            raise GptjaxError(f"{where}: missing field 'prompt'")
        prompt = r["prompt"]
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if "answers" in r:
            if "ranks" not in r:
                raise GptjaxError(f"{where}: 'answers' needs 'ranks' (lower = better)")
            out.append(from_ranks(prompt, r["answers"], r["ranks"], where))
        elif "chosen" in r and "rejected" in r:
            out.append(from_ranks(prompt, [r["chosen"], r["rejected"]], [0, 1], where))
        else:
            raise GptjaxError(f"{where}: needs 'answers' + 'ranks' or 'chosen' + 'rejected' "
                              f"(has {sorted(r)})")
    return out


READERS: dict[str, Callable[[str], list[Preference]]] = {
    "hh-rlhf": read_hh_rlhf, "finegrained-rlhf": read_finegrained,
}


def read_source(name: str, root: str) -> list[Preference]:
    """The records of `name` (a data set under `root`, or a .jsonl file); a damaged or
    unexpected file is one GptjaxError naming it."""
    try:
        if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
            return read_jsonl(name)
        if name not in READERS:
            raise GptjaxError(f"data.mixture names unknown preference data {name!r}; known: "
                              f"{sorted(READERS)} or a path to a .jsonl file")
        return READERS[name](shipped.data_root(root))
    except (ValueError, KeyError, TypeError, AttributeError, EOFError, OSError) as e:
        # (json errors, UnicodeDecodeError: ValueErrors; Key/Type/AttributeError: records of
        # another shape, e.g. a JSON line that is a list)
        raise GptjaxError(f"preference data {name} (data.root={root}) cannot be read "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _jsonl(path: str):
    with shipped.open_text(path) as f:
        i = 0
        try:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError as e:
                        raise GptjaxError(f"{path} line {i} is not JSON ({e})") from None
        except (UnicodeDecodeError, EOFError, OSError) as e:  # (gzip: a damaged stream)
            what = "is not UTF-8" if isinstance(e, UnicodeDecodeError) else "cannot be read"
            raise GptjaxError(f"data file {path} {what} (line {i + 1}: {e}); convert or "
                              "replace it") from None


def answer_ids(prompt: Conversation, answer: str, tok: Tokenizer, seq_len: int) -> np.ndarray:
    """The token ids a reward model scores: prompt + the answer as an assistant turn. An
    over-long sequence keeps its last seq_len tokens (the score is read at the end)."""
    return render([*prompt, {"role": "assistant", "content": answer}], tok)[0][-seq_len:]


def encode(rec: Preference, tok: Tokenizer, seq_len: int, k_max: int) -> dict[str, np.ndarray]:
    """One prompt's answers as arrays: tokens (K, T) right-padded, lengths (K,), valid (K,),
    pref (K, K) (padded answers have length 1 and are never valid)."""
    tokens = np.zeros((k_max, seq_len), np.int32)
    lengths = np.ones((k_max,), np.int32)
    for k, answer in enumerate(rec.answers):
        ids = answer_ids(rec.prompt, answer, tok, seq_len)
        tokens[k, :len(ids)] = ids
        lengths[k] = len(ids)
    valid = np.arange(k_max) < len(rec.answers)
    pref = np.zeros((k_max, k_max), np.float32)
    for w, l in rec.pairs:
        pref[w, l] = 1.0
    return {"tokens": tokens, "lengths": lengths, "valid": valid, "pref": pref}


def encode_all(records: list[Preference], tok: Tokenizer, seq_len: int, k_max: int
               ) -> tuple[list[tuple[Preference, dict[str, np.ndarray]]], int]:
    """([(record, its arrays)], how many were skipped for characters the tokenizer lacks)."""
    out, skipped = [], 0
    for r in records:
        try:
            out.append((r, encode(r, tok, seq_len, k_max)))
        except GptjaxError as e:
            if "not in this char tokenizer's vocabulary" not in str(e):
                raise
            skipped += 1
    return out, skipped


@dataclasses.dataclass
class RewardData:
    train: list[list[dict[str, np.ndarray]]]  # per source, encoded records
    val: list[dict[str, np.ndarray]]
    train_prompts: list[Conversation]  # for reward normalisation
    k_max: int
    stats: dict[str, dict[str, int]]


def load(root: str, mixture: str, tok: Tokenizer, seq_len: int, val_fraction: float,
         max_examples: int = 0, skip_examples: int = 0) -> RewardData:
    """The encoded records of each data set of the mixture: records [skip, skip + max) of each
    (max 0 = to the end), split into training and held-out parts."""
    names = [n.strip() for n in mixture.split(",") if n.strip()]
    if not names:
        raise GptjaxError("data.mixture is empty; name preference data, e.g. 'hh-rlhf' or "
                          "'finegrained-rlhf' or a .jsonl file")
    raw = {name: read_source(name, root) for name in names}
    k_max = max(len(r.answers) for recs in raw.values() for r in recs)
    data = RewardData([], [], [], k_max, {})
    for name, recs in raw.items():
        recs = recs[skip_examples:]
        if max_examples:
            recs = recs[:max_examples]
        # Split the encodable records, so the held-out part never ends up all unusable.
        encoded, skipped = encode_all(recs, tok, seq_len, k_max)
        enc_tr, enc_va = split(encoded, val_fraction)
        data.stats[name] = {"records": len(recs), "train": len(enc_tr), "val": len(enc_va),
                            "not_encodable": skipped}
        if not enc_tr or not enc_va:
            raise GptjaxError(
                f"preference data {name} leaves {len(enc_tr)} training and {len(enc_va)} "
                f"held-out records ({skipped} not encodable by the tokenizer); it "
                "needs at least one of each")
        data.train.append([e for _, e in enc_tr])
        data.val.extend(e for _, e in enc_va)
        data.train_prompts.extend(r.prompt for r, _ in enc_tr)
    return data


def train_iterator(sources: Sequence[list[dict[str, np.ndarray]]], global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """Checkpointable iterator of this process's batches of `global_batch / processes` prompts,
    each with all of its answers: tokens (P, K, T), lengths / valid (P, K), pref (P, K, K)."""
    if global_batch % process_count:
        raise GptjaxError(f"train.batch_size={global_batch} must divide among "
                          f"{process_count} processes")
    rows = global_batch // process_count
    parts = [grain.MapDataset.source(s).shuffle(seed=seed + i).repeat()
             for i, s in enumerate(sources)]
    mixed = grain.MapDataset.mix(parts) if len(parts) > 1 else parts[0]
    return iter(mixed[process_index::process_count].batch(rows).to_iter_dataset())


def stack(encoded: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in encoded]) for k in encoded[0]}
