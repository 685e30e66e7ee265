"""GPT: a decoder-only transformer as in GPT-2 (and the GPT-3 options), written in Flax linen.

Shapes in comments: B batch, T sequence, C model width, H heads, D head width (C = H * D),
V padded vocabulary, S KV-cache slots. Parameters and block-boundary activations carry logical
axis names from `gptjax.axes`; which mesh axis each name lands on is decided by the config, never
here. `decode=True` runs the same modules incrementally against a KV cache (`init_cache`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax import axes

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Model hyper-parameters (the `model` section of a gptjax config)."""

    vocab_size: int = 50257
    block_size: int = 1024  # longest sequence the position embedding covers
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2: True)
    ln_eps: float = 1e-5
    vocab_multiple: int = 128  # pad the embedding rows to a multiple of this (MXU/tensor cores)
    local_window: int = 0  # GPT-3 option: > 0 makes every odd layer banded with this window
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: bool = False  # recompute each block in the backward pass (saves activation memory)
    attention: str = "auto"  # 'auto' | 'xla' | 'cudnn' (jax.nn.dot_product_attention) | 'reference'
    activation: str = "gelu_tanh"  # GPT-2's tanh approximation; 'gelu' = exact erf (nanoGPT)

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def window(self, layer: int) -> int:
        """Attention window of a layer: 0 (dense) or the band width for GPT-3's sparse layers."""
        return self.local_window if self.local_window and layer % 2 == 1 else 0

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (no padding rows); minus the position table if asked (as nanoGPT)."""
        c, l, f = self.n_embd, self.n_layer, 4 * self.n_embd
        b = 1 if self.bias else 0
        per_block = (2 * c * (1 + b)  # two LayerNorms
                     + c * 3 * c + 3 * c * b + c * c + c * b  # attention
                     + c * f + f * b + f * c + c * b)  # MLP
        n = self.vocab_size * c + self.block_size * c + l * per_block + c * (1 + b)
        return n - self.block_size * c if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token with the causal attention count (llm.c): 6N + 6*L*T*C."""
        return 6 * self.num_params() + 6 * self.n_layer * seq_len * self.n_embd


def _init(std: float):
    return nn.initializers.normal(stddev=std)


def _param_dtype_kwargs(cfg: GPTConfig) -> dict[str, Any]:
    return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.float32)


def _layer_norm(cfg: GPTConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=cfg.ln_eps, use_bias=cfg.bias, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)),
        **_param_dtype_kwargs(cfg))


