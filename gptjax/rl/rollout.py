"""Rollouts for PPO: K sampled responses per prompt, each read by every model PPO needs.

The interface is small (after tunix's rollout worker): `sample` draws K responses per prompt
with the KV-cache decoder, vmapped over K keys; `evaluate` reads the sequences with one
training-path forward per model (policy and reference log-probs, critic values, reward-model
score); `rollout` is both in one jit. `make_forward` gives the update the same policy / critic
forward `evaluate` uses, so before the first update pi / pi_old is 1 (up to float rounding
between two compiles). Dropout is off in all of them: with it the ratio would be noise even at
the sampling parameters.

Layout. A row is its prompt left-padded to width P, then N = max_new_tokens response slots
(S = P + N); after a row's EOS the slots hold eos_id and its mask is 0. Response token y_t sits
at slot P + t, is predicted by the logits at slot P + t - 1, and its value V(s_t), the value of
the state just before y_t, is read at that same slot. Rows are prompt-major: row b * K + k is
prompt b's k-th sample, so a prompt's K answers sit side by side.

The critic is a separate `ValueModel` (its own trunk + scalar head), not a value head on the
policy's trunk. InstructGPT does this (the value function starts from the reward model, whose
parameter tree `ValueModel` shares), and it keeps the value loss's gradients out of the policy,
so vf_coef need not be tuned against the policy loss. It costs a second trunk's memory and
forward/backward; a shared-trunk critic needs only another `forward`, since `ppo` is
model-agnostic. The reward model is applied the same way (`ValueModel` with the reward model's
parameters) and read at each row's last response token: left-padded rows need no re-alignment.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gptjax import losses, sampling
from gptjax.model import GPT, GPTConfig, ValueModel
from gptjax.rl import ppo

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How responses are drawn and scored. Hashable: a static jit argument."""

    samples_per_prompt: int = 4  # K
    max_new_tokens: int = 64  # N
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = None  # e.g. the chat format's <|end|>
    reward_offset: float = 0.0  # subtracted from raw reward-model scores (see reward_model.load)

    @classmethod
    def of(cls, section: Any, eos_id: int | None) -> "RolloutConfig":
        """The sampling settings of a config section that has them (`ppo`, `grpo`)."""
        return cls(samples_per_prompt=int(section.samples_per_prompt),
                   max_new_tokens=int(section.max_new_tokens),
                   temperature=float(section.temperature), top_k=int(section.top_k),
                   top_p=float(section.top_p), eos_id=eos_id)


class RolloutParams(NamedTuple):
    """The four models' parameters: policy (trained), ref (the frozen SFT model), value
    (trained, a ValueModel), reward (the frozen reward model)."""

    policy: Any
    ref: Any
    value: Any
    reward: Any


class Samples(NamedTuple):
    """What the sampler returns, B' = B * K rows."""

    tokens: Array  # (B', S) int32 prompt (left-padded) + response
    prompt_lengths: Array  # (B',)
    response_lengths: Array  # (B',) tokens up to and including EOS
    sample_logprobs: Array  # (B', N) the decoder's log pi(y_t) (0 after EOS)


class Rollout(NamedTuple):
    """Samples read by every model: the input of `to_transitions`."""

    tokens: Array  # (B', S)
    prompt_lengths: Array  # (B',)
    response_lengths: Array  # (B',)
    sample_logprobs: Array  # (B', N) from the decoder; equals `logprobs` up to rounding
    mask: Array  # (B', N) float32, 1 on response tokens
    logprobs: Array  # (B', N) log pi(y_t), training-path forward; 0 off the mask
    ref_logprobs: Array  # (B', N) log pi_ref(y_t); 0 off the mask
    values: Array  # (B', N) V(s_t); 0 off the mask
    scores: Array  # (B',) reward-model score of (prompt, response) minus reward_offset


