"""The gold judge's override rules and the K-answer ranking records, on hand-made answers."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from test_eval_stage import wd  # noqa: F401 (the eval stage's planted workdirs, a fixture)

from gptjax.data import preferences
from gptjax.data.tokenizer import CharTokenizer
from gptjax.evals import gold, rankings
from gptjax.model import GPT, GPTConfig
from gptjax.workdir import TrainedModel

PROMPT = [{"role": "user", "content": "How do I bake bread?"}]


class LengthJudge:
    """A stand-in reward model that prefers longer answers (what a gold must not fall for)."""

    name = "length"
    dropped_chars = 0

    def score(self, prompts, answers):
        return np.array([float(len(a)) for a in answers], np.float32)


def test_failures_each_rule_on_hand_made_answers():
    r = gold.Rules(max_digit_symbol_share=0.5, max_digit_run=12, max_repeated_4grams=0.3,
                   max_base_perplexity=500.0)
    assert gold.failures("Mix flour, water and yeast, then bake it for 40 minutes.", r) == []
    assert gold.failures("   ", r) == ["empty"]
    # the hh-rlhf PPO hack: 23 digits in a row, and most characters are digits
    assert gold.failures("Sure 10000000001000000000000", r) == ["digits_symbols", "digit_run"]
    # 12 digits is allowed, 13 is not; "a 1234567890123" is 13 of 14 characters digits
    assert gold.failures("call me at 123456789012 today", r) == []
    assert "digit_run" in gold.failures("call me at 1234567890123 today", r)
    # "!!! ??? ..." : 9 symbols of 9 non-space characters
    assert gold.failures("!!! ??? ...", r) == ["digits_symbols"]
    # "a b c d a b c d a b c d": 9 4-grams, 4 distinct -> 5/9 repeat
    assert gold.failures("a b c d a b c d a b c d", r) == ["repetition"]
    assert gold.failures("fine text here", r, base_perplexity=501.0) == ["perplexity"]
    assert gold.failures("fine text here", r, base_perplexity=499.0) == []
    assert gold.failures("fine text here", r, base_perplexity=math.nan) == []  # unknown: no rule
    assert gold.failures("fine text here", gold.Rules(), base_perplexity=1e9) == []  # rule off


def test_gold_overrules_the_reward_model_on_failed_answers():
    j = gold.GoldJudge("gold", LengthJudge(), floor=-3.0)
    good, long_hack = "Knead the dough well.", "Knead " + "1" * 40
    prompts = [PROMPT] * 3
    scores, fails = j.verdicts(prompts, [good, long_hack, ""])
    # the stand-in prefers the 46-character hack; the gold puts it (and the empty answer) at
    # the floor, below the real answer
    assert scores.tolist() == [float(len(good)), -3.0, -3.0]
    assert fails == [[], ["digits_symbols", "digit_run"], ["empty"]]
    assert j.failed == {"any": 2, "digits_symbols": 1, "digit_run": 1, "empty": 1}
    assert j.scored == 3
    assert j.score([PROMPT], [good]).tolist() == [float(len(good))]


def test_dense_ranks():
    assert rankings.dense_ranks([0.5, 2.0, 0.5, -1.0]) == [1, 0, 1, 2]
    assert rankings.dense_ranks([3.0]) == [0]


def test_records_drop_duplicates_and_ties_and_read_back_as_pairs(tmp_path):
    texts = [["b", "a", "b", "c"],  # a duplicate "b" is kept once
             ["x", "x", "x", "x"],  # one distinct answer: no record
             ["p", "q", "r", "s"]]  # all tied: no record
    scores = np.array([[1.0, 3.0, 1.0, 1.0], [0, 0, 0, 0], [2.0, 2.0, 2.0, 2.0]])
    records, counts = rankings.to_records([PROMPT] * 3, texts, scores)
    assert counts == {"records": 1, "duplicate_answers": 4, "one_answer": 1, "all_tied": 1}
    assert records == [{"prompt": PROMPT, "answers": ["b", "a", "c"], "ranks": [1, 0, 1],
                        "scores": [1.0, 3.0, 1.0]}]
    path = str(tmp_path / "ranked.jsonl")
    rankings.write_jsonl(path, records)
    (pref,) = preferences.read_file(path)
    # "a" (rank 0) beats "b" and "c"; the tie b = c gives no pair
    assert pref.answers == ["b", "a", "c"] and sorted(pref.pairs) == [(1, 0), (1, 2)]


def test_answer_perplexities_of_a_uniform_model_and_an_empty_answer():
    # all weights zero: every next token has probability 1 / V, so each answer's perplexity is V
    tok = CharTokenizer.train("abcdefgh .")
    cfg = GPTConfig(vocab_size=tok.vocab_size, vocab_multiple=8, block_size=16, n_layer=1,
                    n_head=2, n_embd=8)
    shapes = jax.eval_shape(lambda: nn.unbox(GPT(cfg).init(jax.random.key(0),
                                                           jnp.zeros((1, 1), jnp.int32))["params"]))
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    m = TrainedModel(cfg, zeros, tok, 0)
    ppl = gold.answer_perplexities(m, ["abc", "", "a b c d e f g h a b c"])
    assert ppl[0] == pytest.approx(tok.vocab_size, rel=1e-5) and math.isnan(ppl[1])
    assert ppl[2] == pytest.approx(tok.vocab_size, rel=1e-5)  # cut at block_size + 1 tokens


def test_k_way_ranking_gives_all_c_k_2_pairs_in_the_reward_batch(tmp_path):
    # K = 4 distinct gold scores: InstructGPT's C(4, 2) = 6 pairs, each (better, worse)
    texts = [["wd", "wa", "wc", "wb"]]
    scores = np.array([[-1.0, 2.0, 0.5, 1.0]])
    records, _ = rankings.to_records([PROMPT], texts, scores)
    path = str(tmp_path / "ranked.jsonl")
    rankings.write_jsonl(path, records)
    (pref,) = preferences.read_file(path)
    assert len(pref.pairs) == 6
    assert all(scores[0][w] > scores[0][l] for w, l in pref.pairs)
    tok = CharTokenizer.train("".join(chr(i) for i in range(32, 127)) + "\n")
    batch = preferences.encode(pref, tok, seq_len=64, k_max=5)
    # the reward stage's loss reads pref[w, l] = 1 for each pair: six ones, none on padding
    expected = np.zeros((5, 5), np.float32)
    for w, l in [(1, 0), (1, 2), (1, 3), (2, 0), (3, 0), (3, 2)]:
        expected[w, l] = 1.0
    np.testing.assert_array_equal(batch["pref"], expected)
    assert batch["valid"].tolist() == [True] * 4 + [False]


class CountsOnes:
    """A judge fooled like issue 12's reward models: the more digit '1's, the better."""

    name = "counts ones"

    def score(self, prompts, answers):
        return np.array([a.count("1") for a in answers], np.float32)