def reference_attention(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Attention with an explicit boolean mask (B|1, 1, T, T); the path tests compare against."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    att = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale  # (B, H, T, T)
    att = jnp.where(mask, att, jnp.finfo(jnp.float32).min)
    att = jax.nn.softmax(att, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", att, v)  # (B, T, H, D)


def attention_mask(seq_len: int, window: int = 0, segment_ids: Array | None = None) -> Array:
    """Boolean (B|1, 1, T, T) mask: causal, banded to `window` keys if > 0, within one segment."""
    i = jnp.arange(seq_len)[:, None]
    j = jnp.arange(seq_len)[None, :]
    mask = j <= i
    if window:
        mask &= i - j < window
    mask = mask[None, None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    return mask


class Linear(nn.Module):
    """y = x . W + b, contracting the last `n_in` dims of x with the leading dims of W.

    The kernel has shape in_shape + out_shape and the logical names `names` (one per dim);
    written out (not nn.DenseGeneral) so multi-dim kernels keep their logical names at init.
    """

    out_shape: tuple[int, ...]
    names: tuple[str | None, ...]
    n_in: int = 1
    std: float = 0.02
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_shape = x.shape[x.ndim - self.n_in:]
        kernel = self.param("kernel", nn.with_logical_partitioning(_init(self.std), self.names),
                            in_shape + tuple(self.out_shape), jnp.float32)
        contract = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                (contract, ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros, self.names[self.n_in:]), tuple(self.out_shape), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def init_cache(cfg: GPTConfig, batch: int, length: int) -> dict[str, Any]:
    """An empty KV cache of `length` slots for `GPT.apply(..., decode=True, mutable=['cache'])`.

    Per layer: keys (B, H, D, S) and values (B, H, S, D) in the compute dtype, the position held in
    each slot (B, S; -1 = empty or padding, never attended to) and the next slot to write (a scalar
    shared by all rows: rows are left-padded so that they advance in lock step). Keys are stored
    transposed so both attention products read the cache in the layout the matmul wants: with
    (B, S, H, D) XLA:CPU copied the whole cache into that layout at every decode step.
    """
    dt = jnp.dtype(cfg.dtype)
    h, d = cfg.n_head, cfg.head_dim
    layer = dict(cached_key=jnp.zeros((batch, h, d, length), dt),
                 cached_value=jnp.zeros((batch, h, length, d), dt),
                 cached_pos=jnp.full((batch, length), -1, jnp.int32),
                 cache_index=jnp.zeros((), jnp.int32))
    return {f"h_{i}": {"attn": dict(layer)} for i in range(cfg.n_layer)}


def cache_axes(cfg: GPTConfig) -> dict[str, Any]:
    """Logical axis names of every `init_cache` leaf (the same tree), for sharding the cache."""
    layer = dict(cached_key=(axes.BATCH, axes.ACT_HEADS, None, axes.SEQ),
                 cached_value=(axes.BATCH, axes.ACT_HEADS, axes.SEQ, None),
                 cached_pos=(axes.BATCH, axes.SEQ), cache_index=())
    return {f"h_{i}": {"attn": dict(layer)} for i in range(cfg.n_layer)}


def decode_mask(query_pos: Array, key_pos: Array, window: int = 0) -> Array:
    """Boolean (B, 1, T, S) mask from positions alone: a key is seen iff it holds a token (pos >= 0)
    at or before the query's position, and within `window` of it if banded. Positions are per row,
    so left padding (pos -1) and causality are one rule."""
    qp, kp = query_pos[:, None, :, None], key_pos[:, None, None, :]
    mask = (kp >= 0) & (kp <= qp)
    if window:
        mask &= qp - kp < window
    return mask


class CausalSelfAttention(nn.Module):
    cfg: GPTConfig
    window: int = 0

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array | None, deterministic: bool,
                 positions: Array | None = None, decode: bool = False) -> Array:
        cfg = self.cfg
        h, d = cfg.n_head, cfg.head_dim
        std_out = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2: scale the residual projections
        dt = jnp.dtype(cfg.dtype)
        qkv = Linear((3, h, d), (axes.EMBED, axes.QKV, axes.HEADS, axes.HEAD_DIM),
                     use_bias=cfg.bias, dtype=dt, name="c_attn")(x)  # (B, T, 3, H, D)
        qkv = nn.with_logical_constraint(
            qkv, (axes.BATCH, axes.SEQ, None, axes.ACT_HEADS, None))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each (B, T, H, D)
        t = x.shape[1]
        if decode:
            y = self._cached_attention(q, k, v, positions)
        elif cfg.attention == "reference":
            y = reference_attention(q, k, v, attention_mask(t, self.window, segment_ids))
        else:
            mask = None
            if segment_ids is not None:
                mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
            impl = None if cfg.attention == "auto" else cfg.attention
            y = jax.nn.dot_product_attention(
                q, k, v, mask=mask, is_causal=True, implementation=impl,
                local_window_size=(self.window - 1, 0) if self.window else None)
        y = nn.with_logical_constraint(y, (axes.BATCH, axes.SEQ, axes.ACT_HEADS, None))
        y = Linear((cfg.n_embd,), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), n_in=2, std=std_out,
                   use_bias=cfg.bias, dtype=dt, name="c_proj")(y)  # (B, T, C)
        return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)

    def _cached_attention(self, q: Array, k: Array, v: Array, positions: Array) -> Array:
        """Attend over the cached slots and this call's T keys, then append those to the cache.

        The scores against the cache read the buffers as they were before this call, and the
        new keys/values are scored from the registers at hand; the cache update then has no
        reader left. (Attending over the updated cache made XLA:CPU copy every cache buffer
        several times per decode step.) Slots this call fills are still empty (-1) in the old
        cache, so they are masked there and seen once, through the new keys.
        """
        if not self.has_variable("cache", "cached_key"):
            raise ValueError("decode=True needs a KV cache: pass {'cache': init_cache(cfg, B, S)} "
                             "in the variables and mutable=['cache'] to GPT.apply")
        dt = q.dtype
        old_k = self.get_variable("cache", "cached_key")  # (B, H, D, S)
        old_v = self.get_variable("cache", "cached_value")  # (B, H, S, D)
        old_pos = self.get_variable("cache", "cached_pos")  # (B, S)
        index = self.get_variable("cache", "cache_index")
        positions = positions.astype(jnp.int32)
        k, v = k.astype(dt), v.astype(dt)
        neg = jnp.finfo(jnp.float32).min
        scale = 1.0 / math.sqrt(q.shape[-1])
        s_old = jnp.einsum("bqhd,bhds->bhqs", q, old_k).astype(jnp.float32) * scale
        s_old = jnp.where(decode_mask(positions, old_pos, self.window), s_old, neg)  # (B,H,T,S)
        s_new = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
        s_new = jnp.where(decode_mask(positions, positions, self.window), s_new, neg)  # (B,H,T,T)
        # A query at a padding position (-1) sees no key: softmax over all-min scores is
        # uniform, finite, and its output is never read.
        p = jax.nn.softmax(jnp.concatenate([s_old, s_new], axis=-1), axis=-1).astype(dt)
        s = old_pos.shape[1]
        y = (jnp.einsum("bhqs,bhsd->bqhd", p[..., :s], old_v)
             + jnp.einsum("bhqk,bkhd->bqhd", p[..., s:], v))  # (B, T, H, D)
        # XLA updates a loop-carried cache in place only once it sees that every read of the old
        # buffer comes first; a data dependence of the update on the attention output says so
        # (an optimization barrier does not). Without it XLA:CPU copied each cache buffer twice
        # per layer and step. x * 0 is not folded for floats (NaN * 0 is NaN), and y is finite.
        k, v = k + 0 * y, v + 0 * y  # (B, T, H, D) each, the same shape and sharding as y
        ck = jax.lax.dynamic_update_slice(old_k, k.transpose(0, 2, 3, 1), (0, 0, 0, index))
        cv = jax.lax.dynamic_update_slice(old_v, v.transpose(0, 2, 1, 3), (0, 0, index, 0))
        cp = jax.lax.dynamic_update_slice(old_pos, positions, (0, index))
        self.put_variable("cache", "cached_key", nn.with_logical_constraint(
            ck, (axes.BATCH, axes.ACT_HEADS, None, axes.SEQ)))
        self.put_variable("cache", "cached_value", nn.with_logical_constraint(
            cv, (axes.BATCH, axes.ACT_HEADS, axes.SEQ, None)))
        self.put_variable("cache", "cached_pos", cp)
        self.put_variable("cache", "cache_index", index + q.shape[1])
        return y


