"""PPO for language models, as pure functions: rewards, GAE, whitening, KL control, the update.

The objective (InstructGPT, Ouyang et al. 2022, after Ziegler et al. 2019) for a prompt x and a
sampled response y = (y_0 .. y_{n-1}):

    R(x, y) = r_phi(x, y) - beta * sum_t [log pi(y_t | x, y_<t) - log pi_SFT(y_t | x, y_<t)]

spread over tokens as per-token rewards (`shaped_rewards`), turned into advantages by GAE with a
learned value V (`gae`), and maximised with PPO's clipped surrogate (`gptjax.losses`) over a few
epochs of minibatches (`ppo_update`), plus optionally InstructGPT's pretraining term
gamma_ptx * E_pretrain[log pi]. Every array here is (B, N): B sequences, N response slots, with a
response mask m (1 on real response tokens, 0 after EOS). Nothing here knows about models: the
update takes a `forward(params, inputs) -> (logprobs, values, entropy)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from gptjax import losses

Array = jax.Array


class Transition(NamedTuple):
    """One PPO batch (leading axis B everywhere), what the update shuffles into minibatches."""

    inputs: Any  # pytree with leading axis B: what `forward` needs (e.g. tokens, prompt lengths)
    mask: Array  # (B, N) 1 on response tokens
    logprobs: Array  # (B, N) log pi_old(y_t), the policy that sampled
    values: Array  # (B, N) V_old(s_t), the critic at sampling time
    advantages: Array  # (B, N) A_t (whitened if asked)
    returns: Array  # (B, N) R_t = A_t + V_old(s_t) (before whitening), the critic's target


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (defaults: InstructGPT / TRL's). Hashable: a static jit argument."""

    gamma: float = 1.0  # discount over response tokens
    lam: float = 0.95  # GAE lambda
    clip_eps: float = 0.2  # policy ratio clip
    vf_clip: float = 0.2  # value clip around V_old
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    ptx_coef: float = 0.0  # InstructGPT's gamma for the pretraining log-likelihood
    kl_kind: str = "k1"  # per-token KL estimator in the reward (see losses.kl_penalty)
    whiten_advantages: bool = True
    epochs: int = 4
    num_minibatches: int = 1


def shaped_rewards(logprobs: Array, ref_logprobs: Array, scores: Array, mask: Array,
                   beta: Array | float, kl_kind: str = "k1") -> tuple[Array, Array]:
    """Per-token rewards and KL: (rewards (B, N), kl (B, N)).

        kl_t = m_t * KL-estimate(log pi(y_t) - log pi_ref(y_t))
        r_t  = -beta * kl_t + [t = T_last] * r_phi(x, y)

    T_last is the row's last masked-in slot (the EOS, or the last token of a truncated
    response); a row with an empty mask gets no score. Summed over t, r_t is R(x, y) above.
    """
    m = mask.astype(jnp.float32)
    kl = losses.kl_penalty(logprobs, ref_logprobs, kl_kind) * m
    t = jnp.arange(m.shape[-1])
    last = jnp.max(jnp.where(m > 0, t, -1), axis=-1)  # (B,) -1 for an empty row
    bonus = jnp.where(t == last[:, None], scores.astype(jnp.float32)[:, None], 0.0)
    return -beta * kl + bonus, kl


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float
        ) -> tuple[Array, Array]:
    """Generalised advantage estimation (Schulman et al. 2016) as a reversed lax.scan over time.

        delta_t = r_t + gamma * m_{t+1} V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} A_{t+1},     A_N = V_N = 0
        R_t     = A_t + V_t

    The mask stops the recursion: nothing is bootstrapped from a slot past a row's last real
    token (m_{t+1} = 0 ends the episode there). Returns (advantages, returns), both 0 where
    m_t = 0. rewards, values, mask: (B, N).
    """
    m = mask.astype(jnp.float32)
    values = values.astype(jnp.float32)

    def step(carry, x):  # one slot t, all rows at once; carry holds slot t + 1
        a_next, v_next, m_next = carry
        r, v, m_t = x
        live = m_next > 0
        delta = r + gamma * jnp.where(live, v_next, 0.0) - v
        a = delta + gamma * lam * jnp.where(live, a_next, 0.0)
        return (a, v, m_t), a

    zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
    xs = (rewards.astype(jnp.float32).T, values.T, m.T)  # time-major (N, B)
    _, adv = jax.lax.scan(step, (zeros, zeros, zeros), xs, reverse=True)
    adv = jnp.where(m > 0, adv.T, 0.0)
    return adv, jnp.where(m > 0, adv + values, 0.0)


def whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    """Masked whitening (TRL's masked_whiten): statistics over the entries where mask = 1.

        mu = sum(m x) / sum(m),   var = sum(m (x - mu)^2) / (sum(m) - 1)   (Bessel-corrected)
        w  = (x - mu) / sqrt(var + eps)     (+ mu again if shift_mean=False)

    Entries outside the mask come back as 0.
    """
    m = mask.astype(jnp.float32)
    n = m.sum()
    mean = losses.masked_mean(x, m)
    var = ((x - mean) ** 2 * m).sum() / jnp.maximum(n - 1.0, 1.0)
    w = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        w = w + mean
    return jnp.where(m > 0, w, 0.0)


@flax.struct.dataclass
class KLController:
    """The KL coefficient beta and how it moves; beta is a leaf (checkpointed with the state).

    target None: a fixed beta. Otherwise Ziegler et al. (2019)'s adaptive rule (`update_kl`).
    """

    beta: Array  # float32 scalar
    target: float | None = flax.struct.field(pytree_node=False, default=None)
    horizon: float = flax.struct.field(pytree_node=False, default=10000.0)


def fixed_kl(beta: float) -> KLController:
    """A controller whose beta never changes."""
    return KLController(jnp.asarray(beta, jnp.float32))


def adaptive_kl(init_beta: float, target: float, horizon: float) -> KLController:
    """Ziegler et al.'s proportional controller, aiming the per-sequence KL at `target`."""
    if target <= 0 or horizon <= 0:
        raise ValueError(f"adaptive KL needs target > 0 and horizon > 0; got target={target}, "
                         f"horizon={horizon}")
    return KLController(jnp.asarray(init_beta, jnp.float32), float(target), float(horizon))


def update_kl(ctrl: KLController, kl: Array | float, n_steps: int) -> KLController:
    """beta after a batch of n_steps sequences whose mean per-sequence KL was `kl`.

        e = clip(KL / KL_target - 1, -0.2, 0.2)
        beta <- beta * (1 + e * n_steps / horizon)

    KL is `make_transitions`' stats['kl'] (mean over sequences of sum_t kl_t) and n_steps the
    number of sequences in the batch (B * K), as in Ziegler et al. and TRL. A fixed controller
    returns itself.
    """
    if ctrl.target is None:
        return ctrl
    err = jnp.clip(jnp.asarray(kl, jnp.float32) / ctrl.target - 1.0, -0.2, 0.2)
    return ctrl.replace(beta=ctrl.beta * (1.0 + err * n_steps / ctrl.horizon))


def make_transitions(inputs: Any, mask: Array, logprobs: Array, ref_logprobs: Array,
                     values: Array, scores: Array, beta: Array | float, hp: PPOConfig
                     ) -> tuple[Transition, dict[str, Array]]:
    """A rollout's arrays -> the PPO batch (rewards -> GAE -> optionally whitened A) and stats.

    Returns are A + V before whitening (the critic's target). Stats: mean score, mean
    per-sequence KL sum_t kl_t (what `update_kl` takes), mean total reward sum_t r_t, mean
    response length, and the mean of the raw advantages / returns over response tokens.
    """
    rewards, kl = shaped_rewards(logprobs, ref_logprobs, scores, mask, beta, hp.kl_kind)
    adv, returns = gae(rewards, values, mask, hp.gamma, hp.lam)
    stats = {"score": scores.mean(), "kl": kl.sum(-1).mean(), "reward": rewards.sum(-1).mean(),
             "response_length": mask.astype(jnp.float32).sum(-1).mean(),
             "advantage": losses.masked_mean(adv, mask),
             "return": losses.masked_mean(returns, mask)}
    if hp.whiten_advantages:
        adv = whiten(adv, mask)
    return Transition(inputs, mask.astype(jnp.float32), logprobs, values, adv, returns), stats


