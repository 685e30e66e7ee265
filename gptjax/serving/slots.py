"""Batch slots over one KV cache: prefill a prompt into a free row, decode every row in lock step.

The cache has B rows (slots) of S = block_size cache slots each, used as a ring: decode step t
writes every row's token at ring slot t mod S (the model's shared `cache_index`, set before each
step). Attention never looks at slot order, only at the position stored beside each key
(`model.decode_mask`: a key is seen iff 0 <= its position <= the query's), so a row's tokens may
sit anywhere in the ring. A prompt of P tokens, left-padded to a bucket width W, is prefilled
on its own (`sampling.prefill`, the same code `generate` runs) and copied into its row at ring
slots [t - W, t), replacing whatever the row held (empty slots have position -1). The row's
decode steps then write slots t, t + 1, ..., so its prompt survives as long as P + new tokens
<= S, which is the context limit anyway. One compiled step serves every mix of rows; prefill
compiles once per bucket width.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import sampling
from gptjax.model import GPTConfig, init_cache

# Slot axis of each cache leaf (model.init_cache): keys (B, H, D, S), values (B, H, S, D),
# positions (B, S).
_SLOT_AXIS = {"cached_key": 3, "cached_value": 2, "cached_pos": 1}
Array = jax.Array


def bucket_widths(block_size: int, smallest: int = 16) -> list[int]:
    """Prefill widths: powers of two from `smallest`, the last one the whole context."""
    widths, w = [], min(smallest, block_size)
    while w < block_size:
        widths.append(w)
        w *= 2
    return widths + [block_size]


def _with_index(cache: Any, index: Array) -> Any:
    """The cache with every layer's write slot set to `index` (a ring slot of this step)."""
    return {name: {"attn": {**layer["attn"], "cache_index": index}}
            for name, layer in cache.items()}


def _draw(logits, keys, counts, temperature, top_p, top_k):
    step_keys = jax.vmap(jax.random.fold_in)(keys, counts)  # token i of a row: fold_in(key, i)
    tokens, _ = sampling.sample_token(logits, step_keys, temperature, top_k, top_p)
    return tokens


def _steps(params, cache, tokens, positions, key_data, counts, temperature, top_p, index, *,
           cfg: GPTConfig, top_k: int, n_steps: int):
    """n_steps decode steps of every row in one call -> (tokens (n_steps, B), the cache).

    Step j writes ring slot (index + j) mod S. A row stays busy for the whole call (its
    request may end mid-way: the host drops the tokens after its end); idle rows (position
    -1) and rows that run past the context are fed position -1, which attends to nothing.
    """
    keys = jax.random.wrap_key_data(key_data)
    busy = positions >= 0

    def body(carry, _):
        cache, tok, pos, count, idx = carry
        fed = jnp.where(busy & (pos < cfg.block_size), pos, -1)
        logits, cache = sampling.decode_step(params, cfg, _with_index(cache, idx), tok, fed)
        tok = _draw(logits, keys, count, temperature, top_p, top_k)
        return (cache, tok, pos + 1, count + 1, (idx + 1) % cfg.block_size), tok

    (cache, *_), out = jax.lax.scan(body, (cache, tokens, positions, counts, index), None,
                                    length=n_steps)
    return out, cache


def _insert(params, cache, rows, prompts, lengths, key_data, temperature, top_p, index, *,
            cfg: GPTConfig, top_k: int):
    """Prefill n left-padded prompts (n, W) in one forward and copy each one's cache into its
    row of `rows` (n,), ending at ring slot `index`.

    Returns (the first new token of each (n,), the cache). Each row is rewritten whole (S
    slots): its prompt's W slots rolled to [index - W, index) mod S, the rest empty (position
    -1), so nothing of the row's previous request remains. A row may appear twice with the same
    prompt (the host pads n to a bucket that way): both writes are the same.
    """
    width, s = prompts.shape[1], cfg.block_size
    logits, small = sampling.prefill(params, cfg, prompts, lengths, width)
    keys = jax.random.wrap_key_data(key_data)
    first = _draw(logits, keys, jnp.zeros(rows.shape, jnp.int32), temperature, top_p, top_k)
    shift = (index - width) % s

    def put(big, new, axis, fill):
        pad = [(0, 0)] * new.ndim
        pad[axis] = (0, s - width)
        full = jnp.pad(new, pad, constant_values=fill)  # (n, ..., S): the prompt at [0, W)
        return big.at[rows].set(jnp.roll(full, shift, axis=axis).astype(big.dtype))

    out = {}
    for name, layer in cache.items():
        attn = dict(layer["attn"])
        for leaf, axis in _SLOT_AXIS.items():
            attn[leaf] = put(attn[leaf], small[name]["attn"][leaf], axis,
                             -1 if leaf == "cached_pos" else 0)
        out[name] = {"attn": attn}
    return first, out


@functools.lru_cache(maxsize=8)
def _compiled(cfg: GPTConfig, top_k: int, n_steps: int):
    """The jitted steps and insert of one model shape: shared by every decoder of that shape
    (the parameters are arguments), so a second server in one process compiles nothing."""
    kw = dict(cfg=cfg, top_k=top_k)
    return (jax.jit(functools.partial(_steps, n_steps=n_steps, **kw), donate_argnums=(1,)),
            jax.jit(functools.partial(_insert, **kw), donate_argnums=(1,)))


