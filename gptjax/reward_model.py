"""The reward model as a piece: its loss, a batched scorer, and loading a trained one.

Used by the `reward` stage (training, evaluation, normalisation) and, later, by PPO (scoring
rollouts). A trained reward workdir holds the RewardModel checkpoint, its tokenizer and
`reward_normalization.json` (the offset subtracted from every score).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import losses, sampling
from gptjax import workdir as workdir_lib
from gptjax.data import preferences
from gptjax.data.chat import Conversation, render_prompt
from gptjax.data.tokenizer import END_OF_TURN, Tokenizer, special_id
from gptjax.model import GPTConfig, RewardModel

NORMALIZATION_FILE = "reward_normalization.json"


def rm_loss_fn(model: RewardModel, dropout: bool):
    """loss_fn(params, batch, rng) -> (ranking loss, {'accuracy'}).

    batch: tokens (P, K, T), lengths (P, K), valid (P, K), pref (P, K, K): all K answers of a
    prompt are scored in one forward of P*K sequences, then compared pairwise.
    """
    def loss_fn(params, batch, rng):
        p, k, t = batch["tokens"].shape
        rngs = {"dropout": rng} if dropout and rng is not None else None
        scores = model.apply({"params": params}, batch["tokens"].reshape(p * k, t),
                             batch["lengths"].reshape(p * k), deterministic=rngs is None,
                             rngs=rngs).reshape(p, k)
        return losses.ranking_loss(scores, batch["pref"], batch["valid"])
    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg",))
def _scores(params, cfg: GPTConfig, tokens, lengths):
    return RewardModel(cfg).apply({"params": params}, tokens, lengths)


def score_tokens(params, cfg: GPTConfig, tokens: np.ndarray, lengths: np.ndarray,
                 batch: int = 64) -> np.ndarray:
    """Raw rewards (N,) of right-padded sequences tokens (N, T), in fixed-size chunks (one
    compile: the last chunk is padded)."""
    n, t = tokens.shape
    out = []
    for i in range(0, n, batch):
        tk, ln = tokens[i:i + batch], lengths[i:i + batch]
        pad = batch - len(tk)
        if pad:
            tk = np.concatenate([tk, np.zeros((pad, t), tk.dtype)])
            ln = np.concatenate([ln, np.ones((pad,), ln.dtype)])
        out.append(np.asarray(_scores(params, cfg, jnp.asarray(tk), jnp.asarray(ln)))[:batch - pad])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def encode_answers(tok: Tokenizer, items: list[tuple[Conversation, str]], seq_len: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (N, T) right-padded, lengths (N,)) of prompt + assistant answer, last T kept."""
    tokens = np.zeros((len(items), seq_len), np.int32)
    lengths = np.zeros((len(items),), np.int32)
    for i, (prompt, answer) in enumerate(items):
        ids = preferences.answer_ids(prompt, answer, tok, seq_len)
        tokens[i, :len(ids)], lengths[i] = ids, len(ids)
    return tokens, lengths


def sample_answers(params, cfg: GPTConfig, tok: Tokenizer, prompts: list[Conversation],
                   max_new_tokens: int, seed: int, temperature: float = 1.0) -> list[str]:
    """One sampled assistant reply per prompt from a chat model (stops at <|end|>).

    Replies get at most half the context; prompts keep their most recent tokens."""
    max_new_tokens = max(1, min(max_new_tokens, cfg.block_size // 2))
    width = cfg.block_size - max_new_tokens
    ids = [render_prompt(p, tok) for p in prompts]
    batch, prompt_lengths = sampling.left_pad([x[max(0, len(x) - width):] for x in ids])
    end = special_id(tok, END_OF_TURN)
    keys = jax.random.split(jax.random.key(seed), len(ids))
    out, _, lengths = sampling.generate(params, cfg, batch, prompt_lengths, keys,
                                        max_new_tokens, temperature=temperature, eos_id=end)
    out, lengths = np.asarray(out), np.asarray(lengths)
    replies = []
    for row, n in zip(out, lengths):
        row = row[:n].tolist()
        replies.append(tok.decode(row[:-1] if row and row[-1] == end else row))
    return replies


@dataclasses.dataclass
class Scorer:
    """A trained reward model: `score(prompt, answers)` -> normalised rewards."""

    cfg: GPTConfig
    params: Any
    tokenizer: Tokenizer
    offset: float  # subtracted from raw scores (mean reward of the SFT model's answers)

    def score(self, items: list[tuple[Conversation, str]]) -> np.ndarray:
        tokens, lengths = encode_answers(self.tokenizer, items, self.cfg.block_size)
        return score_tokens(self.params, self.cfg, tokens, lengths) - self.offset


def load(workdir: str) -> Scorer:
    """The latest reward-model checkpoint of a `reward` workdir, with its normalisation."""
    cfg = workdir_lib.model_config(workdir)
    tok = workdir_lib.read_tokenizer(workdir)
    # (a LoRA reward workdir: its SFT trunk with the adapters merged in, and its head)
    _, params = workdir_lib.restore_model(
        workdir, RewardModel(cfg), (jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32)))
    norm = workdir_lib.read_json(workdir, NORMALIZATION_FILE)
    offset = float(norm["offset"]) if norm else 0.0
    return Scorer(cfg, jax.device_put(params), tok, offset)