Forward = Callable[[Any, Any], tuple[Array, Array, Array | None]]
LossFn = Callable[..., tuple[Array, dict[str, Array]]]


def make_loss_fn(forward: Forward, hp: PPOConfig,
                 ptx_loss: Callable[[Any, Any], Array] | None = None) -> LossFn:
    """loss_fn(params, minibatch: Transition, ptx_batch=None) -> (loss, metrics).

        loss = L_clip(pi) + vf_coef * L_V - ent_coef * H(pi) + ptx_coef * L_LM(pretrain batch)

    forward(params, inputs) -> (logprobs (B, N), values (B, N), entropy (B, N) or None) is the
    model; ptx_loss(params, ptx_batch) -> the LM loss (-log pi) of a pretraining batch, added
    when a batch is given (InstructGPT's PPO-ptx).
    """
    def loss_fn(params, mb: Transition, ptx_batch=None):
        logprobs, values, ent = forward(params, mb.inputs)
        pg, pg_stats = losses.ppo_policy_loss(logprobs, mb.logprobs, mb.advantages, mb.mask,
                                              hp.clip_eps)
        vf, vf_stats = losses.ppo_value_loss(values, mb.values, mb.returns, mb.mask, hp.vf_clip)
        loss = pg + hp.vf_coef * vf
        metrics = {"policy_loss": pg, "value_loss": vf, **pg_stats, **vf_stats}
        if ent is not None:
            h = losses.masked_mean(ent, mb.mask)
            loss = loss - hp.ent_coef * h
            metrics["entropy"] = jax.lax.stop_gradient(h)
        if ptx_loss is not None and ptx_batch is not None:
            ptx = ptx_loss(params, ptx_batch)
            loss = loss + hp.ptx_coef * ptx
            metrics["ptx_loss"] = jax.lax.stop_gradient(ptx)
        return loss, metrics
    return loss_fn


def ppo_update(params: Any, opt_state: Any, batch: Transition, loss_fn: LossFn,
               optimizer: optax.GradientTransformation, key: Array, epochs: int,
               num_minibatches: int, ptx_batches: Any = None
               ) -> tuple[Any, Any, dict[str, Array]]:
    """`epochs` passes over the batch in `num_minibatches` shuffled minibatches: nested lax.scans.

    Each epoch draws its own permutation from `key` (split once per epoch); each minibatch takes
    one optimizer step on grad loss_fn(params, minibatch[, ptx]). ptx_batches, if given, is a
    pytree whose leaves lead with (epochs, num_minibatches): one pretraining batch per step,
    passed as loss_fn's third argument. Returns (params, opt_state, metrics averaged over all
    epochs x minibatches, with 'loss' and 'grad_norm'). Pure: jit it with loss_fn, optimizer,
    epochs and num_minibatches static.
    """
    n = jax.tree.leaves(batch)[0].shape[0]
    if n % num_minibatches:
        raise ValueError(f"a batch of {n} sequences does not split into {num_minibatches} "
                         "equal minibatches; make the rollout batch a multiple of it")
    size = n // num_minibatches
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatch_step(carry, xs):
        params, opt_state = carry
        mb, ptx = xs
        args = (params, mb) if ptx is None else (params, mb, ptx)
        (loss, metrics), grads = grad_fn(*args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), {**metrics, "loss": loss,
                                     "grad_norm": optax.tree.norm(grads)}

    def epoch(carry, xs):
        epoch_key, ptx = xs
        perm = jax.random.permutation(epoch_key, n)
        shuffled = jax.tree.map(
            lambda x: x[perm].reshape(num_minibatches, size, *x.shape[1:]), batch)
        return jax.lax.scan(minibatch_step, carry, (shuffled, ptx))

    keys = jax.random.split(key, epochs)
    (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state), (keys, ptx_batches))
    return params, opt_state, jax.tree.map(jnp.mean, metrics)
