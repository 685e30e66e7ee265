"""Verifiable tasks for GRPO: prompts with a reference answer a program checks (`verifiers`).

`grpo.task`:
    addition    the synthetic task shipped in the package (gptjax/data/addition.py): training
                prompts from its train split, held-out ones from its test split; marker "so"
    gsm8k       data.root/gsm8k/train.jsonl (training) and test.jsonl (held out); the reference
                is the number after "####"; marker "####"
    FILE.jsonl  your own records {"prompt": str or [turns], "answer": str} (.jsonl or .jsonl.gz);
                the reference is the answer's final number; data.val_fraction is held out (the
                fixed split of the other stages); marker grpo.marker
Prompts are rendered up to <|assistant|> (the chat format) and keep their most recent whole
turns that fit the prompt width; those that do not fit, or hold characters a char tokenizer
lacks, are counted and left out.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os

import ml_collections

from gptjax.data import addition
from gptjax.data.chat import ROLE_TOKENS, Conversation, render_prompt
from gptjax.data.sft import split
from gptjax.data.tokenizer import Tokenizer
from gptjax.errors import GptjaxError
from gptjax.rl import verifiers

Example = tuple[Conversation, str]  # (prompt turns, reference answer)


class TaskError(GptjaxError):
    """A task whose prompts cannot be read or used."""


@dataclasses.dataclass
class Task:
    name: str
    marker: str  # the final answer follows it (verifiers.final_number)
    train: list[Example]
    test: list[Example]


@dataclasses.dataclass
class Encoded:
    """A split's usable prompts as token ids, their references, and what was left out."""

    ids: list[list[int]]
    references: list[str]
    stats: dict[str, int]


def _jsonl(path: str):
    if not os.path.isfile(path):
        raise TaskError(f"task file {path} does not exist; set --config.grpo.task to 'addition', "
                        "'gsm8k' (with --config.data.root) or a .jsonl of {\"prompt\", \"answer\"}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except ValueError as e:
                    raise TaskError(f"{path} line {i} is not JSON ({e})") from None


def read_gsm8k(path: str) -> list[Example]:
    out = []
    for i, r in _jsonl(path):
        ref = verifiers.final_number(r.get("answer", ""), "####") if "####" in r.get(
            "answer", "") else None
        if "question" not in r or ref is None:
            raise TaskError(f"{path} line {i}: a GSM8K row needs 'question' and an 'answer' "
                            "ending in '#### N'")
        out.append(([{"role": "user", "content": r["question"]}], ref))
    return out


def read_records(path: str) -> list[Example]:
    out = []
    for i, r in _jsonl(path):
        prompt, answer = r.get("prompt"), r.get("answer")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        ref = verifiers.final_number(str(answer)) if answer is not None else None
        if not isinstance(prompt, list) or not prompt or ref is None:
            raise TaskError(f"{path} line {i}: needs 'prompt' (text or turns) and an 'answer' "
                            f"holding a number (has {sorted(r)})")
        if not all(isinstance(t, dict) and t.get("role") in ROLE_TOKENS
                   and isinstance(t.get("content"), str) for t in prompt):
            raise TaskError(f"{path} line {i}: 'prompt' turns need a 'role' of "
                            f"{sorted(ROLE_TOKENS)} and a text 'content'")
        out.append((prompt, ref))
    return out


def load(config: ml_collections.ConfigDict) -> Task:
    g = config.grpo
    if g.task == "addition":
        return Task("addition", addition.MARKER,
                    addition.prompts("train", int(g.train_prompts), int(config.seed)),
                    addition.prompts("test", int(g.eval_prompts)))
    if g.task == "gsm8k":
        folder = os.path.join(config.data.root, "gsm8k")
        return Task("gsm8k", "####", read_gsm8k(os.path.join(folder, "train.jsonl")),
                    read_gsm8k(os.path.join(folder, "test.jsonl"))[:int(g.eval_prompts)])
    if g.task.endswith((".jsonl", ".jsonl.gz")):
        train, test = split(read_records(g.task), config.data.val_fraction)
        return Task(os.path.basename(g.task), g.marker, train, test[:int(g.eval_prompts)])
    raise TaskError(f"grpo.task={g.task!r} is unknown; use 'addition', 'gsm8k' or a .jsonl "
                    "file of {\"prompt\", \"answer\"} records")


def fit_prompt(conversation: Conversation, tok: Tokenizer, width: int) -> list[int] | None:
    """The ids of the longest suffix of whole turns that fits `width` tokens, else None."""
    for i in range(len(conversation)):
        ids = render_prompt(conversation[i:], tok)
        if len(ids) <= width:
            return ids
    return None


def encode(examples: list[Example], tok: Tokenizer, width: int) -> Encoded:
    """The usable prompts of a split (each distinct prompt once)."""
    ids, refs, seen = [], [], set()
    stats = {"records": len(examples), "kept": 0, "too_long": 0, "not_encodable": 0,
             "duplicates": 0}
    for prompt, ref in examples:
        try:
            x = fit_prompt(prompt, tok, width)
        except GptjaxError:  # a character a char tokenizer lacks
            stats["not_encodable"] += 1
            continue
        if x is None:
            stats["too_long"] += 1
        elif tuple(x) in seen:
            stats["duplicates"] += 1
        else:
            seen.add(tuple(x))
            ids.append(x)
            refs.append(ref)
            stats["kept"] += 1
    return Encoded(ids, refs, stats)
