"""Autoregressive sampling: prefill + KV-cache decode loop, all in one jit; greedy, T, top-k, top-p.

Rows are left-padded so every row's last prompt token sits in the same slot and the batch
advances in lock step; each row has its own positions (0 at its first real token), its own key
and its own stopping point (EOS). `generate_uncached` recomputes the whole sequence every step
through the training path (segment ids mask the padding) with the same sampling code: it is the
reference the cached decoder is tested against.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jax.sharding import Mesh

from gptjax import axes, sharding
from gptjax.model import GPT, GPTConfig, cache_axes, init_cache

Array = jax.Array


def filter_logits(logits: Array, temperature: Array, top_k: int, top_p: Array) -> Array:
    """The sampling distribution's logits (B, V): z / T, then top-k, then top-p (nucleus).

    Filtered tokens get finfo.min (padded vocabulary columns already have it, so they are never
    sampled). top_k = 0 disables top-k (static: it fixes a shape); top_p >= 1 disables top-p.
    The nucleus is the smallest set of most probable tokens whose probability reaches top_p
    (always at least the most probable token). Ties at a cut-off keep every tied token.
    temperature and top_p are scalars or (B, 1) columns (one value per row, as the server's
    batch slots have); a row with top_p >= 1 keeps every token even when others are truncated.
    """
    neg = jnp.finfo(jnp.float32).min
    z = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    z = jnp.maximum(z, neg)  # finfo.min / T < 1 overflows to -inf; keep the scores finite
    if top_k:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]  # (B, 1) the k-th largest score
        z = jnp.where(z < kth, neg, z)

    def nucleus(z):
        z_sorted = jnp.sort(z, axis=-1)[..., ::-1]  # (B, V) descending
        p_sorted = jax.nn.softmax(z_sorted, axis=-1)
        mass_before = jnp.cumsum(p_sorted, axis=-1) - p_sorted  # probability of better tokens
        keep = (mass_before < top_p) | (top_p >= 1.0)
        cutoff = jnp.min(jnp.where(keep, z_sorted, jnp.inf), axis=-1, keepdims=True)  # (B, 1)
        return jnp.where(z < cutoff, neg, z)

    # The sort over V costs more than a batch-1 forward of GPT-2 124M on a CPU: only pay for it
    # when some row asks for the nucleus (a predicate on the batch, so this stays a real branch).
    return jax.lax.cond(jnp.any(top_p < 1.0), nucleus, lambda z: z, z)


def sample_token(logits: Array, keys: Array, temperature: Array, top_k: int,
                 top_p: Array) -> tuple[Array, Array]:
    """One token per row from logits (B, V) with per-row keys (B,) -> (tokens (B,), logprobs (B,)).

    temperature == 0 is greedy (argmax). The log-probability returned is of the chosen token under
    the *unmodified* model distribution, log softmax(logits) -- not the tempered / truncated one
    it was drawn from -- which is what PPO and evaluation score.
    temperature and top_p: scalars, or (B,) arrays giving each row its own (rows at temperature
    0 are greedy whatever the others do).
    """
    logits = logits.astype(jnp.float32)
    per_row = jnp.ndim(temperature) == 1
    col = (lambda x: jnp.reshape(x, (-1, 1)) if jnp.ndim(x) == 1 else x)

    def draw(logits):
        z = filter_logits(logits, col(temperature), top_k, col(top_p))
        return jax.vmap(jax.random.categorical)(keys, z).astype(jnp.int32)  # (B,)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    # Greedy decoding skips the filters and the random draw altogether when every row is greedy
    # (a real branch: the predicate is one scalar for the batch).
    tokens = jax.lax.cond(jnp.all(temperature == 0), greedy, draw, logits)
    if per_row:  # a mixed batch: the greedy rows take the argmax, not a draw at T -> 0
        tokens = jnp.where(temperature == 0, greedy(logits), tokens)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def _decode_loop(logits: Array, state, advance: Callable, keys: Array, max_new_tokens: int,
                 temperature: Array, top_k: int, top_p: Array, eos_id: int | None,
                 stream: Callable | None = None):
    """Sample max_new_tokens tokens; `advance(state, tokens (B,), i) -> (next logits, state)`.

    Stops early once every row has emitted EOS. After its EOS a row holds eos_id with log-prob 0;
    its length counts the tokens up to and including the EOS (max_new_tokens if none).
    stream: a host function called as stream(i, tokens (B,)) for every step, in order.
    """
    b = logits.shape[0]
    fill = 0 if eos_id is None else eos_id
    carry = (jnp.int32(0), logits, state, jnp.full((b, max_new_tokens), fill, jnp.int32),
             jnp.zeros((b, max_new_tokens), jnp.float32), jnp.zeros((b,), bool),
             jnp.full((b,), max_new_tokens, jnp.int32))

    def cond(c):
        i, done = c[0], c[5]
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(c):
        i, logits, state, tokens, logprobs, done, lengths = c
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i)  # fresh key per row and step
        tok, lp = sample_token(logits, step_keys, temperature, top_k, top_p)
        tok, lp = jnp.where(done, fill, tok), jnp.where(done, 0.0, lp)
        if stream is not None:  # one host call per step, in order, while the loop runs
            io_callback(stream, None, i, tok, ordered=True)
        tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
        logprobs = jax.lax.dynamic_update_slice(logprobs, lp[:, None], (0, i))
        if eos_id is not None:
            hit = ~done & (tok == eos_id)
            lengths, done = jnp.where(hit, i + 1, lengths), done | hit
        # The forward after the last token is wasted work; skipping it would cost a lax.cond.
        logits, state = advance(state, tok, i)
        return i + 1, logits, state, tokens, logprobs, done, lengths

    _, _, _, tokens, logprobs, _, lengths = jax.lax.while_loop(cond, body, carry)
    return tokens, logprobs, lengths


def _prompt_positions(prompt_lengths: Array, p: int) -> Array:
    """(B, P) positions of left-padded prompts: 0.. at the first real token, -1 on padding."""
    pos = jnp.arange(p)[None, :] - (p - prompt_lengths)[:, None]
    return jnp.where(pos >= 0, pos, -1).astype(jnp.int32)


_STATIC = ("cfg", "max_new_tokens", "top_k", "eos_id", "stream", "rules")


def prefill(params, cfg: GPTConfig, prompt_tokens: Array, prompt_lengths: Array,
            cache_slots: int, rules: sharding.Rules | None = None) -> tuple[Array, Any]:
    """Left-padded prompts (B, P) in one forward against a fresh KV cache of cache_slots slots.

    Returns (logits (B, V) after each row's last prompt token, the cache with slots [0, P)
    filled). Traceable: call it inside a jit (the decoder and the server's slots do).
    """
    b, p = prompt_tokens.shape
    # The barrier keeps XLA from constant-folding the prefill's attention over the empty cache
    # (seconds of compile time at batch 64, for a result it computes in microseconds).
    cache = jax.lax.optimization_barrier(init_cache(cfg, b, cache_slots))
    if rules is not None:  # under a mesh: the cache is split by batch and heads like activations
        cache = jax.tree.map(nn.with_logical_constraint, cache, cache_axes(cfg),
                             is_leaf=lambda x: isinstance(x, tuple))
    logits, v = GPT(cfg).apply({"params": params, "cache": cache}, prompt_tokens,
                               _prompt_positions(prompt_lengths, p), decode=True,
                               mutable=["cache"])
    return logits[:, -1], v["cache"]


def decode_step(params, cfg: GPTConfig, cache: Any, tokens: Array,
                positions: Array) -> tuple[Array, Any]:
    """One token per row, tokens (B,) at positions (B,) (-1 = a row that is not decoding) ->
    (the logits that follow them (B, V), the cache with them written at its cache_index)."""
    logits, v = GPT(cfg).apply({"params": params, "cache": cache}, tokens[:, None],
                               positions[:, None], decode=True, mutable=["cache"])
    return logits[:, -1], v["cache"]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_cached(params, cfg, prompt_tokens, prompt_lengths, rng_keys, max_new_tokens,
                     temperature, top_k, top_p, eos_id, stream=None, rules=None):
    p = prompt_tokens.shape[1]
    logits, cache = prefill(params, cfg, prompt_tokens, prompt_lengths, p + max_new_tokens,
                            rules)

    def advance(cache, tok, i):
        return decode_step(params, cfg, cache, tok, prompt_lengths + i)  # this token's position

    return _decode_loop(logits, cache, advance, rng_keys, max_new_tokens, temperature, top_k,
                        top_p, eos_id, stream)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_uncached(params, cfg, prompt_tokens, prompt_lengths, rng_keys, max_new_tokens,
                       temperature, top_k, top_p, eos_id, stream=None, rules=None):
    model = GPT(cfg)
    b, p = prompt_tokens.shape
    s = p + max_new_tokens
    buf = jnp.zeros((b, s), jnp.int32).at[:, :p].set(prompt_tokens)  # (B, S)
    slot = jnp.arange(s)[None, :]
    real = slot >= (p - prompt_lengths)[:, None]  # (B, S) not left padding
    positions = jnp.where(real, slot - (p - prompt_lengths)[:, None], 0)
    segments = real.astype(jnp.int32)  # padding attends to padding only, tokens to tokens

    def logits_at(buf, t):  # full causal forward, the logits that predict slot t + 1
        logits = model.apply({"params": params}, buf, positions, segments)
        return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)

    def advance(buf, tok, i):
        buf = jax.lax.dynamic_update_slice(buf, tok[:, None], (0, p + i))
        return logits_at(buf, p + i), buf

    return _decode_loop(logits_at(buf, p - 1), buf, advance, rng_keys, max_new_tokens,
                        temperature, top_k, top_p, eos_id, stream)


def _check(cfg: GPTConfig, prompt_tokens, prompt_lengths, max_new_tokens: int,
           temperature, top_k: int, top_p) -> None:
    """Plain ValueErrors for inputs the compiled loop cannot serve (concrete values only)."""
    if prompt_tokens.ndim != 2:
        raise ValueError(f"prompt_tokens must be (batch, prompt_len); got shape "
                         f"{prompt_tokens.shape}")
    b, p = prompt_tokens.shape
    if p == 0:
        raise ValueError("empty prompt: prompt_tokens has length 0; give every row at least one "
                         "token (e.g. a BOS / EOS token)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if p + max_new_tokens > cfg.block_size:
        raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} exceeds "
                         f"model.block_size={cfg.block_size}; shorten the prompt or ask for "
                         "fewer tokens")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off); got {top_k}")
    if not isinstance(prompt_lengths, jax.core.Tracer):
        lengths = np.asarray(prompt_lengths)
        if lengths.shape != (b,):
            raise ValueError(f"prompt_lengths must have shape ({b},); got {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > p:
            raise ValueError(f"prompt_lengths must lie in [1, {p}] (an empty prompt cannot be "
                             f"continued); got {lengths.tolist()}")
    if not isinstance(temperature, jax.core.Tracer) and float(temperature) < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
    if not isinstance(top_p, jax.core.Tracer) and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1] (1 = off); got {top_p}")


def _run(impl, params, cfg, prompt_tokens, prompt_lengths, rng_keys, max_new_tokens,
         temperature, top_k, top_p, eos_id, stream, mesh, rules):
    prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
    _check(cfg, prompt_tokens, prompt_lengths, max_new_tokens, temperature, top_k, top_p)
    top_k = 0 if top_k >= cfg.vocab_size else int(top_k)  # keeping every token = off
    args = (params, cfg, prompt_tokens, jnp.asarray(prompt_lengths, jnp.int32), rng_keys,
            int(max_new_tokens), jnp.asarray(temperature, jnp.float32), top_k,
            jnp.asarray(top_p, jnp.float32), None if eos_id is None else int(eos_id), stream)
    if mesh is None:
        return impl(*args)
    rules = sharding.rules_from_config(axes.DEFAULT_RULES if rules is None else rules)
    ways = sharding.batch_divisor(mesh, rules)
    if prompt_tokens.shape[0] % ways:
        raise ValueError(f"a batch of {prompt_tokens.shape[0]} prompts does not split over the "
                         f"{ways} batch-parallel devices of mesh {dict(mesh.shape)}; pad the "
                         f"batch to a multiple of {ways}")
    if isinstance(prompt_tokens, jax.core.Tracer):  # traced in a jit that has the mesh in scope
        return impl(*args, rules=rules)
    with sharding.activated(mesh, rules):  # the model's logical constraints bind to the mesh
        return impl(*args, rules=rules)


def left_pad(prompts: list[list[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, width) int32 left-padded with 0, lengths (B,)) of token-id lists; width
    defaults to the longest prompt. The layout `generate` takes."""
    width = max(map(len, prompts)) if width is None else width
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, ids in enumerate(prompts):
        if ids:
            tokens[i, width - len(ids):] = ids
    return tokens, np.array([len(ids) for ids in prompts], np.int32)


def generate(params, cfg: GPTConfig, prompt_tokens: Array, prompt_lengths: Array,
             rng_keys: Array, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_id: int | None = None, *,
             stream: Callable[[Any, Any], None] | None = None, mesh: Mesh | None = None,
             rules: sharding.Rules | None = None) -> tuple[Array, Array, Array]:
    """Sample up to max_new_tokens continuations of left-padded prompts, in one jit.

    params: the model's `params` tree; cfg: its GPTConfig (static).
    prompt_tokens (B, P) int32, left-padded; prompt_lengths (B,) real tokens per row (1..P).
    rng_keys (B,): one key per row (vmap over keys for K samples of the same prompts).
    temperature 0 = greedy; top_k 0 = off (static: changing it recompiles); top_p 1 = off.
    eos_id: a row stops after emitting it; None = never stop early.
    Returns tokens (B, N) (eos_id after a row's EOS), logprobs (B, N) = log softmax(logits) of
    each token under the *unmodified* model (0 after EOS), lengths (B,) = tokens up to and
    including EOS. The prompt is prefilled in one forward, then a lax.while_loop decodes one
    token per step against a KV cache of P + N slots.
    stream(i, tokens (B,)): a host function called at every step as the tokens are drawn, for
    printing as they arrive (static: each new function compiles the decoder again).
    mesh, rules: decode a sharded model (the training mesh and logical rules; default rules
    `axes.DEFAULT_RULES`): params laid out by those rules, the batch split over the batch axes,
    the KV cache split by batch and heads. The batch must divide over the batch axes.
    """
    return _run(_generate_cached, params, cfg, prompt_tokens, prompt_lengths, rng_keys,
                max_new_tokens, temperature, top_k, top_p, eos_id, stream, mesh, rules)


def generate_uncached(params, cfg: GPTConfig, prompt_tokens: Array, prompt_lengths: Array,
                      rng_keys: Array, max_new_tokens: int, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, eos_id: int | None = None, *,
                      stream: Callable[[Any, Any], None] | None = None, mesh: Mesh | None = None,
                      rules: sharding.Rules | None = None) -> tuple[Array, Array, Array]:
    """`generate` without a cache: the full (B, P + N) forward through the training path every
    step (the test reference; O(N) times the work). Same arguments, same results."""
    return _run(_generate_uncached, params, cfg, prompt_tokens, prompt_lengths, rng_keys,
                max_new_tokens, temperature, top_k, top_p, eos_id, stream, mesh, rules)