class SlotDecoder:
    """`rows` decode slots of one model; host-side per-row state, the KV cache on the device.

    step() runs `steps_per_call` decode steps in one device call: requests join and leave
    between calls, and the host's work per call (Python, the GIL, waking the HTTP side) is
    shared by that many tokens of every row.
    Not thread-safe: one thread (the engine's) drives it.
    """

    def __init__(self, params: Any, cfg: GPTConfig, rows: int, top_k: int = 0,
                 steps_per_call: int = 1):
        if rows < 1 or steps_per_call < 1:
            raise ValueError(f"rows and steps_per_call must be >= 1; got {rows}, "
                             f"{steps_per_call}")
        self.params, self.cfg, self.rows, self.steps_per_call = params, cfg, rows, steps_per_call
        top_k = 0 if top_k >= cfg.vocab_size else int(top_k)
        self._step, self._insert = _compiled(cfg, top_k, steps_per_call)
        self.widths = bucket_widths(cfg.block_size)
        # Prompts prefilled together: one call for a burst of arrivals (its cost per call is
        # paid once), padded up to one of these counts so each compiles once per width.
        self.batches = sorted({1, min(4, rows), rows})
        # A copy per leaf: init_cache shares one set of arrays between layers, and a donated
        # buffer may appear only once among a call's arguments.
        self.cache = jax.tree.map(jnp.copy, init_cache(cfg, rows, cfg.block_size))
        self.index = 0  # the ring slot the next step writes
        kd = jax.random.key_data(jax.random.key(0))
        self.key_data = np.zeros((rows, *kd.shape), kd.dtype)
        self.tokens = np.zeros(rows, np.int32)  # each row's last token (the next step's input)
        self.positions = np.full(rows, -1, np.int32)  # its position; -1 = the row is idle
        self.counts = np.zeros(rows, np.int32)  # tokens the row has drawn
        self.temperature = np.zeros(rows, np.float32)
        self.top_p = np.ones(rows, np.float32)

    def width_for(self, n: int) -> int:
        """The prefill width for a prompt of n tokens."""
        return next(w for w in self.widths if w >= n)

    def insert(self, row: int, prompt: list[int], key_data: np.ndarray, temperature: float,
               top_p: float) -> int:
        """Prefill `prompt` into `row` and return its first new token (a host sync)."""
        return self.insert_many([(row, prompt, key_data, temperature, top_p)])[0]

    def insert_many(self, items: list[tuple[int, list[int], np.ndarray, float, float]]
                    ) -> list[int]:
        """Prefill (row, prompt, key data, temperature, top_p) items, as few calls as the
        batch sizes allow; -> each one's first new token."""
        for _, prompt, *_ in items:
            if not 1 <= len(prompt) < self.cfg.block_size:
                raise ValueError(f"a prompt of {len(prompt)} tokens does not fit the context "
                                 f"of {self.cfg.block_size} with room for one new token")
        out: list[int] = []
        while len(out) < len(items):
            part = items[len(out):len(out) + self.batches[-1]]
            n = next(b for b in self.batches if b >= len(part))
            padded = part + [part[-1]] * (n - len(part))  # repeats rewrite the same row
            rows, prompts, keys, temps, top_ps = zip(*padded)
            width = self.width_for(max(map(len, prompts)))
            tokens, lengths = sampling.left_pad(list(prompts), width)
            first, self.cache = self._insert(
                self.params, self.cache, np.asarray(rows, np.int32), tokens, lengths,
                np.stack(keys), np.float32(temps), np.float32(top_ps), np.int32(self.index))
            first = np.asarray(first)[:len(part)].tolist()
            for (row, prompt, key, temp, top_p), tok in zip(part, first):
                self.tokens[row], self.positions[row], self.counts[row] = tok, len(prompt), 1
                self.key_data[row], self.temperature[row], self.top_p[row] = key, temp, top_p
            out += first
        return out

    def free(self, row: int) -> None:
        """Stop decoding `row` (its cache is replaced by the next insert). Idle rows are
        greedy at top_p 1, so an all-greedy batch keeps the cheap branch."""
        self.positions[row], self.temperature[row], self.top_p[row] = -1, 0.0, 1.0

    def step(self) -> np.ndarray:
        """steps_per_call tokens for every row, host int32 (steps_per_call, rows); idle rows'
        are garbage."""
        tokens, self.cache = self._step(
            self.params, self.cache, self.tokens, self.positions, self.key_data, self.counts,
            self.temperature, self.top_p, np.int32(self.index))
        tokens = np.asarray(tokens)
        k = self.steps_per_call
        self.index = (self.index + k) % self.cfg.block_size
        busy = self.positions >= 0
        self.tokens = np.where(busy, tokens[-1], 0).astype(np.int32)
        self.positions = np.where(busy, self.positions + k, -1).astype(np.int32)
        self.counts = self.counts + k * busy
        return tokens
