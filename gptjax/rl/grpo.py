"""GRPO and RLOO for language models, as pure functions: group advantages, the loss, its update.

No critic: each of G prompts is answered K times and an answer's advantage is its reward
against the other answers to the same prompt (DeepSeekMath, Shao et al. 2024; RLOO, Ahmadian
et al. 2024). Rows are prompt-major (row g * K + k is prompt g's k-th answer, as
`gptjax.rl.rollout.sample` lays them out); every array is (B, N) with B = G * K rows and N
response slots, and a response mask m (1 on answer tokens).

Advantages (`group_advantages`), with r the rewards of one group of K answers:

    baseline  group:  b_i = mean_j r_j                                      (GRPO)
              rloo:   b_i = (sum_j r_j - r_i) / (K - 1)                     (leave-one-out)
    scale     group:  A_i = (r_i - b_i) / (std_group(r) + eps)              (GRPO)
              batch:  A_i = (r_i - b_i) / (std over the whole batch + eps)
              none:   A_i =  r_i - b_i                                      (Dr. GRPO; RLOO)

std is Bessel-corrected (TRL's), eps = 1e-4. A group whose K rewards are all equal has A = 0
under every rule: it teaches nothing, and `zero_std_groups` counts it. The advantage of an
answer is the same on each of its tokens.

Dynamic sampling at a fixed shape (`informative_groups`; DAPO, Yu et al. 2025, resamples until
the batch holds G groups whose rewards differ): the rollout answers oversample x G prompts and
the update keeps G groups, those whose K rewards differ first, in a random order, then flat
ones if there are not G informative ones. Flat groups cost a forward and backward and give no
gradient, so with half the groups flat (a policy right on about 0.1 or 0.9 of the answers)
an update on G kept groups carries up to twice the signal of one on G sampled ones.

The loss per token (`token_losses`), with rho_t = pi(y_t) / pi_old(y_t):

    l_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)  [+ beta * KL_t]

(eps_high > eps_low is DAPO's clip-higher, Yu et al. 2025). KL_t estimates KL(pi || pi_ref)
from the sampled token with d_t = log pi(y_t) - log pi_ref(y_t) (`gptjax.losses.kl_penalty`):
k1 = d_t, k3 = exp(-d_t) - 1 + d_t. `kl_in`:

    loss    beta * KL_t is added to l_t, differentiated (the GRPO way; use k3: its gradient
            is an unbiased estimate of the gradient of the KL, while k1's averages to 0)
    reward  r_i <- r_i - beta * sum_t KL_t with the sampling policy's log-probs, before the
            advantages (the RLOO / classic RLHF way; no gradient through it)

The per-token losses are aggregated over a minibatch of rows (`aggregate`):

    token_mean     sum_i sum_t m l / sum_i sum_t m          (DAPO; the default)
    sequence_mean  1/G' sum_i (sum_t m l / sum_t m)         (GRPO's paper; G' = rows with tokens)
    fixed_length   sum_i sum_t m l / (B * N)                (Dr. GRPO, Liu et al. 2025)

token_mean is the default: each token weighs the same whatever its answer's length, so a long
wrong answer is not penalised less per token than a short one (sequence_mean's length bias,
which Dr. GRPO points out), and unlike fixed_length the loss's scale does not shrink when
max_new_tokens grows. It is TRL's GRPOTrainer default too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gptjax import losses

Array = jax.Array

ADVANTAGES = ("group", "rloo")
SCALES = ("group", "batch", "none")
KL_IN = ("loss", "reward")
KL_KINDS = ("k1", "k3")
AGGREGATIONS = ("token_mean", "sequence_mean", "fixed_length")
STD_EPS = 1e-4  # TRL's


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO / RLOO hyper-parameters (hashable: a static jit argument)."""

    samples_per_prompt: int = 8  # K
    advantage: str = "group"  # the baseline: group mean, or leave-one-out (rloo)
    scale: str = "group"  # what divides the centred reward: group std, batch std, or none
    beta: float = 0.04  # KL coefficient (DeepSeekMath's); 0 skips the reference model
    kl_kind: str = "k3"
    kl_in: str = "loss"
    aggregation: str = "token_mean"
    clip_low: float = 0.2  # eps_low
    clip_high: float = 0.2  # eps_high (DAPO's clip-higher: 0.28)
    mask_truncated: bool = False  # answers cut at max_new_tokens leave the loss (DAPO)
    epochs: int = 1  # passes over each rollout batch (GRPO's mu)
    num_minibatches: int = 1
    oversample: int = 1  # rollout groups per kept group (`informative_groups`)


