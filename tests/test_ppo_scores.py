"""PPO's score units (normalize_scores, score_clip) and the critic started on the scores' scale,
against values worked out by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from gptjax import config as config_lib
from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig, ValueModel
from gptjax.rl import iteration, ppo, rollout

CFG = GPTConfig(vocab_size=16, vocab_multiple=8, block_size=8, n_layer=1, n_head=2, n_embd=8)


def _spec(**kw):
    rc = rollout.RolloutConfig(samples_per_prompt=1, max_new_tokens=3, eos_id=15)
    return iteration.Spec(CFG, CFG, rc, ppo.PPOConfig(), **kw)


def _state(offset: float, scale: float):
    return iteration.PPOState(step=jnp.zeros((), jnp.int32), params=None, value_params=None,
                              opt_state=None, kl=ppo.fixed_kl(0.1),
                              reward_offset=jnp.asarray(offset), reward_scale=jnp.asarray(scale))


@pytest.mark.parametrize("kw, expected", [
    # raw 5, 1, 3, -7 with offset 1 and SFT std 2; the last answer was cut
    (dict(truncated="none"), [4.0, 0.0, 2.0, -8.0]),
    (dict(truncated="none", normalize_scores=True), [2.0, 0.0, 1.0, -4.0]),
    # clipped at 1.5 stds: 3 in raw units, 1.5 in normalised ones
    (dict(truncated="none", score_clip=1.5), [3.0, 0.0, 2.0, -3.0]),
    (dict(truncated="none", normalize_scores=True, score_clip=1.5), [1.5, 0.0, 1.0, -1.5]),
    # the penalty is one std below the SFT mean in either unit (truncated_penalty 1)
    (dict(truncated="penalty"), [4.0, 0.0, 2.0, -2.0]),
    (dict(truncated="penalty", normalize_scores=True), [2.0, 0.0, 1.0, -1.0]),
])
def test_scores_in_sft_std_units_and_clipped(kw, expected):
    raw = jnp.array([5.0, 1.0, 3.0, -7.0])
    cut = jnp.array([False, False, False, True])
    got = iteration.scores_of(_spec(**kw), _state(1.0, 2.0), raw, cut)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_critic_starts_at_the_reward_model_minus_the_offset():
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jnp.zeros((1, 1), jnp.int32)
    policy = nn.unbox(GPT(CFG).init(k1, x)["params"])
    reward = nn.unbox(ValueModel(CFG).init(k2, x)["params"])
    reward["head"]["bias"] = jnp.array([0.3])
    frozen = {"ref": policy, "reward": reward,
              "offset_prompts": (jnp.zeros((0, 2, 4), jnp.int32), jnp.zeros((0, 2), jnp.int32))}
    state = iteration.initial_state(_spec(normalize_scores=True), optax.adam(1e-3),
                                    ppo.fixed_kl(0.1), frozen, jax.random.key(1), offset=0.8)
    assert float(state.reward_offset) == pytest.approx(0.8)
    tokens = jnp.array([[1, 2, 3, 4, 5]])
    raw = ValueModel(CFG).apply({"params": reward}, tokens)
    value = ValueModel(CFG).apply({"params": state.value_params}, tokens)
    # no offset prompts: the given offset and scale 1; the critic reads every prefix 0.8 lower
    # than the reward model, as the scores it is trained on are
    np.testing.assert_allclose(value, raw - 0.8, atol=1e-5)
    # the frozen reward model itself is untouched
    assert float(frozen["reward"]["head"]["bias"][0]) == pytest.approx(0.3)
    # in SFT-std units (scale 2): (r - 0.8) / 2 at every prefix
    scaled = iteration.critic_on_score_scale(reward, jnp.asarray(0.8), jnp.asarray(2.0))
    np.testing.assert_allclose(ValueModel(CFG).apply({"params": scaled}, tokens),
                               (raw - 0.8) / 2, atol=1e-5)


@pytest.mark.parametrize("key, value", [("normalize_scores", True), ("score_clip", 2.0)])
def test_score_units_need_the_measured_sft_std(key, value):
    config = load_config("ppo")
    config.ppo[key] = value
    config_lib.validate_ppo(config)  # offset_prompts > 0 as shipped: fine
    config.ppo.offset_prompts = 0
    with pytest.raises(GptjaxError, match="ppo.offset_prompts > 0"):
        config_lib.validate_ppo(config)
