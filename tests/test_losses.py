"""gptjax.losses against values worked out by hand (the PPO / KL terms are at the end).

One sequence of three positions over a vocabulary of three:

    z_0 = (1, 2, 3),    y_0 = 2:  log p = 3 - log(e + e^2 + e^3)        = -0.40760596
    z_1 = (0, 0, 0),    y_1 = 1:  log p = 0 - log 3                     = -1.09861229
    z_2 = (2, -1, 0.5), y_2 = 0:  log p = 2 - log(e^2 + e^-1 + e^0.5)   = -0.24131130
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.losses import (entropy, kl_penalty, lm_loss, masked_mean, ppo_policy_loss,
                           ppo_value_loss, token_logprobs)
from gptjax.model import mask_padded_logits

LOGITS = jnp.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, -1.0, 0.5]]])  # (B=1, T=3, V=3)
TARGETS = jnp.array([[2, 1, 0]])
LOGP = [3 - math.log(math.e + math.e ** 2 + math.e ** 3),
        -math.log(3),
        2 - math.log(math.e ** 2 + math.e ** -1 + math.e ** 0.5)]


def test_hand_values_are_what_the_docstring_says():
    np.testing.assert_allclose(LOGP, [-0.40760596, -1.09861229, -0.24131130], atol=1e-8)


def test_token_logprobs():
    out = token_logprobs(LOGITS, TARGETS)
    assert out.shape == (1, 3) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[0], LOGP, rtol=1e-6)


def test_lm_loss_is_the_mean_nll():
    np.testing.assert_allclose(lm_loss(LOGITS, TARGETS), -sum(LOGP) / 3, rtol=1e-6)  # 0.58250985


def test_weighted_loss_with_mask():
    weights = jnp.array([[1, 0, 1]])  # the middle token is not scored
    np.testing.assert_allclose(lm_loss(LOGITS, TARGETS, weights), -(LOGP[0] + LOGP[2]) / 2,
                               rtol=1e-6)  # 0.32445863
    # Weights scale a token's share: (2 * 0.4076 + 1 * 1.0986) / 3.
    np.testing.assert_allclose(lm_loss(LOGITS, TARGETS, jnp.array([[2.0, 1.0, 0.0]])),
                               -(2 * LOGP[0] + LOGP[1]) / 3, rtol=1e-6)


def test_all_zero_mask_gives_zero_not_nan():
    assert float(lm_loss(LOGITS, TARGETS, jnp.zeros((1, 3)))) == 0.0


def test_fractional_weights_are_normalised():
    weights = jnp.array([[0.25, 0.0, 0.25]])  # same relative weights as the mask [1, 0, 1]
    np.testing.assert_allclose(lm_loss(LOGITS, TARGETS, weights), -(LOGP[0] + LOGP[2]) / 2,
                               rtol=1e-6)


def test_padded_vocab_columns_do_not_change_the_loss():
    padded = jnp.concatenate([LOGITS, jnp.zeros((1, 3, 5))], axis=-1)  # V = 8, 5 padding columns
    padded = mask_padded_logits(padded, vocab_size=3)
    np.testing.assert_array_equal(padded[..., 3:], jnp.finfo(jnp.float32).min)
    np.testing.assert_allclose(token_logprobs(padded, TARGETS)[0], LOGP, rtol=1e-6)
    np.testing.assert_allclose(lm_loss(padded, TARGETS), -sum(LOGP) / 3, rtol=1e-6)
    # Unmasked zeros in those columns would add 5 to each sum of exponentials: the mask matters.
    unmasked = jnp.concatenate([LOGITS, jnp.zeros((1, 3, 5))], axis=-1)
    assert abs(float(lm_loss(unmasked, TARGETS)) + sum(LOGP) / 3) > 0.1


def test_bfloat16_logits_are_scored_in_float32():
    out = token_logprobs(LOGITS.astype(jnp.bfloat16), TARGETS)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out[0], LOGP, rtol=1e-6)  # the logits are exact in bf16


def test_large_logits_are_stable():
    logits = jnp.array([[[1000.0, 0.0], [1000.0, 0.0]]])
    out = token_logprobs(logits, jnp.array([[0, 1]]))
    np.testing.assert_allclose(out[0], [0.0, -1000.0], atol=1e-6)


# --- PPO and KL terms, worked by hand ---------------------------------------------------------

def test_masked_mean_ignores_masked_entries_and_empty_masks():
    x = jnp.array([[1.0, 2.0, 100.0], [3.0, -50.0, -50.0]])
    m = jnp.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(masked_mean(x, m), 2.0, rtol=1e-6)  # (1 + 2 + 3) / 3
    np.testing.assert_allclose(masked_mean(x, m, axis=-1), [1.5, 3.0], rtol=1e-6)
    assert float(masked_mean(x, jnp.zeros_like(m))) == 0.0


def test_kl_estimators():
    """d = log pi - log pi_ref = (0.5, -1):  k1 = d,  abs = |d|,  mse = d^2/2,
    k3 = e^-d - 1 + d = (e^-0.5 - 0.5, e - 2) = (0.10653066, 0.71828183)."""
    lp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0])
    np.testing.assert_allclose(kl_penalty(lp, ref, "k1"), [0.5, -1.0], atol=1e-7)
    np.testing.assert_allclose(kl_penalty(lp, ref, "abs"), [0.5, 1.0], atol=1e-7)
    np.testing.assert_allclose(kl_penalty(lp, ref, "mse"), [0.125, 0.5], atol=1e-7)
    np.testing.assert_allclose(kl_penalty(lp, ref, "k3"), [0.10653066, 0.71828183], atol=1e-6)


def test_clipped_surrogate_by_hand():
    """eps = 0.2, old log-probs 0, so rho = exp(logp). Per token (rho, A) -> max(-A rho, -A clip):

        (1.5, +1): max(-1.5, -1.2) = -1.2  clipped, gradient 0
        (0.5, +1): max(-0.5, -0.8) = -0.5  d/dlogp = -A rho = -0.5
        (0.5, -1): max( 0.5,  0.8) =  0.8  clipped, gradient 0
        (1.5, -1): max( 1.5,  1.2) =  1.5  d/dlogp = -A rho = 1.5
        (3.0, +1): masked out
    loss = (-1.2 - 0.5 + 0.8 + 1.5) / 4 = 0.15, clipfrac = 1/2, gradient / 4 per token;
    approx_kl = mean(rho - 1 - log rho) = (2 (0.5 - log 1.5) + 2 (-0.5 + log 2)) / 4.
    """
    logp = jnp.log(jnp.array([[1.5, 0.5, 0.5, 1.5, 3.0]]))
    adv = jnp.array([[1.0, 1.0, -1.0, -1.0, 1.0]])
    mask = jnp.array([[1, 1, 1, 1, 0]])
    old = jnp.zeros_like(logp)
    (loss, stats), grad = jax.value_and_grad(ppo_policy_loss, has_aux=True)(
        logp, old, adv, mask, 0.2)
    np.testing.assert_allclose(loss, 0.15, atol=1e-6)
    np.testing.assert_allclose(stats["clipfrac"], 0.5, atol=1e-7)
    want_kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2))) / 4
    np.testing.assert_allclose(stats["approx_kl"], want_kl, atol=1e-6)
    np.testing.assert_allclose(grad, [[0.0, -0.125, 0.0, 0.375, 0.0]], atol=1e-6)


def test_clipped_value_loss_by_hand():
    """c = 0.2. Per token (V_old, V, R) -> max((V - R)^2, (V_clip - R)^2), V_clip = 1 + clip(V - 1):

        (1, 1.5, 2): V_clip = 1.2: max(0.25, 0.64) = 0.64   clipped, gradient 0
        (1, 1.5, 0): V_clip = 1.2: max(2.25, 1.44) = 2.25   d/dV = (V - R) / 3 = 0.5
        (1, 1.1, 5): inside the clip: 3.9^2 = 15.21          d/dV = -3.9 / 3 = -1.3
    loss = (0.64 + 2.25 + 15.21) / 6 = 3.0166667, vf_clipfrac = 1/3.
    """
    old, v, ret = jnp.ones(3), jnp.array([1.5, 1.5, 1.1]), jnp.array([2.0, 0.0, 5.0])
    (loss, stats), grad = jax.value_and_grad(ppo_value_loss, has_aux=True)(
        v, old, ret, jnp.ones(3), 0.2)
    np.testing.assert_allclose(loss, 18.1 / 6, atol=1e-5)
    np.testing.assert_allclose(stats["vf_clipfrac"], 1 / 3, atol=1e-6)
    np.testing.assert_allclose(grad, [0.0, 0.5, -1.3], atol=1e-5)


def test_entropy_uniform_and_padded_vocab():
    z = jnp.zeros((1, 2, 4))
    np.testing.assert_allclose(entropy(z), [[math.log(4)] * 2], atol=1e-6)
    padded = mask_padded_logits(jnp.zeros((1, 2, 8)), 4)  # 4 padding columns add nothing
    np.testing.assert_allclose(entropy(padded), [[math.log(4)] * 2], atol=1e-6)