class Batch(NamedTuple):
    """One GRPO batch (leading axis B everywhere), what the update shuffles into minibatches."""

    inputs: Any  # what `forward` reads: {'tokens' (B, S), 'prompt_lengths' (B,)}
    mask: Array  # (B, N) 1 on answer tokens in the loss
    old_logprobs: Array  # (B, N) log pi_old(y_t): the policy that sampled
    ref_logprobs: Array  # (B, N) log pi_ref(y_t) (zeros when beta = 0)
    advantages: Array  # (B,) A_i, one per answer


def flat_groups(rewards: Array, k: int) -> Array:
    """(G,) True where a group's k rewards are all equal (exactly: the float std of equal values
    can be a rounding error above 0); rewards (B,) prompt-major."""
    r = rewards.reshape(-1, k)
    return jnp.all(r == r[:, :1], axis=-1)


def group_advantages(rewards: Array, k: int, advantage: str = "group", scale: str = "group"
                     ) -> tuple[Array, dict[str, Array]]:
    """(A (B,), stats) from rewards (B,) of B / k groups of k answers (see the module
    docstring). Stats: zero_std_groups (how many groups have all k rewards equal),
    zero_std_fraction, reward_std_group (mean within-group std)."""
    if k < 2:
        raise ValueError(f"group advantages need >= 2 answers per prompt, got {k}")
    r = rewards.astype(jnp.float32).reshape(-1, k)  # (G, K)
    total = r.sum(-1, keepdims=True)
    if advantage == "group":
        base = total / k
    elif advantage == "rloo":
        base = (total - r) / (k - 1)
    else:
        raise ValueError(f"unknown advantage {advantage!r}; choose one of {ADVANTAGES}")
    centred = r - base
    std_g = jnp.std(r, axis=-1, ddof=1, keepdims=True)
    if scale == "group":
        adv = centred / (std_g + STD_EPS)
    elif scale == "batch":
        adv = centred / (jnp.std(r, ddof=1) + STD_EPS)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
    flat = flat_groups(r, k)  # all equal: exactly 0
    adv = jnp.where(flat[:, None], 0.0, adv)
    stats = {"zero_std_groups": flat.sum().astype(jnp.float32),
             "zero_std_fraction": flat.mean(),
             "reward_std_group": std_g.mean()}
    return adv.reshape(-1), stats


def informative_groups(rewards: Array, k: int, keep: int, key: Array) -> Array:
    """Row indices (keep * k,) of `keep` of the B / k groups of k answers in rewards (B,):
    groups whose rewards differ first, in a random order (from key), then flat ones. Rows of a
    group stay together and prompt-major, so the result is a batch of `keep` groups."""
    varies = 1.0 - flat_groups(rewards, k).astype(jnp.float32)
    if keep > varies.shape[0]:
        raise ValueError(f"cannot keep {keep} of {varies.shape[0]} groups")
    _, groups = jax.lax.top_k(varies + 0.5 * jax.random.uniform(key, varies.shape), keep)
    return (groups[:, None] * k + jnp.arange(k)).reshape(-1)


def kl_estimate(logprobs: Array, ref_logprobs: Array, kind: str) -> Array:
    """Per-token KL(pi || pi_ref) estimate, k1 or k3 (`gptjax.losses.kl_penalty`)."""
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r} for GRPO; choose one of {KL_KINDS}")
    return losses.kl_penalty(logprobs, ref_logprobs, kind)


def token_losses(logprobs: Array, old_logprobs: Array, advantages: Array, clip_low: float,
                 clip_high: float) -> tuple[Array, Array, Array]:
    """(l_t (B, N), clipped low (B, N) bool, clipped high (B, N) bool) of the clipped surrogate

        l_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)

    with A (B,) broadcast over an answer's tokens. "Clipped" marks where the clipped term is
    the smaller one and its gradient is 0: low where A < 0 and rho_t < 1 - eps_low, high where
    A > 0 and rho_t > 1 + eps_high."""
    log_ratio = logprobs.astype(jnp.float32) - old_logprobs.astype(jnp.float32)
    ratio = jnp.exp(log_ratio)
    a = advantages.astype(jnp.float32)[:, None]
    unclipped = ratio * a
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * a
    loss = -jnp.minimum(unclipped, clipped)
    low = (a < 0) & (ratio < 1.0 - clip_low)
    high = (a > 0) & (ratio > 1.0 + clip_high)
    return loss, low, high