class MLP(nn.Module):
    cfg: GPTConfig

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        cfg = self.cfg
        std_out = 0.02 / math.sqrt(2 * cfg.n_layer)
        dt = jnp.dtype(cfg.dtype)
        x = Linear((4 * cfg.n_embd,), (axes.EMBED, axes.MLP), use_bias=cfg.bias, dtype=dt,
                   name="c_fc")(x)  # (B, T, 4C)
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.SEQ, axes.ACT_MLP))
        x = jax.nn.gelu(x, approximate=cfg.activation == "gelu_tanh")
        x = Linear((cfg.n_embd,), (axes.MLP, axes.EMBED), std=std_out, use_bias=cfg.bias,
                   dtype=dt, name="c_proj")(x)  # (B, T, C)
        return nn.Dropout(cfg.dropout)(x, deterministic=deterministic)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    cfg: GPTConfig
    window: int = 0

    @nn.compact
    def __call__(self, x: Array, segment_ids: Array | None, deterministic: bool,
                 positions: Array | None = None, decode: bool = False) -> Array:
        x = x + CausalSelfAttention(self.cfg, self.window, name="attn")(
            _layer_norm(self.cfg, "ln_1")(x), segment_ids, deterministic, positions, decode)
        x = x + MLP(self.cfg, name="mlp")(_layer_norm(self.cfg, "ln_2")(x), deterministic)
        return nn.with_logical_constraint(x, (axes.BATCH, axes.SEQ, axes.ACT_EMBED))


