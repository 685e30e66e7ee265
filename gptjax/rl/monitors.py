"""Reward-hacking monitors of a batch of sampled answers, computed inside the jitted iteration.

A policy that games its reward model often changes the *shape* of its answers before anything
else: they grow to the token limit, repeat themselves, or collapse into digit strings while the
score rises. These statistics watch for that on every iteration without a host round trip:

    distinct-2    = |{distinct token bigrams}| / |{token bigrams}|   over all answers of the batch
    symbol share  = sum_t symbol_chars(y_t) / sum_t chars(y_t)      (characters that are digits,
                    punctuation or other symbols, over all characters of the answers' tokens)
    truncated     = the share of answers that reached max_new_tokens without the end token

Per-token character counts come from the tokenizer once (`text_tables`), so the symbol share is
a gather and two sums.
"""

from __future__ import annotations

import unicodedata

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.data.tokenizer import Tokenizer

Array = jax.Array


def is_symbol(ch: str) -> bool:
    """Digits, punctuation and symbols (Unicode categories N*, P*, S*)."""
    return unicodedata.category(ch)[0] in "NPS"


def text_tables(tok: Tokenizer, size: int) -> dict[str, np.ndarray]:
    """{'chars', 'symbols'}: (size,) float32 counts of characters and of symbol characters in each
    token's text (0 for special tokens and ids past the vocabulary)."""
    chars, symbols = np.zeros(size, np.float32), np.zeros(size, np.float32)
    specials = set(tok.specials.values())
    for i in range(min(tok.vocab_size, size)):
        if i in specials:
            continue
        text = tok.decode([i]).replace("\ufffd", "")
        text = "".join(text.split())  # whitespace is neither text nor symbol
        chars[i] = len(text)
        symbols[i] = sum(is_symbol(c) for c in text)
    return {"chars": chars, "symbols": symbols}


def distinct_2(tokens: Array, mask: Array) -> Array:
    """Distinct token bigrams over all answers: tokens (B, N) int, mask (B, N) 1 on answer tokens.

    A bigram (y_t, y_{t+1}) counts when both are answer tokens. After a lexicographic sort of the
    pairs (invalid ones last), a new bigram starts wherever a valid pair differs from its
    predecessor. 1.0 when there are no bigrams.
    """
    m = ((mask[:, :-1] > 0) & (mask[:, 1:] > 0)).reshape(-1)
    a, b = tokens[:, :-1].reshape(-1), tokens[:, 1:].reshape(-1)
    order = jnp.lexsort((b, a, ~m))  # the last key is the primary one: valid pairs first
    a, b, m = a[order], b[order], m[order]
    differs = jnp.concatenate([jnp.ones((1,), bool), (a[1:] != a[:-1]) | (b[1:] != b[:-1])])
    total = m.sum()
    return jnp.where(total > 0, (differs & m).sum() / jnp.maximum(total, 1), 1.0)


def symbol_share(tokens: Array, mask: Array, tables: dict[str, Array]) -> Array:
    """Symbol characters / all characters of the answers' tokens (0 when they have no text)."""
    m = mask.astype(jnp.float32)
    chars = (tables["chars"][tokens] * m).sum()
    return (tables["symbols"][tokens] * m).sum() / jnp.maximum(chars, 1.0)


def truncated(tokens: Array, lengths: Array, eos_id: int | None) -> Array:
    """(B,) bool: the answer filled every slot without ending in `eos_id` (response tokens
    (B, N), lengths (B,) counting the EOS). With no eos_id nothing is truncated."""
    n = tokens.shape[1]
    if eos_id is None:
        return jnp.zeros(tokens.shape[:1], bool)
    last = jnp.take_along_axis(tokens, jnp.clip(lengths - 1, 0, n - 1)[:, None], axis=1)[:, 0]
    return (lengths >= n) & (last != eos_id)


def answer_stats(tokens: Array, lengths: Array, mask: Array, scores: Array, cut: Array,
                 tables: dict[str, Array]) -> dict[str, Array]:
    """The monitors of one rollout: response tokens (B, N), lengths (B,), mask (B, N), scores
    (B,) as PPO sees them, cut (B,) truncated flags."""
    return {"response_length": lengths.astype(jnp.float32).mean(),
            "response_length_max": lengths.max().astype(jnp.float32),
            "truncated": cut.astype(jnp.float32).mean(),
            "distinct_2": distinct_2(tokens, mask),
            "symbol_share": symbol_share(tokens, mask, tables),
            "score_std": scores.std()}
