"""Prompt sets for win rates: MT-bench and Vicuna questions, held-out hh-rlhf prompts, a .jsonl.

- "mt-bench": the 80 MT-bench questions (FastChat llm_judge), first turn only (a second turn
  would ask each model about its own first answer, so the two would no longer answer the same
  prompt);
- "vicuna": the 80 Vicuna-bench questions;
- "hh-rlhf": the held-out prompts of hh-rlhf harmless-base, the fixed `data.val_fraction`
  split that PPO leaves out of its prompts and the reward stage holds out (distinct prompts);
- a path to a .jsonl file: one object a line with "prompt" (a string or a list of
  {"role", "content"} turns), "turns" (a list of user turns: the first is asked) or "question".
"""

from __future__ import annotations

import json
import os

from gptjax.data import preferences, sft as sft_data, shipped
from gptjax.data.chat import Conversation
from gptjax.errors import GptjaxError


class PromptSetError(GptjaxError):
    """A prompt set that is missing, empty, or has records without a prompt."""


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _record_prompt(r: dict, where: str) -> Conversation:
    if isinstance(r.get("prompt"), str):
        return _user(r["prompt"])
    if isinstance(r.get("prompt"), list) and r["prompt"]:
        return list(r["prompt"])
    if isinstance(r.get("turns"), list) and r["turns"] and isinstance(r["turns"][0], str):
        return _user(r["turns"][0])
    if isinstance(r.get("question"), str):
        return _user(r["question"])
    raise PromptSetError(f"{where} has no prompt: give it 'prompt' (text or turns), 'turns' or "
                         f"'question' (it has {sorted(r)})")


def read_jsonl(path: str) -> list[Conversation]:
    if not os.path.isfile(path):
        raise PromptSetError(f"prompt file {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise PromptSetError(f"{path} line {i} is not JSON ({e})") from None
            if not isinstance(r, dict):
                raise PromptSetError(f"{path} line {i} is not a JSON object")
            out.append(_record_prompt(r, f"{path} line {i}"))
    return out


def load(name: str, root: str, val_fraction: float, limit: int = 0) -> list[Conversation]:
    """The first `limit` (0 = all) distinct prompts of a named set or a .jsonl file."""
    if name.endswith(".jsonl"):
        prompts = read_jsonl(name)
    elif name in ("mt-bench", "vicuna"):
        file = "mt_bench_question.jsonl" if name == "mt-bench" else "vicuna_bench_question.jsonl"
        path = os.path.join(shipped.data_root(root), "mt-bench", file)
        if not os.path.isfile(path):
            raise PromptSetError(f"{path} does not exist; set --config.data.root to the folder "
                                 "holding the data sets (the repository's ../shared/data)")
        prompts = read_jsonl(path)
    elif name == "hh-rlhf":
        _, held_out = sft_data.split(preferences.read_hh_rlhf(root), val_fraction)
        prompts = [r.prompt for r in held_out]
    else:
        raise PromptSetError(f"eval.win_rate.prompts={name!r} is unknown: use mt-bench, vicuna, "
                             "hh-rlhf or a path to a .jsonl file")
    seen, out = set(), []
    for p in prompts:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(p)
    if limit:
        out = out[:limit]
    if not out:
        raise PromptSetError(f"the prompt set {name!r} is empty; give it at least one prompt")
    return out
