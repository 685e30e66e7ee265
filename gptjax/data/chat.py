"""The chat format: one function renders a conversation to token ids and a loss mask.

A conversation is a list of turns {"role": "system" | "user" | "assistant", "content": str}.
Each turn is rendered as

    <|role|> content <|end|>

with the role and end-of-turn markers as single special tokens. The loss mask is 1 on the
tokens an assistant turn produces (its content and its <|end|>, so the model learns to stop) and
0 elsewhere (the role markers and every system or user token). A prompt for generation is the
rendered history followed by <|assistant|>; the reply ends at <|end|>. Training (SFT), the reward
model, sampling, chat and PPO all go through `render` / `render_prompt`, so the format is the
same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Mapping

import numpy as np

from gptjax.data.tokenizer import ASSISTANT, END_OF_TURN, SYSTEM, USER, Tokenizer, special_id
from gptjax.errors import GptjaxError

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
Conversation = Sequence[Mapping[str, str]]


def _check(conversation: Conversation, need_assistant: bool) -> None:
    if not conversation:
        raise GptjaxError("a conversation has no turns; give at least one user turn")
    for i, turn in enumerate(conversation):
        role = turn.get("role")
        if role not in ROLE_TOKENS:
            raise GptjaxError(f"turn {i} has role {role!r}; roles are {sorted(ROLE_TOKENS)}")
        if not isinstance(turn.get("content"), str):
            raise GptjaxError(f"turn {i} ({role}) has no text 'content'")
    if need_assistant and not any(t["role"] == "assistant" for t in conversation):
        raise GptjaxError(
            "a conversation has no assistant turn, so it has nothing to learn from; SFT data "
            "needs at least one {'role': 'assistant', 'content': ...} turn")


def render(conversation: Conversation, tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(ids (L,) int32, loss mask (L,) float32) of a whole conversation, for training.

    mask[t] = 1 when token t is produced by the assistant (its content or its <|end|>).
    """
    _check(conversation, need_assistant=True)
    end = special_id(tok, END_OF_TURN)
    ids: list[int] = []
    mask: list[float] = []
    for turn in conversation:
        body = tok.encode(turn["content"]) + [end]
        ids.append(special_id(tok, ROLE_TOKENS[turn["role"]]))
        mask.append(0.0)
        ids.extend(body)
        mask.extend([1.0 if turn["role"] == "assistant" else 0.0] * len(body))
    return np.asarray(ids, np.int32), np.asarray(mask, np.float32)


def render_prompt(conversation: Conversation, tok: Tokenizer) -> list[int]:
    """Token ids that ask the model for the next assistant turn: history + <|assistant|>."""
    _check(conversation, need_assistant=False)
    end = special_id(tok, END_OF_TURN)
    ids: list[int] = []
    for turn in conversation:
        ids.append(special_id(tok, ROLE_TOKENS[turn["role"]]))
        ids.extend(tok.encode(turn["content"]))
        ids.append(end)
    ids.append(special_id(tok, ASSISTANT))
    return ids


def has_chat_tokens(tok: Tokenizer) -> bool:
    return all(t in tok.specials for t in (*ROLE_TOKENS.values(), END_OF_TURN))


def parse_human_assistant(text: str) -> list[dict[str, str]]:
    """Anthropic hh-rlhf's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript -> turns."""
    turns: list[dict[str, str]] = []
    markers = {"\n\nHuman:": "user", "\n\nAssistant:": "assistant"}
    pos = 0
    while True:
        hits = [(text.find(m, pos), m) for m in markers]
        hits = [(i, m) for i, m in hits if i >= 0]
        if not hits:
            break
        i, m = min(hits)
        if turns:
            turns[-1]["content"] = text[pos:i].strip()
        turns.append({"role": markers[m], "content": ""})
        pos = i + len(m)
    if not turns:
        raise GptjaxError("the transcript has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    turns[-1]["content"] = text[pos:].strip()
    return turns
