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


def sft_loss(logits: Array, targets: Array, loss_mask: Array) -> Array:
    """Mean cross-entropy over the assistant's tokens only: -sum_t m_t log p(y_t) / sum_t m_t.

    The mean is over every masked-in token of the batch (not per sequence), so packing several
    conversations into one row changes nothing.
    """
    return lm_loss(logits, targets, loss_mask)


def preference_matrix(ranks: Array, valid: Array) -> Array:
    """pref[p, i, j] = 1 where answer i of prompt p ranks strictly better than answer j.

    ranks (P, K): lower is better (ties share a rank); valid (P, K) masks padded answers.
    """
    better = ranks[:, :, None] < ranks[:, None, :]
    both = valid[:, :, None] & valid[:, None, :]
    return (better & both).astype(jnp.float32)


def ranking_loss(scores: Array, pref: Array, valid: Array) -> tuple[Array, dict[str, Array]]:
    """InstructGPT's reward-model loss over all ranked pairs of each prompt's K answers.

        loss = (1/P) sum_p 1/C(K_p, 2) sum_{(w, l): w > l} -log sigmoid(r_pw - r_pl)

    scores (P, K): one reward per answer (each answer scored once, not once per pair);
    pref (P, K, K): pref[p, w, l] = 1 for every pair the labels order (w preferred to l);
    tied or unlabeled pairs are 0 and ignored; valid (P, K): K_p = valid[p].sum().
    Returns (loss, {'accuracy': fraction of labeled pairs with r_w > r_l}).
    """
    scores = scores.astype(jnp.float32)
    margin = scores[:, :, None] - scores[:, None, :]  # (P, K, K): r_i - r_j
    k = valid.sum(-1).astype(jnp.float32)  # (P,)
    pairs = jnp.maximum(k * (k - 1) / 2, 1.0)
    per_prompt = (-jax.nn.log_sigmoid(margin) * pref).sum((1, 2)) / pairs
    labeled = pref.sum()
    correct = ((margin > 0) * pref).sum()
    return per_prompt.mean(), {"accuracy": correct / jnp.maximum(labeled, 1.0)}
