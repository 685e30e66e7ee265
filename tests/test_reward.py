"""Reward model: the ranking loss by hand, one score per answer vs per pair, data, bad input."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA, write_rows

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
        preferences.read_file(path)
    assert "line 1" in str(e.value)


def test_jsonl_ranks_and_pairs(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [{"role": "user", "content": "q"}], "answers": ["a", "b", "c"],
         "ranks": [1, 0, 1]},
        {"prompt": "q2", "chosen": "x", "rejected": "y"}])
    a, b = preferences.read_file(path)
    assert sorted(a.pairs) == [(1, 0), (1, 2)] and b.pairs == [(0, 1)]


# --- your own files: .jsonl / .jsonl.gz / .parquet, TRL's conversational pairs ------------------

@pytest.mark.parametrize("suffix", [".jsonl.gz", ".parquet"])
def test_conversational_pairs_read_like_the_builtin_hh_rlhf(tmp_path, suffix):
    """hh-rlhf written as TRL's conversational pairs (chosen / rejected message lists sharing
    the prompt turns), and as explicit prompt + one-turn answers, give the built-in records."""
    builtin = preferences.read_hh_rlhf(str(SHARED_DATA))[:30]
    implicit = [{"chosen": [*r.prompt, {"role": "assistant", "content": r.answers[0]}],
                 "rejected": [*r.prompt, {"role": "assistant", "content": r.answers[1]}]}
                for r in builtin]
    explicit = [{"prompt": r.prompt, "chosen": [{"role": "assistant", "content": r.answers[0]}],
                 "rejected": [{"role": "assistant", "content": r.answers[1]}]} for r in builtin]
    tok = CharTokenizer.train("".join(t["content"] for r in builtin for t in r.prompt)
                              + "".join(a for r in builtin for a in r.answers))
    want = [preferences.encode(r, tok, 512, 2) for r in builtin]
    for name, rows in (("implicit", implicit), ("explicit", explicit)):
        got = preferences.read_source(write_rows(tmp_path / f"{name}{suffix}", rows), "")
        assert got == builtin, name
        for g, w in zip((preferences.encode(r, tok, 512, 2) for r in got), want, strict=True):
            assert all((g[k] == w[k]).all() for k in w)


def test_parquet_ranks_equal_jsonl_and_mix_by_weight(tmp_path):
    rows = [{"prompt": f"question {i}?", "answers": ["a good one.", "a bad one.", "meh."],
             "ranks": [0, 2, 1]} for i in range(20)]
    a = write_rows(tmp_path / "r.jsonl", rows)
    b = write_rows(tmp_path / "r.parquet", rows)
    assert preferences.read_file(a) == preferences.read_file(b)
    tok = CharTokenizer.train("".join(json.dumps(r) for r in rows))
    data = preferences.load("", f"{a}:2,{b}", tok, 32, 0.2)
    assert data.weights == [2.0, 1.0] and data.k_max == 3
    assert data.stats[a] == data.stats[b] == {"records": 20, "train": 16, "val": 4,
                                              "not_encodable": 0}


@pytest.mark.parametrize("rows, match", [
    ([{"question": "q", "chosen": "a", "rejected": "b"}], r"row 1: missing field 'prompt'"),
    ([{"prompt": "q", "answers": ["a", "b"], "ranks": ["0", "1"]}],  # a column of strings
     r"row 1: 'answers' must be a list and 'ranks' a list of numbers; fix that record"),
    ([{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
       "rejected": [{"role": "user", "content": "other q"},
                    {"role": "assistant", "content": "b"}]}], r"row 1: 'chosen' and 'rejected' "
                                                              r"must share their prompt turns"),
])
def test_bad_parquet_preference_rows(tmp_path, rows, match):
    path = write_rows(tmp_path / "p.parquet", rows)
    with pytest.raises(GptjaxError, match=match) as e:
        preferences.read_source(path, "")
    assert "\n" not in str(e.value) and path in str(e.value)


def test_jsonl_line_that_is_not_json(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q2",\n')
    with pytest.raises(GptjaxError, match=r"p.jsonl line 2 is not JSON .*fix or delete that line"):
        preferences.read_source(str(path), "")


def test_shipped_preference_examples():
    from gptjax.data.lm import embedded_path
    recs = preferences.read_source(embedded_path("examples/preferences.jsonl"), "")
    assert [len(r.answers) for r in recs] == [2, 2, 3]
    assert recs[2].pairs == [(0, 1), (0, 2), (1, 2)]
    recs = preferences.read_source(embedded_path("examples/preferences_conversational.jsonl"), "")
    assert [len(r.prompt) for r in recs] == [1, 1, 2] and recs[0].answers == ["4.", "22."]
