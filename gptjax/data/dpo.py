"""DPO data: preference records with each answer rendered after its prompt, and a mask on the
answer's own tokens (the tokens whose log-probs sum to log pi(y | x)).

Per record of K answers (the readers of `gptjax.data.preferences`: pairs, or K ranked answers
whose C(K, 2) pairs minus ties are labeled):

    tokens (K, T + 1)  prompt + answer k as an assistant turn, right-padded with 0
    mask   (K, T + 1)  1 on answer k's tokens (its content and <|end|>), 0 on the prompt
    valid  (K,)        padded answers (records with fewer than k_max) are not valid
    pref   (K, K)      pref[w, l] = 1 for each labeled pair, w preferred to l

The prompt is the same for all K answers: its most recent whole turns that leave room for the
longest answer. A record whose longest answer does not fit T tokens, or whose last prompt turn
does not fit beside it, is too long and left out (counted).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gptjax.data import preferences, sources
from gptjax.data.chat import render_prompt
from gptjax.data.tokenizer import END_OF_TURN, Tokenizer, special_id
from gptjax.errors import GptjaxError, TokenizerCoverageError


def encode(rec: preferences.Preference, tok: Tokenizer, seq_len: int, k_max: int
           ) -> dict[str, np.ndarray] | None:
    """One record's arrays (see the module docstring), or None when it is too long."""
    end = special_id(tok, END_OF_TURN)
    answers = [tok.encode(a) + [end] for a in rec.answers]
    room = seq_len + 1 - max(len(a) for a in answers)  # what the prompt may take
    prompt = None
    for i in range(len(rec.prompt)):  # the most recent whole turns that fit
        ids = render_prompt(rec.prompt[i:], tok)
        if len(ids) <= room:
            prompt = ids
            break
    if prompt is None or room < 1:
        return None
    tokens = np.zeros((k_max, seq_len + 1), np.int32)
    mask = np.zeros((k_max, seq_len + 1), np.float32)
    for k, a in enumerate(answers):
        tokens[k, :len(prompt) + len(a)] = prompt + a
        mask[k, len(prompt):len(prompt) + len(a)] = 1.0
    valid = np.arange(k_max) < len(answers)
    pref = np.zeros((k_max, k_max), np.float32)
    for w, l in rec.pairs:
        pref[w, l] = 1.0
    return {"tokens": tokens, "mask": mask, "valid": valid, "pref": pref}


@dataclasses.dataclass
class PairData:
    train: list[list[dict[str, np.ndarray]]]  # per source, encoded records
    weights: list[float]  # per source, its data.mixture weight
    val: list[dict[str, np.ndarray]]
    k_max: int
    stats: dict[str, dict[str, int]]


def load(root: str, mixture: str, tok: Tokenizer, seq_len: int, val_fraction: float,
         max_examples: int = 0) -> PairData:
    """The preference data of `mixture` (`name:weight` entries: named sets or files, as for the
    reward model), each split into training and held-out records (`sources.split`, the same
    for every run)."""
    weights = dict(preferences.parse_mixture(mixture))
    raw = {name: preferences.read_source(name, root) for name in weights}
    k_max = max((len(r.answers) for recs in raw.values() for r in recs), default=2)
    data = PairData([], [], [], k_max, {})
    for name, recs in raw.items():
        if max_examples:
            recs = recs[:max_examples]
        encoded, unencodable, too_long = [], 0, 0
        for r in recs:
            try:
                e = encode(r, tok, seq_len, k_max)
            except TokenizerCoverageError:  # a character the char tokenizer lacks
                unencodable += 1
                continue
            if e is None:
                too_long += 1
            else:
                encoded.append(e)
        tr, va = sources.split(encoded, val_fraction)
        data.stats[name] = {"records": len(recs), "train": len(tr), "val": len(va),
                            "not_encodable": unencodable, "too_long": too_long}
        if not tr or not va:
            raise GptjaxError(
                f"preference data {name} leaves {len(tr)} training and {len(va)} held-out "
                f"records ({unencodable} not encodable by the tokenizer, {too_long} longer than "
                f"data.seq_len={seq_len}); it needs at least one of each")
        data.train.append(tr)
        data.weights.append(weights[name])
        data.val.extend(va)
    return data