def layout(prompt_lengths: Array, p: int, s: int) -> tuple[Array, Array]:
    """(positions, segment_ids), each (B, S), of rows left-padded to prompt width p.

    Positions count from 0 at a row's first real token; segment 0 marks the left padding, which
    only attends to itself (the layout `sampling.generate_uncached` uses)."""
    slot = jnp.arange(s)[None, :]
    pad = (p - prompt_lengths)[:, None]
    real = slot >= pad
    return jnp.where(real, slot - pad, 0), real.astype(jnp.int32)


def response_mask(response_lengths: Array, n: int) -> Array:
    """(B, N) float32: m_t = [t < length]."""
    return (jnp.arange(n)[None, :] < response_lengths[:, None]).astype(jnp.float32)


def policy_logprobs(params: Any, cfg: GPTConfig, tokens: Array, prompt_lengths: Array, n: int,
                    with_entropy: bool = False) -> tuple[Array, Array | None]:
    """log pi(y_t | x, y_<t) of the N response tokens (B, N), and their entropies if asked.

        log pi(y_t) = log softmax(z_{P+t-1})[y_t],    H_t = -sum_v pi_v log pi_v
    """
    b, s = tokens.shape
    p = s - n
    positions, segments = layout(prompt_lengths, p, s)
    logits = GPT(cfg).apply({"params": params}, tokens, positions, segments)[:, p - 1:s - 1]
    logp = losses.token_logprobs(logits, tokens[:, p:])  # (B, N)
    return logp, (losses.entropy(logits) if with_entropy else None)


def token_values(params: Any, cfg: GPTConfig, tokens: Array, prompt_lengths: Array, n: int
                 ) -> Array:
    """V(s_t) for the N response slots (B, N): the ValueModel read at slots P - 1 .. S - 2."""
    s = tokens.shape[1]
    positions, segments = layout(prompt_lengths, s - n, s)
    return ValueModel(cfg).apply({"params": params}, tokens, positions, segments)[:, s - n - 1:-1]


def reward_scores(params: Any, cfg: GPTConfig, tokens: Array, prompt_lengths: Array,
                  response_lengths: Array, n: int) -> Array:
    """Raw reward-model scores (B,): the reward model read at each row's last response token,
    slot P + length - 1 (equal to `RewardModel` on the row right-padded)."""
    s = tokens.shape[1]
    positions, segments = layout(prompt_lengths, s - n, s)
    v = ValueModel(cfg).apply({"params": params}, tokens, positions, segments)  # (B, S)
    return jnp.take_along_axis(v, (s - n + response_lengths - 1)[:, None], axis=1)[:, 0]


def sample(params: Any, cfg: GPTConfig, prompt_tokens: Array, prompt_lengths: Array,
           key: Array, rc: RolloutConfig, mesh: Any = None, rules: Any = None) -> Samples:
    """K = rc.samples_per_prompt responses to each of B left-padded prompts (B, P): B * K rows.

    `sampling.generate` is vmapped over a (K, B) grid of keys split from `key`: one decoder
    batch of B rows per sample index, each row with its own key. mesh, rules: decode under the
    training mesh (the KV cache split by batch and heads, as `generate` splits it).
    """
    b, k = prompt_tokens.shape[0], rc.samples_per_prompt
    keys = jax.random.split(key, (k, b))

    def draw(row_keys):  # (B,) keys -> one response per prompt
        return sampling.generate(params, cfg, prompt_tokens, prompt_lengths, row_keys,
                                 rc.max_new_tokens, rc.temperature, rc.top_k, rc.top_p,
                                 rc.eos_id, mesh=mesh, rules=rules)

    tokens, logprobs, lengths = jax.vmap(draw)(keys)  # (K, B, N), (K, B, N), (K, B)

    def prompt_major(x):  # (K, B, ...) -> (B * K, ...)
        return jnp.swapaxes(x, 0, 1).reshape(b * k, *x.shape[2:])

    prompts = jnp.repeat(jnp.asarray(prompt_tokens, jnp.int32), k, axis=0)  # (B * K, P)
    return Samples(jnp.concatenate([prompts, prompt_major(tokens)], axis=1),
                   jnp.repeat(jnp.asarray(prompt_lengths, jnp.int32), k),
                   prompt_major(lengths), prompt_major(logprobs))


