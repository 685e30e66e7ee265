"""K answers per prompt from a chat model, ranked by a judge: reward-model data without humans.

InstructGPT's labelers rank K = 4..9 answers of the SFT model per prompt; Gao et al. (2022)
replace the labelers by a gold reward model. `rank_answers` does the latter with any judge
(`gptjax.evals.judge.Judge`, e.g. `gptjax.evals.gold.GoldJudge`): the model samples K answers
to each prompt, the judge scores them, and each prompt becomes one record

    {"prompt": [turns], "answers": [a_1 .. a_m], "ranks": [r_1 .. r_m], "scores": [...]}

with rank 0 the best and equal scores sharing a rank (a tie gives no pair), which the reward
stage reads as a `.jsonl` in `data.mixture` (all C(m, 2) pairs of a prompt in one batch).
Identical answers are kept once (the reward stage refuses duplicates: no preference between
them can be learned); a prompt with fewer than two distinct answers, or whose answers all tie,
gives no record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from gptjax.data.chat import Conversation
from gptjax.evals import answers as ans
from gptjax.evals.judge import Judge


def dense_ranks(scores: Sequence[float]) -> list[int]:
    """Rank 0 for the highest score, 1 for the next distinct one, ...; equal scores share one."""
    distinct = sorted(set(float(s) for s in scores), reverse=True)
    where = {s: i for i, s in enumerate(distinct)}
    return [where[float(s)] for s in scores]


def rank_answers(model: ans.Model, judge: Judge, prompts: Sequence[Conversation],
                 s: ans.Sampling, max_prompt_tokens: int = 0, key: str = "max_new_tokens"
                 ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(records, counts): s.samples answers of `model` to each prompt, ranked by `judge`.

    A prompt keeps its most recent whole turns that fit block_size − s.max_new_tokens tokens
    (`key` names that setting in the error), or max_prompt_tokens when smaller (PPO's
    ppo.max_prompt_tokens, so that the answers are those PPO's policy starts from)."""
    width = ans.prompt_width(model, s.max_new_tokens, key)
    width = min(width, max_prompt_tokens) if max_prompt_tokens else width
    fitted = [ans.fit_prompt(p, model, width) for p in prompts]
    keep = [i for i, x in enumerate(fitted) if x is not None]
    counts = {"prompts": len(prompts), "too_long": len(prompts) - len(keep), "records": 0}
    if not keep:
        return [], counts
    out = ans.answer(model, [fitted[i] for i in keep], s, keep)
    flat_prompts = [prompts[i] for i in keep for _ in range(s.samples)]
    flat = [t for row in out.texts for t in row]
    scores = np.asarray(judge.score(flat_prompts, flat), np.float64).reshape(len(keep), s.samples)
    records, c = to_records([prompts[i] for i in keep], out.texts, scores)
    counts.update(c)
    return records, counts


def to_records(prompts: Sequence[Conversation], texts: Sequence[Sequence[str]],
               scores: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The ranking records of prompts[p]'s answers texts[p] with the judge's scores[p] (see the
    module docstring), and how many answers / prompts were left out and why."""
    counts = {"records": 0, "duplicate_answers": 0, "one_answer": 0, "all_tied": 0}
    records = []
    for prompt, row, row_scores in zip(prompts, texts, scores):
        seen: dict[str, float] = {}
        for t, sc in zip(row, row_scores):
            if t in seen:
                counts["duplicate_answers"] += 1
            else:
                seen[t] = float(sc)
        if len(seen) < 2:
            counts["one_answer"] += 1
            continue
        if len(set(seen.values())) < 2:
            counts["all_tied"] += 1
            continue
        answers = list(seen)
        records.append({"prompt": list(prompt), "answers": answers,
                        "ranks": dense_ranks([seen[a] for a in answers]),
                        "scores": [seen[a] for a in answers]})
    counts["records"] = len(records)
    return records, counts


def write_jsonl(path: str, records: Sequence[dict[str, Any]]) -> None:
    """One record a line (UTF-8), as `gptjax.data.preferences.read_file` reads them."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
