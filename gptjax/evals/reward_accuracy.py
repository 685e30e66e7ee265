"""Pairwise accuracy of a reward model on held-out human preferences, with honest errors.

    accuracy = #{labeled pairs (w, l) with r_w > r_l} / #labeled pairs

(a tie counts as wrong, as in the reward stage's `reward_eval.json`). Pairs of one prompt share
its difficulty (FineGrainedRLHF gives 6 comparisons of 4 answers to one question), so beside the
binomial standard error sqrt(a(1−a)/n), which treats pairs as independent, come the
cluster-robust standard error and a 95% bootstrap interval that resample whole prompts
(`gptjax.evals.winrate`). With one pair per prompt the three agree.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from gptjax import reward_model
from gptjax.data import preferences
from gptjax.data.sft import split
from gptjax.evals import winrate


def heldout_records(workdir: str, mixture: str, root: str, split_name: str, tok,
                    seq_len: int) -> tuple[list, dict]:
    """(records with their arrays, counts) of the preference sets in `mixture`.

    split_name "heldout": the reward run's own fixed held-out part (its data.val_fraction and
    data.max_examples, read from <workdir>/config.json, split over the records its tokenizer
    encodes, as the stage does): pairs it never trained on. "all": every record (for a set the
    reward model never saw)."""
    with open(os.path.join(workdir, "config.json")) as f:
        data_cfg = json.load(f).get("data", {})
    val_fraction = float(data_cfg.get("val_fraction", 0.1))
    max_examples = int(data_cfg.get("max_examples", 0))
    skip_examples = int(data_cfg.get("skip_examples", 0))
    names = [n.strip() for n in mixture.split(",") if n.strip()]
    raw = {n: preferences.read_source(n, root) for n in names}
    k_max = max((len(r.answers) for recs in raw.values() for r in recs), default=2)
    out, stats = [], {}
    for name, recs in raw.items():
        if split_name == "heldout":  # the records the reward run read: [skip, skip + max)
            recs = recs[skip_examples:][:max_examples or None]
        encoded, skipped = preferences.encode_all(recs, tok, seq_len, k_max)
        kept = split(encoded, val_fraction)[1] if split_name == "heldout" else encoded
        stats[name] = {"records": len(recs), "evaluated": len(kept), "not_encodable": skipped}
        out.extend(kept)
    return out, {"sets": stats, "split": split_name,
                 "val_fraction": val_fraction if split_name == "heldout" else None}


def pair_outcomes(scores: np.ndarray, records: list) -> tuple[np.ndarray, np.ndarray]:
    """(correct (n_pairs,) 0/1, prompt group (n_pairs,)) over every labeled pair; records
    with the same prompt text share a group."""
    correct, groups, ids = [], [], {}
    for (rec, _), s in zip(records, scores):
        g = ids.setdefault(json.dumps(list(rec.prompt), sort_keys=True), len(ids))
        for w, l in rec.pairs:
            correct.append(float(s[w] > s[l]))
            groups.append(g)
    return np.asarray(correct), np.asarray(groups)


def evaluate(scorer: reward_model.Scorer, records: list, n_boot: int = 2000,
             seed: int = 0) -> dict:
    """Accuracy, its three errors and the grouping of `records` ([(Preference, arrays)])."""
    data = preferences.stack([e for _, e in records])
    n, k, t = data["tokens"].shape
    scores = reward_model.score_tokens(scorer.params, scorer.cfg, data["tokens"].reshape(n * k, t),
                                       data["lengths"].reshape(n * k)).reshape(n, k)
    correct, groups = pair_outcomes(scores, records)
    pairs = len(correct)
    acc = float(correct.mean()) if pairs else math.nan
    lo, hi = winrate.cluster_bootstrap(correct, groups, n_boot, 0.95, seed)
    per_prompt = np.bincount(groups) if pairs else np.zeros((0,), int)
    return {"accuracy": acc, "pairs": pairs, "records": n, "prompts": int(len(per_prompt)),
            "max_pairs_per_prompt": int(per_prompt.max()) if pairs else 0, "chance": 0.5,
            "stderr": math.sqrt(acc * (1 - acc) / pairs) if pairs else math.nan,
            "cluster_stderr": winrate.cluster_stderr(correct, groups),
            "ci_low": lo, "ci_high": hi, "ci_level": 0.95,
            "grouping": (f"{pairs} pairs share {len(per_prompt)} prompts (up to "
                         f"{per_prompt.max()} a prompt): errors and interval resample prompts"
                         if pairs and per_prompt.max() > 1 else
                         "one pair per prompt: pairs are independent")}
