"""The reward-hacking monitors and the truncated-answer rules of a PPO iteration, by hand."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ppo_stage import TEXT, _cfg, planted_reward_params

from gptjax.data.tokenizer import END_OF_TURN, CharTokenizer
from gptjax.rl import iteration, monitors, ppo, rollout


def test_distinct_2_counts_bigrams_inside_answers_only():
    tokens = jnp.array([[1, 2, 1, 2, 9], [1, 2, 3, 0, 0]])
    mask = jnp.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    # bigrams (1,2) (2,1) (1,2) | (1,2) (2,3): 3 distinct of 5; (2,9) and (3,0) are outside
    assert float(monitors.distinct_2(tokens, mask)) == pytest.approx(3 / 5)
    assert float(monitors.distinct_2(tokens, jnp.zeros_like(mask))) == 1.0
    big = jnp.array([[50000, 50256, 50000, 50255]])  # GPT-2-sized ids: no overflow, no collision
    assert float(monitors.distinct_2(big, jnp.ones_like(big))) == pytest.approx(1.0)


def test_symbol_share_and_text_tables():
    tok = CharTokenizer.train("ab1!")
    tables = monitors.text_tables(tok, 16)
    ids = tok.encode("a1!b")
    end = tok.specials[END_OF_TURN]
    assert tables["chars"][end] == 0 and tables["chars"][ids[0]] == 1
    tokens = jnp.array([ids + [end]])
    mask = jnp.ones_like(tokens)
    t = jax.tree.map(jnp.asarray, tables)
    assert float(monitors.symbol_share(tokens, mask, t)) == pytest.approx(2 / 4)


def test_truncated_means_full_length_without_the_end_token():
    eos = 7
    tokens = jnp.array([[1, 2, 3], [1, 7, 7], [1, 2, 7]])
    lengths = jnp.array([3, 2, 3])
    assert monitors.truncated(tokens, lengths, eos).tolist() == [True, False, False]
    assert monitors.truncated(tokens, lengths, None).tolist() == [False, False, False]


@pytest.fixture(scope="module")
def planted():
    tok = CharTokenizer.train(TEXT)
    cfg = _cfg(tok)
    reward = jax.tree.map(jnp.asarray, planted_reward_params(tok, cfg))
    return tok, cfg, reward


def _samples(tok, answers: list[str], n: int, p: int = 4) -> rollout.Samples:
    """Rows of a 4-token prompt 'say ' and the answers (<|end|> padded), as the sampler lays
    them out."""
    end = tok.specials[END_OF_TURN]
    rows, lengths = [], []
    for a in answers:
        ids = tok.encode(a)
        lengths.append(len(ids))
        rows.append(tok.encode("say ")[:p] + ids + [end] * (n - len(ids)))
    b = len(answers)
    return rollout.Samples(jnp.array(rows, jnp.int32), jnp.full((b,), p, jnp.int32),
                           jnp.array(lengths, jnp.int32), jnp.zeros((b, n)))


@pytest.mark.parametrize("rule, expected", [
    # 'abc' is cut (3 of 3 slots, no end): its planted score is +1 at 'c' (a..m)
    ("none", [1.0, 0.0]),
    ("end", [0.0, 0.0]),  # scored with <|end|> appended: the planted model gives 0 there
    ("penalty", [-2 * 1.5, 0.0]),  # -truncated_penalty * scale
    ("mask", [1.0, 0.0]),  # scored as it is, but out of the loss (below)
])
def test_truncated_answer_rules(planted, rule, expected):
    tok, cfg, reward = planted
    end = tok.specials[END_OF_TURN]
    rc = rollout.RolloutConfig(samples_per_prompt=1, max_new_tokens=3, eos_id=end)
    spec = iteration.Spec(cfg, cfg, rc, ppo.PPOConfig(), truncated=rule, truncated_penalty=2.0)
    s = _samples(tok, ["abc", "z" + "<|end|>"], 3)
    s = s._replace(response_lengths=jnp.array([3, 2]))
    state = iteration.PPOState(step=jnp.zeros((), jnp.int32), params=None, value_params=None,
                               opt_state=None, kl=ppo.fixed_kl(0.1),
                               reward_offset=jnp.zeros(()), reward_scale=jnp.asarray(1.5))
    raw, cut = iteration.raw_scores(spec, reward, s)
    assert cut.tolist() == [True, False]
    np.testing.assert_allclose(iteration.scores_of(spec, state, raw, cut), expected, atol=1e-4)
    if rule == "mask":
        policy = jax.tree.map(jnp.zeros_like, reward["trunk"])
        state = dataclasses.replace(state, params=policy, value_params=reward)
        tables = jax.tree.map(jnp.asarray, monitors.text_tables(tok, cfg.padded_vocab_size))
        r, stats = iteration.read(spec, state, s, {"reward": reward, "ref": policy,
                                                   "tables": tables})
        assert r.mask[0].sum() == 0 and r.mask[1].sum() == 2
        assert float(stats["truncated"]) == 0.5
