"""benchmarks/rollout.py on a tiny model: its split iteration does the one-jit iteration's work,
its Python loop draws the one-jit answers, and its tables' ratios are the rounds' medians."""

import sys

import jax
import numpy as np

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import rollout as bench  # noqa: E402
import rollout_gptjax  # noqa: E402

TINY = dict(model=dict(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16, bias=False),
            prompts=2, samples=2, prompt_len=5, new_tokens=4, epochs=2, minibatches=2)


def test_split_iteration_is_the_fused_iteration():
    """Same state, same key: the three timed programs give the one program's parameters and
    statistics (so the split's times are of the same work)."""
    it = rollout_gptjax.build(TINY)
    key = jax.random.key(3)
    (train_f, _, kl_f), m_f = it.fused(it.initial_state(), key)
    (train_s, _, kl_s), m_s, times = it.split(it.initial_state(), key)
    assert set(times) == {"rollout", "scoring", "update"}
    for a, b in zip(jax.tree.leaves(train_f), jax.tree.leaves(train_s)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for k in ("score", "kl", "loss", "policy_loss", "value_loss"):
        np.testing.assert_allclose(m_f[k], m_s[k], rtol=1e-4, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(kl_f.beta, kl_s.beta, rtol=1e-6)
    assert float(m_f["response_length"]) == TINY["new_tokens"]  # no end token: N tokens each


def test_python_loop_draws_the_one_jit_answers():
    r = rollout_gptjax.run_loop(dict(TINY, samples=3, repeats=1))
    assert r["answers"] == 6 and len(r["one_jit_s"]) == len(r["loop_s"]) == 1
    assert r["same_answers"] == 6, r  # per-answer keys: the same draws, token for token


def test_ratios_are_medians_of_the_rounds():
    def side(wall, cpu, gptjax=False):
        key = "fused" if gptjax else "iteration"
        return {f"{key}_s": wall, f"{key}_cpu_s": cpu, **{f"{p}{c}": [0.1] * len(wall)
                for p in ("rollout", "scoring", "update") for c in ("_s", "_cpu_s")},
                "jax" if gptjax else "trl": "x", "compile_s": {"fused": 1.0}}
    rounds = [{"gptjax": side([1.0, 3.0], [1.0, 1.0], True), "ppo": side([4.0, 8.0], [2.0, 2.0])},
              {"gptjax": side([2.0, 2.0], [1.0, 1.0], True), "ppo": side([2.0, 2.0], [3.0, 3.0])},
              {"gptjax": side([1.0, 1.0], [2.0, 2.0], True), "ppo": side([5.0, 5.0], [2.0, 2.0])}]
    table, summary = bench.peer_table("chain", rounds, ["ppo"], "_s")
    # Per round, peer median / gptjax median: wall 6/2, 2/2, 5/1 -> median 3; CPU 2, 3, 1 -> 2.
    assert summary["ratios"]["ppo"]["_s"]["per_round"] == [3.0, 1.0, 5.0]
    assert summary["ratios"]["ppo"]["_s"]["median"] == 3.0
    assert summary["ratios"]["ppo"]["_cpu_s"]["median"] == 2.0
    # gptjax's iteration: median over all six timed iterations (1, 3, 2, 2, 1, 1) = 1.5 s, and
    # chain's 16 x 4 episodes per iteration.
    assert "| 1.500 | 42.7 |" in table and "**3.00x** (3.00, 1.00, 5.00)" in table