def evaluate(params: RolloutParams, samples: Samples, cfg: GPTConfig, value_cfg: GPTConfig,
             reward_cfg: GPTConfig, rc: RolloutConfig) -> Rollout:
    """One forward each of policy, reference, critic and reward model over the samples."""
    tokens, plen, rlen = samples.tokens, samples.prompt_lengths, samples.response_lengths
    n = samples.sample_logprobs.shape[1]
    for name, c in (("policy", cfg), ("value", value_cfg), ("reward", reward_cfg)):
        if tokens.shape[1] > c.block_size:
            raise ValueError(f"rollout sequences of {tokens.shape[1]} tokens exceed the {name} "
                             f"model's block_size={c.block_size}; shorten the prompts or "
                             "max_new_tokens")
    mask = response_mask(rlen, n)

    def masked(x):
        return jnp.where(mask > 0, x, 0.0)

    logp, _ = policy_logprobs(params.policy, cfg, tokens, plen, n)
    ref, _ = policy_logprobs(params.ref, cfg, tokens, plen, n)
    values = token_values(params.value, value_cfg, tokens, plen, n)
    scores = reward_scores(params.reward, reward_cfg, tokens, plen, rlen, n) - rc.reward_offset
    return Rollout(tokens, plen, rlen, samples.sample_logprobs, mask, masked(logp), masked(ref),
                   masked(values), scores)


@functools.partial(jax.jit, static_argnames=("cfg", "value_cfg", "reward_cfg", "rc"))
def rollout(params: RolloutParams, prompt_tokens: Array, prompt_lengths: Array, key: Array, *,
            cfg: GPTConfig, value_cfg: GPTConfig, reward_cfg: GPTConfig,
            rc: RolloutConfig) -> Rollout:
    """`sample` then `evaluate`, in one jit: B prompts (B, P) -> a Rollout of B * K rows.

    cfg: the policy's (and reference's) GPTConfig; value_cfg, reward_cfg: the critic's and the
    reward model's (usually the reward model's for both). All three must fit P + N tokens.
    """
    samples = sample(params.policy, cfg, prompt_tokens, prompt_lengths, key, rc)
    return evaluate(params, samples, cfg, value_cfg, reward_cfg, rc)


def make_forward(cfg: GPTConfig, value_cfg: GPTConfig, n: int, with_entropy: bool = True
                 ) -> ppo.Forward:
    """forward(params, inputs) -> (logprobs (B, N), values (B, N), entropy (B, N) | None) for
    `ppo.make_loss_fn`; params {'policy', 'value'} (what PPO trains), inputs as `to_transitions`
    stores them ({'tokens', 'prompt_lengths'}). Off-mask entries are the loss's to ignore."""
    def forward(params, inputs):
        tokens, plen = inputs["tokens"], inputs["prompt_lengths"]
        logp, ent = policy_logprobs(params["policy"], cfg, tokens, plen, n, with_entropy)
        return logp, token_values(params["value"], value_cfg, tokens, plen, n), ent
    return forward


def to_transitions(r: Rollout, beta: Array | float, hp: ppo.PPOConfig
                   ) -> tuple[ppo.Transition, dict[str, Array]]:
    """The PPO batch of a rollout (KL-shaped rewards, GAE, whitening) and its statistics."""
    inputs = {"tokens": r.tokens, "prompt_lengths": r.prompt_lengths}
    return ppo.make_transitions(inputs, r.mask, r.logprobs, r.ref_logprobs, r.values, r.scores,
                                beta, hp)
