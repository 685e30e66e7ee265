"""The gold judge's override rules and the K-answer ranking records, on hand-made answers."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    (pref,) = preferences.read_jsonl(path)
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
