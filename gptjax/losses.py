"""Loss functions, each pure: the next-token LM loss now; SFT, ranking, PPO and KL join it here."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_logprobs(logits: Array, targets: Array) -> Array:
    """log p(target_t | x_<t) for every position: logits (B, T, V), targets (B, T) -> (B, T).

    Computed in float32 whatever the compute dtype: log_softmax(z)_y = z_y - logsumexp(z).
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return picked - lse


def lm_loss(logits: Array, targets: Array, weights: Array | None = None) -> Array:
    """Weighted mean cross-entropy  -sum_t w_t log p(y_t) / sum_t w_t  (w = 1 when none given).

    A batch whose weights are all zero has loss 0 (not NaN).
    """
    nll = -token_logprobs(logits, targets)
    if weights is None:
        return nll.mean()
    weights = weights.astype(jnp.float32)
    total = weights.sum()
    return (nll * weights).sum() / jnp.where(total > 0, total, 1.0)