def aggregate(x: Array, mask: Array, how: str) -> Array:
    """A minibatch's loss from per-token losses x (B, N) under mask m (module docstring)."""
    m = mask.astype(jnp.float32)
    if how == "token_mean":
        return losses.masked_mean(x, m)
    if how == "sequence_mean":
        per_row = losses.masked_mean(x, m, axis=-1)  # (B,); 0 for a row without tokens
        rows = (m.sum(-1) > 0).astype(jnp.float32)
        return (per_row * rows).sum() / jnp.maximum(rows.sum(), 1.0)
    if how == "fixed_length":
        return (x * m).sum() / (m.shape[0] * m.shape[1])
    raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")


def make_batch(inputs: Any, mask: Array, logprobs: Array | None, ref_logprobs: Array,
               rewards: Array, truncated: Array, hp: GRPOConfig
               ) -> tuple[Batch, dict[str, Array]]:
    """A rollout's arrays -> the GRPO batch and its stats.

    logprobs (B, N): log pi(y_t) of the policy that sampled (pi_old), or None for an on-policy
    update whose KL is in the loss (then nothing here needs them, and the loss takes pi_old =
    stop_gradient(pi)). rewards (B,): the verifiers' weighted sum; with kl_in='reward' they lose
    beta * sum_t KL_t first. truncated (B,): answers cut at max_new_tokens, left out of the loss
    when hp.mask_truncated."""
    m = mask.astype(jnp.float32)
    r = rewards.astype(jnp.float32)
    stats = {"reward": r.mean(), "reward_std": r.std()}
    if logprobs is not None and hp.beta:
        kl = kl_estimate(logprobs, ref_logprobs, hp.kl_kind) * m
        stats.update({"kl": losses.masked_mean(kl, m), "kl_sequence": kl.sum(-1).mean()})
        if hp.kl_in == "reward":
            r = r - hp.beta * kl.sum(-1)
            stats["reward_with_kl"] = r.mean()
    elif hp.kl_in == "reward" and hp.beta:
        raise ValueError("kl_in='reward' needs the sampling policy's log-probs")
    adv, adv_stats = group_advantages(r, hp.samples_per_prompt, hp.advantage, hp.scale)
    stats.update(adv_stats)
    stats["advantage_abs"] = jnp.abs(adv).mean()
    if hp.mask_truncated:
        m = m * (1.0 - truncated.astype(jnp.float32))[:, None]
    old = jnp.zeros(m.shape, jnp.float32) if logprobs is None else logprobs
    return Batch(inputs, m, old, ref_logprobs, adv), stats


Forward = Callable[[Any, Any], tuple[Array, Array | None]]


def make_loss_fn(forward: Forward, hp: GRPOConfig, on_policy: bool = False
                 ) -> Callable[..., tuple[Array, dict]]:
    """loss_fn(params, minibatch: Batch) -> (loss, metrics) for `gptjax.rl.ppo.ppo_update`.

        loss = aggregate(l_t [+ beta * KL_t]; m)

    forward(params, inputs) -> (log pi(y_t) (B, N), entropy (B, N) or None). on_policy: the
    minibatch was sampled by these very parameters (one epoch, one minibatch), so pi_old =
    stop_gradient(pi) and rho = 1 (its gradient is grad log pi)."""
    def loss_fn(params, mb: Batch):
        logp, ent = forward(params, mb.inputs)
        old = jax.lax.stop_gradient(logp) if on_policy else mb.old_logprobs
        per_token, low, high = token_losses(logp, old, mb.advantages, hp.clip_low,
                                            hp.clip_high)
        m = mb.mask
        metrics = {"policy_loss": aggregate(per_token, m, hp.aggregation)}
        if hp.kl_in == "loss" and hp.beta:
            kl = kl_estimate(logp, mb.ref_logprobs, hp.kl_kind)
            per_token = per_token + hp.beta * kl
            metrics["kl_loss"] = losses.masked_mean(kl, m)
        loss = aggregate(per_token, m, hp.aggregation)
        log_ratio = logp - old
        metrics.update({
            "clip_low": losses.masked_mean(low.astype(jnp.float32), m),
            "clip_high": losses.masked_mean(high.astype(jnp.float32), m),
            "approx_kl": losses.masked_mean(jnp.exp(log_ratio) - 1.0 - log_ratio, m)})
        if ent is not None:
            metrics["entropy"] = losses.masked_mean(ent, m)
        return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
    return loss_fn
