"""Loss functions, each pure: next-token LM, masked SFT, ranking RM, DPO / IPO, and the PPO / KL
terms."""

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


# --- DPO / IPO -------------------------------------------------------------------------------
# Preference optimisation without a reward model (Rafailov et al. 2023): the policy's implicit
# reward is r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)), trained with a pairwise loss on it.

DPO_LOSSES = ("sigmoid", "ipo", "hinge")


def sequence_logprobs(logits: Array, targets: Array, mask: Array, average: bool = False
                      ) -> Array:
    """log pi(y | x) = sum_t m_t log p(y_t | y_<t, x) over the answer's tokens (mask m), per row:
    logits (B, T, V), targets / mask (B, T) -> (B,). average=True divides by sum_t m_t (the
    per-token mean log-prob IPO uses); an empty mask gives 0."""
    lp = (token_logprobs(logits, targets) * mask).sum(-1)
    if not average:
        return lp
    n = mask.astype(jnp.float32).sum(-1)
    return lp / jnp.where(n > 0, n, 1.0)


def dpo_pair_loss(h: Array, beta: float, kind: str = "sigmoid", label_smoothing: float = 0.0
                  ) -> Array:
    """The loss of a pair (w preferred to l) from h = log(pi_w / ref_w) - log(pi_l / ref_l):

        sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (DPO; eps > 0 is
                 conservative DPO, labels flipped with probability eps)
        ipo      (h - 1 / (2 beta))^2                                        (IPO, Azar et al.)
        hinge    max(0, 1 - beta h)                                          (SLiC-HF)
    """
    h = h.astype(jnp.float32)
    if kind == "sigmoid":
        return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
                - label_smoothing * jax.nn.log_sigmoid(-beta * h))
    if kind == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if kind == "hinge":
        return jax.nn.relu(1.0 - beta * h)
    raise ValueError(f"unknown DPO loss {kind!r}; choose one of {DPO_LOSSES}")