class GPT(nn.Module):
    """Token ids (B, T) -> logits (B, T, V) over the padded vocabulary, padding rows masked."""

    cfg: GPTConfig

    def setup(self):
        cfg = self.cfg
        self.wte = nn.Embed(
            cfg.padded_vocab_size, cfg.n_embd, name="wte",
            embedding_init=nn.with_logical_partitioning(_init(0.02), (axes.VOCAB, axes.EMBED)),
            **_param_dtype_kwargs(cfg))
        self.wpe = nn.Embed(
            cfg.block_size, cfg.n_embd, name="wpe",
            embedding_init=nn.with_logical_partitioning(_init(0.02), (axes.POS, axes.EMBED)),
            **_param_dtype_kwargs(cfg))
        self.drop = nn.Dropout(cfg.dropout)
        block = nn.remat(Block, static_argnums=(3, 5)) if cfg.remat else Block
        self.blocks = [block(cfg, cfg.window(i), name=f"h_{i}") for i in range(cfg.n_layer)]
        self.ln_f = _layer_norm(cfg, "ln_f")

    def hidden(self, tokens: Array, positions: Array | None = None,
               segment_ids: Array | None = None, deterministic: bool = True,
               decode: bool = False) -> Array:
        """The trunk: final-LayerNorm hidden states (B, T, C); reused by the reward model.

        decode=True runs incrementally against the 'cache' collection (see `init_cache`): the T
        tokens are appended to the cache and attend to everything cached so far. It needs explicit
        per-row `positions` (B, T), with -1 for left padding (such slots are never attended to).
        """
        t = tokens.shape[1]
        if t > self.cfg.block_size:  # the position table has block_size rows (nanoGPT asserts)
            raise ValueError(f"sequence length {t} exceeds model.block_size="
                             f"{self.cfg.block_size}; crop the input to the last block_size tokens")
        if decode and (positions is None or segment_ids is not None):
            raise ValueError("decode=True takes explicit positions (B, T) and no segment_ids")
        if positions is None:
            positions = jnp.arange(t)[None]  # (1, T)
        x = self.wte(tokens) + self.wpe(jnp.maximum(positions, 0))  # (B, T, C)
        x = self.drop(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x, (axes.BATCH, axes.SEQ, axes.ACT_EMBED))
        for block in self.blocks:
            x = block(x, segment_ids, deterministic, positions if decode else None, decode)
        return self.ln_f(x)

    def __call__(self, tokens: Array, positions: Array | None = None,
                 segment_ids: Array | None = None, deterministic: bool = True,
                 decode: bool = False) -> Array:
        x = self.hidden(tokens, positions, segment_ids, deterministic, decode)
        # Tied output embedding, x . E^T as one dot_general contracting C with C (B, T, V):
        # `wte.attend` wrote it as x . transpose(E), which XLA:CPU materialised inside the decode
        # loop as a transposed copy of the whole (V, C) table (154 MB per step for GPT-2). The
        # training step compiles to the same program either way.
        emb = self.wte.embedding.astype(x.dtype)
        logits = jax.lax.dot_general(x, emb, (((x.ndim - 1,), (1,)), ((), ())))
        logits = nn.with_logical_constraint(logits, (axes.BATCH, axes.SEQ, axes.ACT_VOCAB))
        return mask_padded_logits(logits, self.cfg.vocab_size)


def mask_padded_logits(logits: Array, vocab_size: int) -> Array:
    """Send the padding columns of the vocabulary to -inf so they are never sampled or scored."""
    if logits.shape[-1] == vocab_size:
        return logits
    valid = jnp.arange(logits.shape[-1]) < vocab_size
    return jnp.where(valid, logits, jnp.finfo(logits.dtype).min)


class RewardModel(nn.Module):
    """The GPT trunk with a scalar head read at the last real token of each sequence.

    tokens (B, T) right-padded, lengths (B,) -> rewards (B,). The trunk's parameters live under
    'trunk' with the same tree as `GPT`'s, so an SFT checkpoint initialises it directly; the
    head is a (C,) -> 1 projection (the output embedding is unused).
    """

    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens: Array, lengths: Array, deterministic: bool = True) -> Array:
        h = GPT(self.cfg, name="trunk").hidden(tokens, deterministic=deterministic)  # (B, T, C)
        last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]  # (B, C)
        r = Linear((1,), (axes.EMBED, None), std=1.0 / math.sqrt(self.cfg.n_embd + 1),
                   dtype=jnp.float32, name="head")(last.astype(jnp.float32))
        return r[:, 0]


class ValueModel(nn.Module):
    """The reward model's trunk and head read at every position: a critic for PPO.

    tokens (B, T), positions / segment_ids as for `GPT.hidden` -> values (B, T), the value of the
    state ending at each token. Its parameter tree is `RewardModel`'s ('trunk', 'head'), so a
    trained reward model initialises it (as InstructGPT initialises its value function), and
    applied with the reward model's own parameters it gives that model's score at every prefix.
    """

    cfg: GPTConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array | None = None,
                 segment_ids: Array | None = None, deterministic: bool = True) -> Array:
        h = GPT(self.cfg, name="trunk").hidden(tokens, positions, segment_ids,
                                               deterministic)  # (B, T, C)
        v = Linear((1,), (axes.EMBED, None), std=1.0 / math.sqrt(self.cfg.n_embd + 1),
                   dtype=jnp.float32, name="head")(h.astype(jnp.float32))
        return v[..., 0]
