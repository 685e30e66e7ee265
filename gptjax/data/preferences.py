"""Reward-model data: prompts with K >= 2 answers and which answer humans preferred.

A `Preference` holds a prompt (conversation turns before the answer), its K answers, and the
labeled pairs (w, l) = "answer w preferred to answer l". A full ranking gives all C(K, 2) pairs
minus ties; direct pairwise comparisons (possibly not transitive) are used as they are. Each
answer is rendered once as prompt + assistant turn (gptjax.data.chat.render) and batches hold
all K answers of a prompt, so the model scores every answer once, not once per pair.

Readers: hh-rlhf harmless-base (pairs), FineGrainedRLHF qa-feedback (4 answers, 6 human
comparisons each) and the user's own .jsonl / .jsonl.gz / .parquet files, one record a line or
row: {"prompt", "answers", "ranks"}, {"prompt", "chosen", "rejected"} (the prompt a string or a
list of turns; an answer a string or a list holding one assistant turn), or TRL's
conversational pairs {"chosen": [turns], "rejected": [turns]}, whose shared leading turns are
the prompt and whose last turn each is an assistant answer.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from gptjax.data import formats, shipped, sources
from gptjax.data.chat import Conversation, parse_human_assistant, render
from gptjax.data.sources import split
from gptjax.data.tokenizer import Tokenizer
from gptjax.errors import GptjaxError, TokenizerCoverageError


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
    path, = sources.dataset_files(root, "hh-rlhf")
    out = []
    for _, r in sources.iter_rows(path):
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
    path, = sources.dataset_files(root, "finegrained-rlhf")
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


def _answer(value: Any, what: str) -> str:
    """An answer: a string, or a list holding one assistant turn (TRL's conversational form)."""
    if isinstance(value, str):
        return value
    t = formats.turns(value, what)
    if len(t) != 1 or t[0]["role"] != "assistant":
        raise formats.RowProblem("wrong_type", f"{what} must be a string or one assistant turn")
    return t[0]["content"]


def implicit_pair(chosen: Any, rejected: Any) -> tuple[list[dict[str, str]], str, str]:
    """TRL's conversational pair without a prompt: (shared leading turns, chosen answer,
    rejected answer)."""
    c, r = formats.turns(chosen, "'chosen'"), formats.turns(rejected, "'rejected'")
    n = 0
    while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
    if len(c) != n + 1 or len(r) != n + 1 or not n:
        raise formats.RowProblem(
            "wrong_type", "'chosen' and 'rejected' must share their prompt turns and differ "
            "only in the last (assistant) turn")
    return c[:n], _answer(c[n:], "'chosen'"), _answer(r[n:], "'rejected'")


def from_record(r: dict[str, Any], where: str) -> Preference:
    """One preference record of a user's file (the formats of the module docstring)."""
    r = {k: v for k, v in r.items() if v is not None}  # Parquet: a column this row lacks
    try:
        if "prompt" not in r:
            if isinstance(r.get("chosen"), list) and isinstance(r.get("rejected"), list):
                prompt, chosen, rejected = implicit_pair(r["chosen"], r["rejected"])
                return from_ranks(prompt, [chosen, rejected], [0, 1], where)
            raise GptjaxError(f"{where}: missing field 'prompt'")
        prompt = r["prompt"]
        prompt = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                  else formats.turns(prompt, "'prompt'"))
        if "answers" in r:
            if "ranks" not in r:
                raise GptjaxError(f"{where}: 'answers' needs 'ranks' (lower = better)")
            answers, ranks = r["answers"], r["ranks"]
            if (not isinstance(answers, list) or not isinstance(ranks, list) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in ranks)):
                raise formats.RowProblem("wrong_type", "'answers' must be a list and 'ranks' a "
                                         "list of numbers")
            return from_ranks(prompt, [_answer(a, f"answer {i}") for i, a in enumerate(answers)],
                              ranks, where)
        if "chosen" in r and "rejected" in r:
            return from_ranks(prompt, [_answer(r["chosen"], "'chosen'"),
                                       _answer(r["rejected"], "'rejected'")], [0, 1], where)
    except formats.RowProblem as e:
        raise GptjaxError(f"{where}: {e}; fix that record") from None
    raise GptjaxError(f"{where}: needs 'answers' + 'ranks' or 'chosen' + 'rejected' "
                      f"(has {sorted(r)})")