def test_gold_in_the_eval_stage_overrules_digit_answers(wd, tmp_path):  # noqa: F811
    """The eval stage's planted models: A answers "1", B answers "b". CountsOnes alone would
    prefer A in every comparison; the gold around it fails A's all-digit answers, so B (the
    model with the planted feature of a passing answer) wins every one."""
    from gptjax import config as config_lib
    from gptjax.loops import eval as eval_loop
    config = load_config("eval_winrate")
    config_lib.overrides_from_dict(config, {
        "eval.a": wd["b"], "eval.b": wd["a"], "eval.reward_accuracy.enabled": False,
        "eval.win_rate.prompts": str(wd["root"] / "prompts.jsonl"), "eval.batch_size": 8,
        "eval.win_rate.max_new_tokens": 4, "eval.win_rate.samples_per_prompt": 1})
    judge = gold.GoldJudge("gold", CountsOnes(), floor=-3.0)
    w = eval_loop.run(config, str(tmp_path / "gold"), judge=judge).report["win_rate"]
    assert (w["judge"], w["comparisons"], w["wins"], w["win_rate"]) == ("gold", 11, 11, 1.0)
    assert w["ci_low"] == 1.0
    # every answer of A ("1") was overruled, none of B's ("b")
    assert judge.failed["any"] == 11 and judge.scored == 22
    rows = [json.loads(x) for x in (tmp_path / "gold" / "answers.jsonl").read_text().splitlines()]
    assert {(r["a"], r["b"], r["score_a"], r["score_b"]) for r in rows} == {("b", "1", 0.0, -3.0)}
    # the reward model alone would have put every "1" (score 1) above every "b" (score 0)
    assert CountsOnes().score(None, ["1", "b"]).tolist() == [1.0, 0.0]
