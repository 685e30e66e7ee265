"""gptjax.rl.grpo against values worked out by hand, and the verifiers / addition task.

Two prompts, K = 3 answers each, rewards r = (1, 0, 0 | 1, 1, 1):

    group mean  b = (1/3, 1/3, 1/3 | 1, 1, 1);  r - b = (2/3, -1/3, -1/3 | 0, 0, 0)
    group std (Bessel) of (1, 0, 0) = sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3) = 0.57735027
    leave-one-out b_1 = (0 + 0) / 2 = 0, b_2 = b_3 = (1 + 0) / 2 = 1/2
        r - b = (1, -1/2, -1/2 | 0, 0, 0)  (= K / (K - 1) * (r - mean))
    batch std (Bessel) of (1, 0, 0, 1, 1, 1) = sqrt((4 (1/3)^2 + 2 (2/3)^2) / 5) = 0.51639778
The second group has zero reward variance: its advantages are 0 and it is counted.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.data import addition
from gptjax.rl import grpo, verifiers
from gptjax.rl.verifiers import RewardSpecError

R = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
EPS = grpo.STD_EPS


@pytest.mark.parametrize("advantage,scale,first", [
    ("group", "group", [2 / 3 / (math.sqrt(1 / 3) + EPS), -1 / 3 / (math.sqrt(1 / 3) + EPS)]),
    ("group", "none", [2 / 3, -1 / 3]),  # Dr. GRPO
    ("group", "batch", [2 / 3 / (0.51639778 + EPS), -1 / 3 / (0.51639778 + EPS)]),
    ("rloo", "none", [1.0, -0.5]),
    ("rloo", "group", [1.0 / (math.sqrt(1 / 3) + EPS), -0.5 / (math.sqrt(1 / 3) + EPS)]),
])
def test_group_advantages_by_hand(advantage, scale, first):
    adv, stats = grpo.group_advantages(R, 3, advantage, scale)
    want = [first[0], first[1], first[1], 0.0, 0.0, 0.0]
    np.testing.assert_allclose(adv, want, rtol=1e-6, atol=1e-7)
    assert float(stats["zero_std_groups"]) == 1.0
    assert float(stats["zero_std_fraction"]) == 0.5


def test_group_advantages_refuse_one_answer():
    with pytest.raises(ValueError, match=">= 2 answers"):
        grpo.group_advantages(R, 1)


def test_informative_groups_keeps_groups_whose_rewards_differ_first():
    # 4 groups of K = 2: flat, differing, flat, differing
    r = jnp.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.5])
    seen = set()
    for seed in range(8):
        rows = np.asarray(grpo.informative_groups(r, 2, 2, jax.random.key(seed)))
        assert sorted(rows.tolist()) == [2, 3, 6, 7]
        assert rows[0] % 2 == 0 and rows[1] == rows[0] + 1  # groups stay whole, in order
        seen.add(int(rows[0]))
        three = np.asarray(grpo.informative_groups(r, 2, 3, jax.random.key(seed)))
        assert {2, 3, 6, 7} <= set(three.tolist()) and len(set(three.tolist())) == 6
    assert seen == {2, 6}  # the order among the informative groups is random
    with pytest.raises(ValueError, match="cannot keep 5 of 4"):
        grpo.informative_groups(r, 2, 5, jax.random.key(0))


# Two answers of N = 3 slots: lengths 3 and 1; A = (1, -2).
MASK = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
ADV = jnp.array([1.0, -2.0])
LOG_RATIO = jnp.array([[0.0, 0.5, -0.5], [-0.5, 0.0, 0.0]])


def test_token_losses_clip_low_and_high_by_hand():
    # rho = (1, e^0.5 = 1.6487, e^-0.5 = 0.6065 | 0.6065, 1, 1); eps_low 0.2, eps_high 0.28
    loss, low, high = grpo.token_losses(LOG_RATIO, jnp.zeros_like(LOG_RATIO), ADV, 0.2, 0.28)
    e, ei = math.exp(0.5), math.exp(-0.5)
    # row 0, A = 1: -min(rho, clip(rho, 0.8, 1.28)) = -1, -1.28 (clipped high), -0.6065
    # row 1, A = -2: -min(-2 rho, -2 clip(rho)) = 2 max(rho, clip): 2 * 0.8 (clipped low), 2, 2
    want = [[-1.0, -1.28, -ei], [2 * 0.8, 2.0, 2.0]]
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert e > 1.28 and ei < 0.8
    np.testing.assert_array_equal(high, [[False, True, False], [False, False, False]])
    np.testing.assert_array_equal(low, [[False, False, False], [True, False, False]])


def test_aggregations_by_hand():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])  # row 1's last two slots are masked out
    # token_mean: (1 + 2 + 3 + 4) / 4 = 2.5; sequence_mean: (2 + 4) / 2 = 3;
    # fixed_length: 10 / (2 * 3) = 1.6667
    np.testing.assert_allclose(grpo.aggregate(x, MASK, "token_mean"), 2.5, rtol=1e-6)
    np.testing.assert_allclose(grpo.aggregate(x, MASK, "sequence_mean"), 3.0, rtol=1e-6)
    np.testing.assert_allclose(grpo.aggregate(x, MASK, "fixed_length"), 10 / 6, rtol=1e-6)
    empty = MASK.at[1].set(0.0)  # a row without tokens does not count in sequence_mean
    np.testing.assert_allclose(grpo.aggregate(x, empty, "sequence_mean"), 2.0, rtol=1e-6)


def _forward(logp):
    return lambda params, inputs: (logp + params["shift"], None)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_loss_with_kl_in_the_loss_by_hand(kind):
    """On-policy (rho = 1): l_t = -A + beta * KL_t, token mean over the mask; the gradient
    w.r.t. a shift s of every log-prob at s = 0 is -mean_t A + beta * mean_t dKL/ds."""
    ref = jnp.array([[0.0, 0.5, 0.0], [1.0, 0.0, 0.0]])
    logp = jnp.zeros((2, 3))
    hp = grpo.GRPOConfig(samples_per_prompt=2, beta=0.1, kl_kind=kind, kl_in="loss")
    batch = grpo.Batch({}, MASK, logp, ref, ADV)
    loss_fn = grpo.make_loss_fn(_forward(logp), hp, on_policy=True)
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)({"shift": 0.0}, batch)
    d = np.array([0.0, -0.5, 0.0, -1.0])  # log pi - log pi_ref on the 4 masked tokens
    a = np.array([1.0, 1.0, 1.0, -2.0])
    if kind == "k1":
        kl, dkl = d, np.ones(4)
    else:  # k3 = e^-d - 1 + d, d/ds = 1 - e^-d
        kl, dkl = np.exp(-d) - 1 + d, 1 - np.exp(-d)
    np.testing.assert_allclose(loss, np.mean(-a + 0.1 * kl), rtol=1e-6)
    np.testing.assert_allclose(m["kl_loss"], kl.mean(), rtol=1e-6)
    np.testing.assert_allclose(g["shift"], np.mean(-a + 0.1 * dkl), rtol=1e-5)


def test_kl_in_the_reward_changes_the_advantages():
    """kl_in='reward': r_i - beta * sum_t k1_t, then group advantages (scale none)."""
    logp = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    ref = jnp.array([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])  # k1 sums: 3 and 1
    hp = grpo.GRPOConfig(samples_per_prompt=2, beta=0.5, kl_kind="k1", kl_in="reward",
                         scale="none")
    batch, stats = grpo.make_batch({}, MASK, logp, ref, jnp.array([1.0, 1.0]),
                                   jnp.array([False, False]), hp)
    # r = (1 - 1.5, 1 - 0.5) = (-0.5, 0.5): A = (-0.5, 0.5)
    np.testing.assert_allclose(batch.advantages, [-0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(stats["kl_sequence"], 2.0, rtol=1e-6)
    assert float(stats["zero_std_groups"]) == 0.0


def test_mask_truncated_drops_their_tokens():
    hp = grpo.GRPOConfig(samples_per_prompt=2, beta=0.0, mask_truncated=True)
    batch, _ = grpo.make_batch({}, MASK, None, jnp.zeros((2, 3)), jnp.array([1.0, 0.0]),
                               jnp.array([True, False]), hp)
    np.testing.assert_array_equal(batch.mask, [[0, 0, 0], [1, 0, 0]])


def test_off_policy_ratio_and_clip_metrics():
    """Two epochs: the second sees pi != pi_old; the clip fractions count clipped tokens."""
    hp = grpo.GRPOConfig(samples_per_prompt=2, beta=0.0, clip_low=0.2, clip_high=0.28)
    old = jnp.zeros((2, 3))
    batch = grpo.Batch({}, MASK, old, old, ADV)
    loss_fn = grpo.make_loss_fn(_forward(LOG_RATIO), hp)
    loss, m = loss_fn({"shift": 0.0}, batch)
    # masked tokens: row 0's three, row 1's first: losses -1, -1.28, -0.6065, 1.6
    np.testing.assert_allclose(loss, (-1 - 1.28 - math.exp(-0.5) + 1.6) / 4, rtol=1e-6)
    np.testing.assert_allclose(m["clip_high"], 0.25)
    np.testing.assert_allclose(m["clip_low"], 0.25)


# --- verifiers and the addition task ---------------------------------------------------------


def test_final_number_rules():
    f = verifiers.final_number
    assert f("so the answer is 1,000 dollars #### $1,000") == "1000"
    assert f("7+6=13 4+8+1=13 so 933", "so") == "933"
    assert f("7+6=13 4+8+1=13", "so") == "13"  # no marker: the last number
    assert f("no digits here") is None
    assert f("#### then nothing") is None
    assert f("x #### 3.50") == "3.5"
    assert verifiers.follows_format("1+2=3 so 3", "so")
    assert not verifiers.follows_format("1+2=3 so 3 and", "so")


def test_score_counts_unparsed_answers():
    out = verifiers.score(["1+1=2 so 2", "so 3", "hello", ""], ["2", "2", "2", "2"],
                          {"exact_match": 1.0, "format": 0.5}, "so")
    np.testing.assert_array_equal(out["exact_match"], [1, 0, 0, 0])
    np.testing.assert_array_equal(out["format"], [1, 1, 0, 0])
    np.testing.assert_array_equal(out["unparsed"], [0, 0, 1, 1])
    np.testing.assert_allclose(out["host_reward"], [1.5, 0.5, 0, 0])


def test_reward_spec_errors_are_one_line():
    assert verifiers.parse_rewards("exact_match:1, format:0.1") == {"exact_match": 1.0,
                                                                    "format": 0.1}
    for bad in ("exact_match:1,bleu:1", "format:x", ""):
        with pytest.raises(RewardSpecError) as e:
            verifiers.parse_rewards(bad)
        assert "\n" not in str(e.value)


def test_addition_task_is_deterministic_and_split():
    assert addition.worked(47, 586) == "7+6=13 4+8+1=13 0+5+1=6 so 633"
    assert addition.worked(947, 586).endswith("so 1533")
    train, test = addition.problems("train", 3000), addition.problems("test", 300)
    assert train == addition.problems("train", 3000) and len(set(train)) == 3000
    assert not set(train) & set(test)
    assert all(addition.is_test(a, b) for a, b in test)
    for a, b in train[:200]:
        assert verifiers.final_number(addition.worked(a, b), "so") == str(a + b)
    conv = addition.sft_conversations(5)
    assert [t["role"] for t in conv[0]] == ["user", "assistant"]
