"""gptjax.optim: the schedule's values, which parameters decay, and the clip -> AdamW chain.

AdamW's first step on a gradient g is exact: m_hat = g, v_hat = g^2, so the update is
-lr * g / (|g| + eps) (minus lr * wd * param on decayed parameters). An element whose gradient is
far below eps after clipping therefore moves visibly less than lr; that is how clipping shows.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig
from gptjax.optim import decay_mask, lr_schedule, make_optimizer


def _cfg(**kw):
    base = dict(lr=6e-4, min_lr=6e-5, warmup_steps=10, decay_steps=110, b1=0.9, b2=0.95,
                eps=1e-8, weight_decay=0.0, weight_decay_mask="matrices", grad_clip=1.0)
    return SimpleNamespace(**{**base, **kw})


# --- lr_schedule -------------------------------------------------------------------------------

def test_lr_schedule_values():
    s = lr_schedule(_cfg())
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(s(5), 3e-4, rtol=1e-6)  # halfway up the linear warmup
    np.testing.assert_allclose(s(10), 6e-4, rtol=1e-6)  # peak at warmup_steps
    # Cosine over steps 10..110: at 60, cos(pi/2) = 0 -> (lr + min_lr) / 2.
    np.testing.assert_allclose(s(60), 3.3e-4, rtol=1e-5)
    # At 35, a quarter of the way: 6e-5 + 0.5 * 5.4e-4 * (1 + cos(pi/4)) = 5.2091883e-4.
    np.testing.assert_allclose(s(35), 6e-5 + 2.7e-4 * (1 + math.sqrt(0.5)), rtol=1e-5)
    for step in (110, 111, 500, 10_000):
        np.testing.assert_allclose(s(step), 6e-5, rtol=1e-6)


def test_lr_schedule_decay_before_warmup_end_is_clamped():
    s = lr_schedule(_cfg(warmup_steps=10, decay_steps=5))
    np.testing.assert_allclose(s(10), 6e-4, rtol=1e-6)
    np.testing.assert_allclose(s(11), 6e-5, rtol=1e-6)


# --- decay_mask --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def params():
    cfg = GPTConfig(vocab_size=50, vocab_multiple=64, block_size=8, n_layer=1, n_head=2, n_embd=8)
    shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return nn.unbox(shapes)["params"]


def _flat(mask_tree):
    return {jax.tree_util.keystr(p, simple=True, separator="/"): v
            for p, v in jax.tree_util.tree_leaves_with_path(mask_tree)}


def test_decay_mask_matrices(params):
    m = _flat(decay_mask("matrices")(params))
    assert params["h_0"]["attn"]["c_attn"]["bias"].ndim == 3  # a multi-dim bias
    decayed = {k for k, v in m.items() if v}
    assert decayed == {"wte/embedding", "wpe/embedding", "h_0/attn/c_attn/kernel",
                       "h_0/attn/c_proj/kernel", "h_0/mlp/c_fc/kernel", "h_0/mlp/c_proj/kernel"}
    assert not m["h_0/attn/c_attn/bias"] and not m["h_0/ln_1/scale"] and not m["ln_f/bias"]


def test_decay_mask_variants(params):
    m = _flat(decay_mask("matrices_no_embeddings")(params))
    assert {k for k, v in m.items() if v} == {
        "h_0/attn/c_attn/kernel", "h_0/attn/c_proj/kernel", "h_0/mlp/c_fc/kernel",
        "h_0/mlp/c_proj/kernel"}
    assert all(_flat(decay_mask("all")(params)).values())
    assert not any(_flat(decay_mask("none")(params)).values())
    assert len(m) == 16  # wte, wpe, ln_f (2), block: 2 LayerNorms (4), 4 Linears (8)


def test_decay_mask_unknown_kind_raises():
    with pytest.raises(GptjaxError, match="'matrix'"):
        decay_mask("matrix")


# --- make_optimizer ----------------------------------------------------------------------------

def _first_update(cfg, params, grads):
    tx = make_optimizer(cfg)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return updates, state


CONST = dict(lr=0.1, min_lr=0.1, warmup_steps=0, decay_steps=10)  # a constant rate of 0.1


def test_huge_gradient_is_clipped_to_grad_clip():
    params = {"w": {"kernel": jnp.zeros(3)}}
    grads = {"w": {"kernel": jnp.array([3e6, -4e6, 5e-3])}}  # global norm 5e6
    assert float(lr_schedule(_cfg(**CONST))(0)) == pytest.approx(0.1)
    updates, state = _first_update(_cfg(**CONST, grad_clip=1.0), params, grads)
    # Clipped to norm 1: g = (0.6, -0.8, 1e-9). The step is lr-sized on the first two elements,
    # and lr * 1e-9 / (1e-9 + 1e-8) = lr / 11 on the third.
    np.testing.assert_allclose(updates["w"]["kernel"], [-0.1, 0.1, -0.1 / 11], rtol=1e-5)
    # Adam's second moment saw the clipped gradient: nu = (1 - b2) * g^2.
    nu = optax.tree_utils.tree_get(state, "nu")["w"]["kernel"]
    np.testing.assert_allclose(nu, 0.05 * np.array([0.36, 0.64, 1e-18]), rtol=1e-5)
    # Without clipping the small element takes a full lr-sized step.
    updates, _ = _first_update(_cfg(**CONST, grad_clip=0.0), params, grads)
    np.testing.assert_allclose(updates["w"]["kernel"], [-0.1, 0.1, -0.1], rtol=1e-5)


def test_small_gradient_is_not_clipped():
    params = {"w": {"kernel": jnp.zeros(2)}}
    grads = {"w": {"kernel": jnp.array([0.3, 1e-9])}}  # norm 0.3 < grad_clip: unchanged
    updates, state = _first_update(_cfg(**CONST, grad_clip=1.0), params, grads)
    np.testing.assert_allclose(optax.tree_utils.tree_get(state, "nu")["w"]["kernel"],
                               0.05 * np.array([0.09, 1e-18]), rtol=1e-5)
    np.testing.assert_allclose(updates["w"]["kernel"], [-0.1, -0.1 / 11], rtol=1e-5)


def test_weight_decay_shrinks_decayed_params_only():
    params = {"dense": {"kernel": jnp.array([[2.0, -1.0]]), "bias": jnp.array([3.0])},
              "ln": {"scale": jnp.array([1.5])}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = _first_update(_cfg(**CONST, weight_decay=0.1), params, zeros)
    # -lr * wd * param = -0.1 * 0.1 * (2, -1) on the kernel; bias and LayerNorm gain untouched.
    np.testing.assert_allclose(updates["dense"]["kernel"], [[-0.02, 0.01]], rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], [0.0])
    np.testing.assert_array_equal(updates["ln"]["scale"], [0.0])


def test_schedule_counts_optimizer_steps():
    # A constant gradient makes each Adam step exactly -lr_t * sign(g): the rates show through.
    cfg = _cfg(lr=0.1, min_lr=0.01, warmup_steps=4, decay_steps=100)
    tx = make_optimizer(cfg)
    params = {"w": {"kernel": jnp.zeros(1)}}
    grads = {"w": {"kernel": jnp.array([0.5])}}
    state = tx.init(params)
    seen = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        seen.append(float(updates["w"]["kernel"][0]))
    np.testing.assert_allclose(seen, [0.0, -0.025, -0.05], rtol=1e-5, atol=1e-12)
