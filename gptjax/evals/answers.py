"""A chat model's answers to a prompt set: batched KV-cache generation in the chat format.

Each prompt is rendered up to <|assistant|> (gptjax.data.chat.render_prompt) keeping its most
recent whole turns that fit the prompt width (block_size − max_new_tokens); every batch has the
same shape (the last one is padded), so a model compiles its decoder once. Sample j of prompt p
draws with the key fold_in(fold_in(key(seed), p), j) whichever model answers, so two models
compared on the same prompts use the same sampling settings and the same random streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from gptjax import sampling
from gptjax import workdir as workdir_lib
from gptjax.data import prompts as prompt_lib
from gptjax.data.chat import Conversation, has_chat_tokens
from gptjax.data.tokenizer import END_OF_TURN, special_id
from gptjax.errors import GptjaxError
from gptjax.evals.judge import clean_conversation


@dataclasses.dataclass
class Model:
    name: str  # the workdir
    trained: workdir_lib.TrainedModel


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The settings every model answers with."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    samples: int = 1  # answers per prompt
    seed: int = 0
    batch_size: int = 16  # rows per generate call


@dataclasses.dataclass
class Answers:
    texts: list[list[str]]  # (P, N): answer j to prompt p, without its <|end|>
    stopped: list[list[bool]]  # ended with <|end|> (False = cut at max_new_tokens)
    num_tokens: list[list[int]]  # answer tokens, <|end|> included


def load_model(workdir: str, what: str = "eval.a") -> Model:
    """A workdir that can answer in the chat format (sft, ppo, ...: not a reward model)."""
    workdir_lib.model_config(workdir)
    kind = workdir_lib.stage(workdir)
    if kind == "reward":
        raise GptjaxError(f"{what}={workdir} is a reward model, which scores answers but cannot "
                          "write them; pass an sft or ppo workdir")
    trained = workdir_lib.load(workdir)
    if not has_chat_tokens(trained.tokenizer):
        raise GptjaxError(f"{what}={workdir} ({kind}) has no chat tokens, so it cannot answer "
                          "in the chat format; pass an sft or ppo workdir")
    return Model(workdir, trained)


def prompt_width(model: Model, max_new_tokens: int, key: str = "max_new_tokens") -> int:
    """The prompt tokens left beside max_new_tokens answer slots; `key` names the setting in
    the error."""
    width = model.trained.cfg.block_size - max_new_tokens
    if width < 2:
        raise GptjaxError(
            f"{key}={max_new_tokens} leaves no room for a prompt in the "
            f"{model.trained.cfg.block_size}-token context of {model.name}; lower it")
    return width


def fit_prompt(conversation: Conversation, model: Model, width: int) -> list[int] | None:
    """The prompt ids of the longest suffix of whole turns that fits `width` tokens (characters
    a char tokenizer lacks are dropped); None when even the last turn is too long."""
    conversation, _ = clean_conversation(model.trained.tokenizer, conversation)
    return prompt_lib.fit_prompt(conversation, model.trained.tokenizer, width)


def answer(model: Model, prompts: Sequence[list[int]], s: Sampling,
           prompt_index: Sequence[int] | None = None) -> Answers:
    """`s.samples` answers to each prompt (token ids from `fit_prompt`). prompt_index[p] is
    prompt p's index in the shared prompt set (for its random stream; default 0..P−1)."""
    cfg, tok = model.trained.cfg, model.trained.tokenizer
    width = prompt_width(model, s.max_new_tokens)
    index = list(range(len(prompts))) if prompt_index is None else list(prompt_index)
    rows = [(p, j) for p in range(len(prompts)) for j in range(s.samples)]
    end = special_id(tok, END_OF_TURN)
    base = jax.random.key(s.seed)
    texts = [[""] * s.samples for _ in prompts]
    stopped = [[False] * s.samples for _ in prompts]
    counts = [[0] * s.samples for _ in prompts]
    for start in range(0, len(rows), s.batch_size):
        chunk = rows[start:start + s.batch_size]
        padded = chunk + [chunk[0]] * (s.batch_size - len(chunk))  # one shape: one compile
        tokens, lengths = sampling.left_pad([list(prompts[p]) for p, _ in padded], width)
        keys = jax.vmap(lambda p, j: jax.random.fold_in(jax.random.fold_in(base, p), j))(
            np.array([index[p] for p, _ in padded]), np.array([j for _, j in padded]))
        out, _, n = sampling.generate(model.trained.params, cfg, tokens, lengths, keys,
                                      s.max_new_tokens, temperature=s.temperature,
                                      top_k=s.top_k, top_p=s.top_p, eos_id=end)
        out, n = np.asarray(out), np.asarray(n)
        for (p, j), row, k in zip(chunk, out, n):
            ids = row[:k].tolist()
            done = bool(ids) and ids[-1] == end
            texts[p][j] = tok.decode(ids[:-1] if done else ids)
            stopped[p][j], counts[p][j] = done, int(k)
    return Answers(texts, stopped, counts)
