"""Reward model: the ranking loss by hand, one score per answer vs per pair, data, bad input."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA

from gptjax import losses
from gptjax.data import preferences
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import GptjaxError
from gptjax.model import GPTConfig, RewardModel
from gptjax.reward_model import rm_loss_fn


def nls(x):  # -log sigmoid(x), written out
    return math.log(1 + math.exp(-x))


def _batch(scores, ranks):
    """Pad prompts with different K into (P, K_max) arrays."""
    k_max = max(len(s) for s in scores)
    s = np.zeros((len(scores), k_max), np.float32)
    r = np.zeros((len(scores), k_max), np.float32)
    valid = np.zeros((len(scores), k_max), bool)
    for i, (si, ri) in enumerate(zip(scores, ranks)):
        s[i, :len(si)], r[i, :len(ri)], valid[i, :len(si)] = si, ri, True
    return jnp.asarray(s), losses.preference_matrix(jnp.asarray(r), jnp.asarray(valid)), valid


def test_ranking_loss_by_hand_for_k_2_3_4_with_ties():
    scores = [[1.0, 0.0], [2.0, 1.0, 0.5], [0.0, 1.0, 2.0, 3.0]]
    ranks = [[0, 1], [0, 1, 1], [3, 2, 1, 0]]  # prompt 2: answers 2 and 3 tie
    k2 = nls(1.0) / 1
    k3 = (nls(1.0) + nls(1.5)) / 3  # the tied pair is ignored; weight 1/C(3,2)
    k4 = (3 * nls(1.0) + 2 * nls(2.0) + nls(3.0)) / 6
    s, pref, valid = _batch(scores, ranks)
    loss, aux = losses.ranking_loss(s, pref, jnp.asarray(valid))
    assert float(loss) == pytest.approx((k2 + k3 + k4) / 3, rel=1e-6)
    assert float(aux["accuracy"]) == 1.0
    for sc, rk, want in zip(scores, ranks, (k2, k3, k4)):
        s1, p1, v1 = _batch([sc], [rk])
        assert float(losses.ranking_loss(s1, p1, jnp.asarray(v1))[0]) == pytest.approx(want,
                                                                                         rel=1e-6)
    # Reversed scores get every labeled pair wrong (the tied pair counts neither way).
    s_rev, _, _ = _batch([[-x for x in sc] for sc in scores], ranks)
    assert float(losses.ranking_loss(s_rev, pref, jnp.asarray(valid))[1]["accuracy"]) == 0.0


TOK = CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ?.")
CFG = GPTConfig(vocab_size=TOK.vocab_size, vocab_multiple=64, block_size=32, n_layer=2,
                n_head=2, n_embd=16)


def test_one_score_per_answer_equals_the_naive_per_pair_loss_and_gradients():
    recs = [preferences.from_ranks([{"role": "user", "content": "pick one"}],
                                   ["a", "bb", "ccc", "dd d"], [2, 0, 1, 1]),
            preferences.from_ranks([{"role": "user", "content": "why"}], ["yes.", "no."], [1, 0])]
    batch = preferences.stack([preferences.encode(r, TOK, 24, 4) for r in recs])
    model = RewardModel(CFG)
    params = model.init(jax.random.key(0), jnp.zeros((1, 24), jnp.int32),
                        jnp.ones((1,), jnp.int32))["params"]
    loss_fn = rm_loss_fn(model, dropout=False)

    def naive(params):
        """Score both answers of every labeled pair separately; weight 1/C(K, 2) per prompt."""
        total = 0.0
        for p, rec in enumerate(recs):
            c = len(rec.answers) * (len(rec.answers) - 1) / 2
            for w, l in rec.pairs:
                toks = batch["tokens"][p, [w, l]]
                r = model.apply({"params": params}, toks, batch["lengths"][p, [w, l]])
                total += -jax.nn.log_sigmoid(r[0] - r[1]) / c
        return total / len(recs)

    l1, g1 = jax.value_and_grad(lambda p: loss_fn(p, batch, None)[0])(params)
    l2, g2 = jax.value_and_grad(naive)(params)
    assert len(recs[0].pairs) == 5  # 6 pairs minus the tie
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_readers_of_the_shipped_preference_data():
    hh = preferences.read_hh_rlhf(str(SHARED_DATA))
    assert len(hh) > 2000 and all(r.pairs == [(0, 1)] for r in hh)
    assert all(r.prompt[-1]["role"] == "user" and r.answers[0] != r.answers[1] for r in hh)
    fg = preferences.read_finegrained(str(SHARED_DATA))
    assert len(fg) > 400 and all(len(r.answers) == 4 for r in fg)
    # 2,616 non-tie comparisons in the data set (its README), minus records we drop
    assert 2400 < sum(len(r.pairs) for r in fg) <= 2616


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("record, message", [
    ({"answers": ["a", "b"], "ranks": [0, 1]}, "missing field 'prompt'"),
    ({"prompt": "q", "answers": ["a", "a"], "ranks": [0, 1]}, "identical"),
    ({"prompt": "q", "answers": ["a", "b"]}, "needs 'ranks'"),
    ({"prompt": "q", "chosen": "a"}, "needs 'answers'"),
    ({"prompt": "q", "answers": ["a", "b", "c"], "ranks": [0, 1]}, "one rank per answer"),
])
def test_bad_preference_records(tmp_path, record, message):
    path = _write_jsonl(tmp_path / "p.jsonl", [record])
    with pytest.raises(GptjaxError, match=message) as e:
        preferences.read_jsonl(path)
    assert "line 1" in str(e.value)


def test_jsonl_ranks_and_pairs(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [{"role": "user", "content": "q"}], "answers": ["a", "b", "c"],
         "ranks": [1, 0, 1]},
        {"prompt": "q2", "chosen": "x", "rejected": "y"}])
    a, b = preferences.read_jsonl(path)
    assert sorted(a.pairs) == [(1, 0), (1, 2)] and b.pairs == [(0, 1)]
