"""gptjax.rl.ppo: rewards, GAE, whitening and the KL controller by hand; the update on a toy policy.

GAE example (gamma = 0.9, lambda = 0.5, gamma * lambda = 0.45), row 0 masked after three tokens:

    r = (1, 0, 2, [5]),  V = (0.5, 1, 1.5, [7]),  m = (1, 1, 1, 0)
    t=2: m_3 = 0, no bootstrap:    delta = 2 - 1.5 = 0.5         A = 0.5
    t=1: delta = 0 + 0.9 * 1.5 - 1 = 0.35                       A = 0.35 + 0.45 * 0.5  = 0.575
    t=0: delta = 1 + 0.9 * 1 - 0.5 = 1.4                        A = 1.4 + 0.45 * 0.575 = 1.65875
    returns = A + V = (2.15875, 1.575, 2, 0)

row 1: r = (0, 0, 0, 1), V = 0, m = 1: A = (0.45^3, 0.45^2, 0.45, 1) = returns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gptjax.rl import ppo

REWARDS = np.array([[1.0, 0.0, 2.0, 5.0], [0.0, 0.0, 0.0, 1.0]], np.float32)
VALUES = np.array([[0.5, 1.0, 1.5, 7.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.float32)


def test_gae_by_hand():
    adv, ret = ppo.gae(REWARDS, VALUES, MASK, gamma=0.9, lam=0.5)
    np.testing.assert_allclose(adv, [[1.65875, 0.575, 0.5, 0.0],
                                     [0.45 ** 3, 0.45 ** 2, 0.45, 1.0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[2.15875, 1.575, 2.0, 0.0],
                                     [0.45 ** 3, 0.45 ** 2, 0.45, 1.0]], atol=1e-6)


def _gae_loop(r, v, m, gamma, lam):
    """The same recursion, written as two plain Python loops."""
    b, n = r.shape
    adv = np.zeros((b, n))
    for i in range(b):
        a_next = 0.0
        for t in reversed(range(n)):
            m_next = m[i, t + 1] if t + 1 < n else 0.0
            v_next = v[i, t + 1] if t + 1 < n else 0.0
            delta = r[i, t] + gamma * m_next * v_next - v[i, t]
            a_next = delta + gamma * lam * m_next * a_next
            adv[i, t] = a_next * m[i, t]
    return adv, (adv + v) * m


def test_gae_matches_a_python_loop_on_random_data():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(2, 5, 7)).astype(np.float32)
    m = (np.arange(7)[None] < rng.integers(1, 8, size=(5, 1))).astype(np.float32)  # prefixes
    m[0] = [1, 1, 0, 1, 1, 0, 1]  # and a row with gaps: each gap ends an episode
    adv, ret = jax.jit(ppo.gae, static_argnums=(3, 4))(r, v, m, 0.99, 0.95)
    want_adv, want_ret = _gae_loop(r, v, m, 0.99, 0.95)
    np.testing.assert_allclose(adv, want_adv, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, atol=1e-5)


def test_shaped_rewards_and_their_sum():
    """logp = (-1, -2, -0.5, 0), ref = (-1.5, -1, -0.5, -3), m = (1, 1, 1, 0), beta = 0.1,
    score 2: kl = (0.5, -1, 0, 0), r = (-0.05, 0.1, 0 + 2, 0). With gamma = lambda = 1 and V = 0,
    A_0 is the whole return score - beta * sum kl = 2.05 (InstructGPT's R(x, y))."""
    logp = jnp.array([[-1.0, -2.0, -0.5, 0.0]])
    ref = jnp.array([[-1.5, -1.0, -0.5, -3.0]])
    m = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    r, kl = ppo.shaped_rewards(logp, ref, jnp.array([2.0]), m, 0.1)
    np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(r, [[-0.05, 0.1, 2.0, 0.0]], atol=1e-7)
    adv, _ = ppo.gae(r, jnp.zeros_like(r), m, 1.0, 1.0)
    np.testing.assert_allclose(adv[0, 0], 2.05, atol=1e-6)
    r0, _ = ppo.shaped_rewards(logp, ref, jnp.array([2.0]), jnp.zeros_like(m), 0.1)
    assert float(jnp.abs(r0).sum()) == 0.0  # an empty row gets no score


def test_whiten_on_masked_data():
    """Masked-in (1, 2, 3): mean 2, Bessel variance (1 + 0 + 1) / 2 = 1 -> (-1, 0, 1)."""
    x = jnp.array([[1.0, 2.0, 100.0], [3.0, -7.0, 55.0]])
    m = jnp.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(ppo.whiten(x, m), [[-1, 0, 0], [1, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(ppo.whiten(x, m, shift_mean=False), [[1, 2, 0], [3, 0, 0]],
                               atol=1e-6)
    rng = np.random.default_rng(1)
    y, mm = rng.normal(3.0, 5.0, size=(4, 9)), rng.random((4, 9)) < 0.6
    w = np.asarray(ppo.whiten(jnp.asarray(y), jnp.asarray(mm)))
    np.testing.assert_allclose([w[mm].mean(), w[mm].std(ddof=1)], [0.0, 1.0], atol=1e-5)


def test_kl_controller_by_hand():
    """beta 0.1, target 6, horizon 10000, 256 samples: e = clip(KL / 6 - 1, +-0.2)
    KL 9 -> e = 0.2: 0.1 * (1 + 0.2 * 0.0256) = 0.100512;  KL 5.4 -> e = -0.1: 0.099744;
    KL 0 -> e = -0.2: 0.099488.  A fixed controller keeps 0.1."""
    ctrl = ppo.adaptive_kl(0.1, target=6.0, horizon=10000.0)
    update = jax.jit(ppo.update_kl, static_argnums=2)
    for kl, want in ((9.0, 0.100512), (5.4, 0.099744), (0.0, 0.099488)):
        np.testing.assert_allclose(update(ctrl, kl, 256).beta, want, rtol=1e-6)
    twice = ppo.update_kl(ppo.update_kl(ctrl, 9.0, 256), 9.0, 256)
    np.testing.assert_allclose(twice.beta, 0.1 * 1.00512 ** 2, rtol=1e-6)
    assert float(ppo.update_kl(ppo.fixed_kl(0.1), 9.0, 256).beta) == np.float32(0.1)
    with pytest.raises(ValueError, match="target > 0"):
        ppo.adaptive_kl(0.1, target=0.0, horizon=1.0)


# --- the update on a toy policy -----------------------------------------------------------------
# A linear categorical policy over A actions from features x (B, N, D), a linear critic.

B, N, D, A = 8, 3, 4, 5


def _forward(params, inputs):
    logp = jax.nn.log_softmax(inputs["x"] @ params["w"], axis=-1)  # (B, N, A)
    picked = jnp.take_along_axis(logp, inputs["actions"][..., None], axis=-1)[..., 0]
    ent = -(jnp.exp(logp) * logp).sum(-1)
    return picked, inputs["x"] @ params["u"], ent


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(D, A)), jnp.float32),
              "u": jnp.zeros((D,), jnp.float32)}
    inputs = {"x": jnp.asarray(rng.normal(size=(B, N, D)), jnp.float32),
              "actions": jnp.asarray(rng.integers(0, A, size=(B, N)), jnp.int32)}
    logp, values, _ = _forward(params, inputs)
    mask = jnp.asarray(np.arange(N)[None] < rng.integers(1, N + 1, size=(B, 1)), jnp.float32)
    scores = jnp.asarray(rng.normal(size=(B,)), jnp.float32)
    ref = logp + 0.1 * jnp.asarray(rng.normal(size=(B, N)), jnp.float32)
    hp = ppo.PPOConfig(gamma=1.0, lam=0.95, ent_coef=0.01, ptx_coef=0.5, epochs=3,
                       num_minibatches=2)
    batch, stats = ppo.make_transitions(inputs, mask, logp, ref, values, scores, 0.1, hp)
    return params, batch, stats, hp


def _update(hp, loss_fn, optimizer):
    return jax.jit(functools.partial(ppo.ppo_update, loss_fn=loss_fn, optimizer=optimizer,
                                     epochs=hp.epochs, num_minibatches=hp.num_minibatches))


def test_transitions_are_masked_and_whitened(toy):
    _, batch, stats, _ = toy
    m = np.asarray(batch.mask) > 0
    adv = np.asarray(batch.advantages)
    assert np.all(adv[~m] == 0) and np.all(np.asarray(batch.returns)[~m] == 0)
    np.testing.assert_allclose([adv[m].mean(), adv[m].std(ddof=1)], [0, 1], atol=1e-5)
    assert set(stats) >= {"score", "kl", "reward", "response_length"}


def test_ppo_update_lowers_the_loss_and_is_deterministic(toy):
    params, batch, _, hp = toy
    loss_fn = ppo.make_loss_fn(_forward, hp)
    opt = optax.adam(3e-2)
    update = _update(hp, loss_fn, opt)
    before, stats0 = loss_fn(params, batch)
    # At the sampling parameters the ratio is 1: nothing clipped, no KL from pi_old.
    np.testing.assert_allclose([stats0["ratio"], stats0["clipfrac"], stats0["approx_kl"]],
                               [1, 0, 0], atol=1e-6)
    new, _, metrics = update(params, opt.init(params), batch, key=jax.random.key(0))
    after, _ = loss_fn(new, batch)
    assert float(after) < float(before) - 1e-3, (before, after)
    assert {"loss", "grad_norm", "policy_loss", "value_loss", "clipfrac", "approx_kl",
            "vf_clipfrac", "entropy"} <= set(metrics)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    again, _, metrics2 = update(params, opt.init(params), batch, key=jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, again, new)
    jax.tree.map(np.testing.assert_array_equal, metrics2, metrics)
    other, _, _ = update(params, opt.init(params), batch, key=jax.random.key(1))
    assert not np.array_equal(other["w"], new["w"])  # the key decides the minibatch order


def test_ppo_update_takes_one_pretraining_batch_per_step(toy):
    params, batch, _, hp = toy
    loss_fn = ppo.make_loss_fn(_forward, hp, ptx_loss=lambda p, b: b + 0.0 * p["w"].sum())
    opt = optax.sgd(0.0)
    ptx = jnp.arange(hp.epochs * hp.num_minibatches, dtype=jnp.float32).reshape(
        hp.epochs, hp.num_minibatches)
    _, _, metrics = _update(hp, loss_fn, opt)(params, opt.init(params), batch,
                                              key=jax.random.key(0), ptx_batches=ptx)
    np.testing.assert_allclose(metrics["ptx_loss"], ptx.mean(), atol=1e-6)
    with pytest.raises(ValueError, match="does not split into 3 equal minibatches"):
        ppo.ppo_update(params, opt.init(params), batch, loss_fn, opt, jax.random.key(0), 1, 3)
