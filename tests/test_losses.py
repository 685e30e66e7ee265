"""gptjax.losses against log-softmax values worked out by hand.

One sequence of three positions over a vocabulary of three:

    z_0 = (1, 2, 3),    y_0 = 2:  log p = 3 - log(e + e^2 + e^3)        = -0.40760596
    z_1 = (0, 0, 0),    y_1 = 1:  log p = 0 - log 3                     = -1.09861229
    z_2 = (2, -1, 0.5), y_2 = 0:  log p = 2 - log(e^2 + e^-1 + e^0.5)   = -0.24131130
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from gptjax.losses import lm_loss, token_logprobs
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