def dpo_loss(logps: Array, ref_logps: Array, pref: Array, beta: float, kind: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[Array, dict[str, Array]]:
    """DPO over all labeled pairs of each record's K answers.

        rho_k = log pi(y_k | x) - log pi_ref(y_k | x)         r_k = beta rho_k (implicit reward)
        loss = (1/P') sum_p 1/n_p sum_{(w, l): w > l} dpo_pair_loss(rho_w - rho_l)

    logps, ref_logps (P, K): sequence log-probs of each answer (ref_logps get no gradient);
    pref (P, K, K): pref[p, w, l] = 1 for each labeled pair; n_p = pairs of record p; P' =
    records with a pair (a padding record has none and weighs 0). With K = 2 this is TRL's
    mean over pairs. Metrics, weighted over pairs like the loss (TRL's rewards/chosen, ...):
    rewards_chosen = E[r_w], rewards_rejected = E[r_l], rewards_margins = E[r_w - r_l],
    rewards_accuracies = E[r_w > r_l] (ties count as wrong), logps_chosen = E[log pi(y_w)],
    logps_rejected = E[log pi(y_l)].
    """
    logps = logps.astype(jnp.float32)
    rho = logps - jax.lax.stop_gradient(ref_logps.astype(jnp.float32))  # (P, K)
    h = rho[:, :, None] - rho[:, None, :]  # (P, K, K): rho_i - rho_j
    n = pref.sum((1, 2))  # (P,)
    records = jnp.maximum((n > 0).sum(), 1)
    w = pref / jnp.where(n > 0, n, 1.0)[:, None, None] / records  # sums to 1 over all pairs
    loss = (w * dpo_pair_loss(h, beta, kind, label_smoothing)).sum()

    def mean(x):  # the pair-weighted mean of x (P, K, K), or of x (P, K) read as x_w or x_l
        return jax.lax.stop_gradient((w * jnp.broadcast_to(x, w.shape)).sum())

    r = beta * rho
    chosen, rejected = r[:, :, None], r[:, None, :]  # r_w, r_l of pair (w, l) = (i, j)
    lp_w, lp_l = logps[:, :, None], logps[:, None, :]
    return loss, {"rewards_chosen": mean(chosen), "rewards_rejected": mean(rejected),
                  "rewards_margins": mean(chosen - rejected),
                  "rewards_accuracies": mean((chosen > rejected).astype(jnp.float32)),
                  "logps_chosen": mean(lp_w), "logps_rejected": mean(lp_l)}


# --- PPO and KL -----------------------------------------------------------------------------
# Per-token terms of the PPO objective live here with the other losses: they are pure functions
# of arrays (no rollout, no model), used by `gptjax.rl.ppo` and checked by hand in the tests.


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """sum(m * x) / sum(m) over `axis` (all axes by default); 0 where the mask is empty."""
    mask = mask.astype(jnp.float32)
    total = mask.sum(axis)
    return (x * mask).sum(axis) / jnp.where(total > 0, total, 1.0)


KL_KINDS = ("k1", "abs", "mse", "k3")


def kl_penalty(logprobs: Array, ref_logprobs: Array, kind: str = "k1") -> Array:
    """Per-token estimate of KL(pi || pi_ref) from the sampled token's log-probs (any shape).

    With d = log pi(y) - log pi_ref(y) for y ~ pi (Schulman's estimators, as in TRL):
        k1 = d                       unbiased, can be negative (InstructGPT's penalty)
        abs = |d|,  mse = d^2 / 2    biased, non-negative
        k3 = exp(-d) - 1 + d         unbiased, non-negative, low variance
    """
    d = logprobs.astype(jnp.float32) - ref_logprobs.astype(jnp.float32)
    if kind == "k1":
        return d
    if kind == "abs":
        return jnp.abs(d)
    if kind == "mse":
        return 0.5 * d * d
    if kind == "k3":
        return jnp.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {KL_KINDS}")


def ppo_policy_loss(logprobs: Array, old_logprobs: Array, advantages: Array, mask: Array,
                    clip_eps: float) -> tuple[Array, dict[str, Array]]:
    """PPO's clipped surrogate (Schulman et al. 2017), a masked mean over tokens.

        rho_t = exp(log pi(y_t) - log pi_old(y_t))
        L = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))

    (the negated min of the two surrogates). Where the clipped term is the larger one, rho_t is
    outside the trust region in the direction A_t favours and the gradient is 0.
    Metrics: clipfrac = mean_t [clipped term is larger]; approx_kl = mean_t (rho_t - 1 - log rho_t)
    (the k3 estimate of KL(pi_old || pi)); ratio = mean_t rho_t.
    """
    log_ratio = logprobs.astype(jnp.float32) - old_logprobs.astype(jnp.float32)
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    stats = {"clipfrac": masked_mean((clipped > unclipped).astype(jnp.float32), mask),
             "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
             "ratio": masked_mean(ratio, mask)}
    return loss, jax.tree.map(jax.lax.stop_gradient, stats)


def ppo_value_loss(values: Array, old_values: Array, returns: Array, mask: Array,
                   clip: float) -> tuple[Array, dict[str, Array]]:
    """The clipped value loss of PPO implementations (baselines, TRL), a masked mean over tokens.

        V_clip = V_old + clip(V - V_old, -c, c)
        L = 1/2 mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)

    Metrics: vf_clipfrac = mean_t [clipped error is larger].
    """
    values = values.astype(jnp.float32)
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(err, err_clipped), mask)
    stats = {"vf_clipfrac": masked_mean((err_clipped > err).astype(jnp.float32), mask)}
    return loss, jax.tree.map(jax.lax.stop_gradient, stats)


def entropy(logits: Array) -> Array:
    """Entropy of each position's next-token distribution: logits (..., V) -> (...).

        H = -sum_v p_v log p_v,  p = softmax(z)

    Padded vocabulary columns (logit finfo.min) have p = 0 exactly and add nothing.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -(jnp.exp(logp) * logp).sum(-1)
