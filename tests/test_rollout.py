"""gptjax.rl.rollout on a tiny random GPT: shapes, masks, K samples, log-probs, scores, one update.

One rollout (one compile of sampler + four forwards) is shared by the module's tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import random_params

from gptjax import sampling
from gptjax.model import GPT, GPTConfig, RewardModel, ValueModel
from gptjax.rl import ppo, rollout as rl

CFG = GPTConfig(vocab_size=50, vocab_multiple=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
# Left-padded prompts of lengths 3, 5, 1 (the pad token 0 must not matter).
PROMPTS = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 0, 0, 0, 9]], np.int32)
LENGTHS = np.array([3, 5, 1], np.int32)
K, N_NEW = 3, 8
EOS = 5  # the seed-0 rollout emits it mid-way in 4 of 9 rows (checked below)
RC = rl.RolloutConfig(samples_per_prompt=K, max_new_tokens=N_NEW, eos_id=EOS, reward_offset=0.25)


@pytest.fixture(scope="module")
def run():
    params = rl.RolloutParams(policy=random_params(GPT(CFG), 0),
                              ref=random_params(GPT(CFG), 1),
                              value=random_params(ValueModel(CFG), 2),
                              reward=random_params(ValueModel(CFG), 3))
    key = jax.random.key(0)
    r = rl.rollout(params, PROMPTS, LENGTHS, key, cfg=CFG, value_cfg=CFG, reward_cfg=CFG, rc=RC)
    return params, key, jax.tree.map(np.asarray, r)


def test_shapes_masks_and_prompts(run):
    _, _, r = run
    rows, s = 3 * K, PROMPTS.shape[1] + N_NEW
    assert r.tokens.shape == (rows, s) and r.scores.shape == (rows,)
    for x in (r.mask, r.logprobs, r.ref_logprobs, r.values, r.sample_logprobs):
        assert x.shape == (rows, N_NEW) and np.all(np.isfinite(x))
    np.testing.assert_array_equal(r.tokens[:, :5], np.repeat(PROMPTS, K, axis=0))  # prompt-major
    np.testing.assert_array_equal(r.prompt_lengths, np.repeat(LENGTHS, K))
    np.testing.assert_array_equal(r.mask, np.arange(N_NEW)[None] < r.response_lengths[:, None])
    m = r.mask > 0
    assert r.response_lengths.min() < N_NEW, "EOS never emitted: pick another EOS"
    for i, n in enumerate(r.response_lengths):
        resp = r.tokens[i, 5:]
        assert np.all(resp[n:] == EOS) and (n == N_NEW or resp[n - 1] == EOS)
        assert EOS not in resp[:n - 1]
    for x in (r.logprobs, r.ref_logprobs, r.values):
        assert np.all(x[~m] == 0) and np.all(x[m] != 0)
    assert np.all(r.logprobs[m] < 0) and np.all(r.ref_logprobs[m] < 0)
    assert np.all(np.isfinite(r.scores))


def test_k_samples_per_prompt_differ(run):
    _, _, r = run
    for b in range(3):
        rows = {tuple(r.tokens[b * K + k]) for k in range(K)}
        assert len(rows) == K, f"prompt {b}: the K samples are not all different"


def test_logprobs_equal_the_decoders(run):
    """The training-path log-probs equal `generate`'s (cached decode) on response tokens; the
    rollout's samples are `generate` with keys split (K, B) from the rollout key."""
    params, key, r = run
    m = r.mask > 0
    np.testing.assert_allclose(r.logprobs[m], r.sample_logprobs[m], atol=1e-5)
    keys = jax.random.split(key, (K, 3))
    for k in (0, K - 1):
        tok, lp, n = sampling.generate(params.policy, CFG, PROMPTS, LENGTHS, keys[k], N_NEW,
                                       eos_id=EOS)
        np.testing.assert_array_equal(r.tokens[k::K, 5:], tok)
        np.testing.assert_allclose(r.sample_logprobs[k::K], lp, atol=1e-6)
        np.testing.assert_array_equal(r.response_lengths[k::K], n)


def test_scores_equal_the_reward_model_on_right_padded_rows(run):
    params, _, r = run
    s = r.tokens.shape[1]
    right = np.zeros_like(r.tokens)
    total = r.prompt_lengths + r.response_lengths
    for i in range(len(right)):
        right[i, :total[i]] = r.tokens[i, s - N_NEW - r.prompt_lengths[i]:][:total[i]]
    want = RewardModel(CFG).apply({"params": params.reward}, right, total)
    np.testing.assert_allclose(r.scores, np.asarray(want) - RC.reward_offset, atol=1e-5)


def test_forward_reproduces_the_rollout_and_an_update_runs(run):
    params, _, r = run
    forward = rl.make_forward(CFG, CFG, N_NEW)
    train = {"policy": params.policy, "value": params.value}
    hp = ppo.PPOConfig(epochs=1, num_minibatches=1, ent_coef=0.01)
    batch, stats = rl.to_transitions(jax.tree.map(jnp.asarray, r), 0.1, hp)
    logp, values, ent = forward(train, batch.inputs)
    m = r.mask > 0
    # Same function, another compile (eager here): equal up to float rounding.
    np.testing.assert_allclose(np.asarray(logp)[m], r.logprobs[m], atol=1e-5)
    np.testing.assert_allclose(np.asarray(values)[m], r.values[m], atol=1e-5)
    assert ent.shape == (3 * K, N_NEW) and np.all(np.asarray(ent) > 0)
    np.testing.assert_allclose(stats["response_length"], r.response_lengths.mean(), rtol=1e-6)
    opt = optax.adam(1e-3)
    update = jax.jit(functools.partial(ppo.ppo_update, loss_fn=ppo.make_loss_fn(forward, hp),
                                       optimizer=opt, epochs=1, num_minibatches=1))
    new, _, metrics = update(train, opt.init(train), batch, key=jax.random.key(0))
    # One step from the sampling parameters: the ratio of the only minibatch is 1.
    np.testing.assert_allclose(metrics["ratio"], 1.0, atol=1e-5)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    emb = (x["policy"]["wte"]["embedding"] for x in (new, train))
    assert not np.array_equal(*emb)