def read_file(path: str) -> list[Preference]:
    """Preference records of a .jsonl / .jsonl.gz / .parquet file (see the module docstring)."""
    return [from_record(r, where) for where, r in sources.iter_rows(path)]


READERS: dict[str, Callable[[str], list[Preference]]] = {
    "hh-rlhf": read_hh_rlhf, "finegrained-rlhf": read_finegrained,
}


def read_source(name: str, root: str) -> list[Preference]:
    """The records of a mixture entry: a named data set, or every file a path / glob names."""
    if sources.is_file_entry(name):
        return [rec for path in sources.expand_files(name) for rec in read_file(path)]
    if name not in READERS:
        raise GptjaxError(f"data.mixture names unknown preference data {name!r}; known: "
                          f"{sorted(READERS)} or a path to a .jsonl or .parquet file")
    try:
        return READERS[name](root)
    except (ValueError, KeyError, TypeError, AttributeError, EOFError, OSError) as e:
        # (json errors, UnicodeDecodeError: ValueErrors; Key/Type/AttributeError: records of
        # another shape, e.g. a JSON line that is a list)
        raise GptjaxError(f"preference data {name} (data.root={root}) cannot be read "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); replace its "
                          "files with the original ones") from None


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    return sources.parse_mixture(spec, READERS, "preference data",
                                 "'hh-rlhf' or 'finegrained-rlhf' or a .jsonl file")


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
        except TokenizerCoverageError:
            skipped += 1
    return out, skipped


@dataclasses.dataclass
class RewardData:
    train: list[list[dict[str, np.ndarray]]]  # per source, encoded records
    weights: list[float]  # per source, its data.mixture weight
    val: list[dict[str, np.ndarray]]
    train_prompts: list[Conversation]  # for reward normalisation
    k_max: int
    stats: dict[str, dict[str, int]]


def load(root: str, mixture: str, tok: Tokenizer, seq_len: int, val_fraction: float,
         max_examples: int = 0, skip_examples: int = 0) -> RewardData:
    """The encoded records of each data set of the mixture: records [skip, skip + max) of each
    (max 0 = to the end), split into training and held-out parts."""
    weights = dict(parse_mixture(mixture))
    raw = {name: read_source(name, root) for name in weights}
    k_max = max((len(r.answers) for recs in raw.values() for r in recs), default=2)
    data = RewardData([], [], [], [], k_max, {})
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
        data.weights.append(weights[name])
        data.val.extend(e for _, e in enc_va)
        data.train_prompts.extend(r.prompt for r, _ in enc_tr)
    return data


def train_iterator(parts: Sequence[list[dict[str, np.ndarray]]], global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1,
                   weights: Sequence[float] | None = None) -> grain.DatasetIterator:
    """Checkpointable iterator of this process's batches of `global_batch / processes` prompts,
    each with all of its answers: tokens (P, K, T), lengths / valid (P, K), pref (P, K, K)."""
    if global_batch % process_count:
        raise GptjaxError(f"train.batch_size={global_batch} must divide among "
                          f"{process_count} processes")
    rows = global_batch // process_count
    ds = [grain.MapDataset.source(s).shuffle(seed=seed + i).repeat() for i, s in enumerate(parts)]
    mixed = grain.MapDataset.mix(ds, weights=weights) if len(ds) > 1 else ds[0]
    return iter(mixed[process_index::process_count].batch(rows).to_iter_dataset())


def stack(encoded: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in encoded]) for k in encoded[0]}


def val_stack(val: list[dict[str, np.ndarray]], global_batch: int, num_batches: int,
              pidx: int, pcount: int) -> dict[str, np.ndarray]:
    """The fixed validation batches used during training (reward model, DPO): this process's
    rows, (n, rows, ...) per field (the held-out records in order, repeated if too few)."""
    rows = global_batch // pcount
    data = stack([val[i % len(val)] for i in range(num_batches * global_batch)])
    return {k: v.reshape(num_batches, global_batch, *v.shape[1:])[:, pidx * rows:(pidx + 1) * rows]
            for k, v in data.items()}
