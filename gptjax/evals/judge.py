"""Judges: anything that scores answers by their text. A reward-model workdir is one.

A judge sees only the prompt and the answer as text and re-encodes them with its own
tokenizer, so the models it compares may have other tokenizers than it has. Any object with
`name` and `score(prompts, answers) -> scores (N,)` plugs in (a gold scorer, an ensemble, a
verifier); `load_reward_judge(workdir)` makes one from a trained `reward` stage.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from gptjax import reward_model
from gptjax import workdir as workdir_lib
from gptjax.data.chat import Conversation
from gptjax.data.tokenizer import Tokenizer
from gptjax.errors import GptjaxError


class NotARewardModel(GptjaxError):
    """A workdir named as a judge (or a reward model to evaluate) was trained by another stage."""


class Judge(Protocol):
    name: str

    def score(self, prompts: Sequence[Conversation], answers: Sequence[str]) -> np.ndarray:
        """One score per (prompt, answer) pair: higher = better."""
        ...


def encodable(tok: Tokenizer, text: str) -> tuple[str, int]:
    """(text without the characters `tok` cannot encode, how many were dropped).

    Only a char tokenizer lacks characters (sentencepiece falls back to bytes); a judge with
    one would otherwise refuse a model's answer for a single unseen character."""
    stoi = getattr(tok, "stoi", None)
    if tok.kind != "char" or stoi is None:
        return text, 0
    # Special tokens are whole words of the char tokenizer: keep them.
    specials = sorted(tok.specials, key=len, reverse=True)
    parts = re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if specials else [text]
    kept, dropped = [], 0
    for i, part in enumerate(parts):
        if i % 2:
            kept.append(part)
            continue
        ok = "".join(ch for ch in part if ch in stoi)
        dropped += len(part) - len(ok)
        kept.append(ok)
    return "".join(kept), dropped


def clean_conversation(tok: Tokenizer, conv: Conversation) -> tuple[list[dict[str, str]], int]:
    """A conversation with every turn passed through `encodable`."""
    out, dropped = [], 0
    for turn in conv:
        text, d = encodable(tok, turn["content"])
        out.append({"role": turn["role"], "content": text})
        dropped += d
    return out, dropped


def require_reward_workdir(workdir: str, what: str) -> None:
    """A clear error when `workdir` is not the workdir of a finished `reward` stage."""
    workdir_lib.model_config(workdir)  # no such folder / not a gptjax workdir
    kind = workdir_lib.stage(workdir)
    if kind != "reward":
        raise NotARewardModel(f"{what}={workdir} is a {kind!r} workdir, not a reward model; pass "
                              "the --workdir of a `reward` stage run")


@dataclasses.dataclass
class RewardJudge:
    """A trained reward model as a judge (scores minus its normalisation offset)."""

    name: str
    scorer: reward_model.Scorer
    dropped_chars: int = 0  # characters of judged text the judge's tokenizer lacked

    def score(self, prompts: Sequence[Conversation], answers: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(answers):
            raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers")
        tok = self.scorer.tokenizer
        items = []
        for p, a in zip(prompts, answers):
            p, d1 = clean_conversation(tok, p)
            a, d2 = encodable(tok, a)
            self.dropped_chars += d1 + d2
            items.append((p, a))
        return self.scorer.score(items) if items else np.zeros((0,), np.float32)


def load_reward_judge(workdir: str, what: str = "eval.judge") -> RewardJudge:
    """The reward model of a `reward` workdir as a judge; `what` names the config key in the
    error for a workdir of another stage."""
    require_reward_workdir(workdir, what)
    return RewardJudge(workdir, reward_model.load(workdir))
