"""Stage `eval` end to end on hand-built tiny workdirs whose behaviour is known exactly.

Every model is a 1-layer char GPT whose blocks add nothing except where stated, so the hidden
state at a token is LayerNorm(wte[token]) and, with tied embeddings, the next token depends on
the current one only:

- chat models "says 1" (A) and "says b" (B): after any token they write their letter, after
  their letter <|end|>: every answer is "1" (or "b"), stopped;
- a uniform model (all weights zero): every next token has probability 1 / V, so its perplexity
  on any text is exactly V;
- the judge, a RewardModel with its own, smaller vocabulary: its one attention layer attends
  uniformly (q = k = 0) and carries [token == '1'] into the residual, so its score at the
  final <|end|> rises with the share of '1' characters in prompt + answer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA, load_config, run_cli

from gptjax import eval as eval_cli, step as step_lib, train as train_cli
from gptjax.checkpoint import Checkpointer
from gptjax.data.tokenizer import END_OF_TURN, CharTokenizer
from gptjax.evals import perplexity
from gptjax.model import GPT, GPTConfig, RewardModel
from gptjax.optim import make_optimizer
from gptjax import workdir as workdir_lib
from gptjax.workdir import load

TEXT = "abcdefghijklmnopqrstuvwxyz0123456789 .?#"
JUDGE_TEXT = "1b xyz?"  # the judge lacks most characters: they are dropped before it scores


def _cfg(tok, block: int = 32) -> GPTConfig:
    return GPTConfig(vocab_size=tok.vocab_size, vocab_multiple=8, block_size=block, n_layer=1,
                     n_head=2, n_embd=16)


def write_workdir(path, stage: str, tok, cfg: GPTConfig, params) -> str:
    """A workdir as a finished run leaves it: config.json, tokenizer.json, one checkpoint."""
    config = load_config("tiny")
    config.stage = stage
    for k, v in dataclasses.asdict(cfg).items():
        config.model[k] = v
    os.makedirs(path)
    workdir_lib.write_run_files(config, str(path), tok)
    params = jax.tree.map(jnp.asarray, params)
    state = step_lib.TrainState(step=jnp.asarray(1, jnp.int32), params=params,
                                opt_state=make_optimizer(config.optim).init(params))
    ckpt = Checkpointer(str(path), async_save=False)
    try:
        ckpt.save(1, state)
        ckpt.wait()
    finally:
        ckpt.close()
    return str(path)


def _zeros(module, *args):
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *args)["params"]))
    return jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)


def says(tok, cfg: GPTConfig, letter: str):
    """GPT params that answer `letter` then <|end|> after any prompt (see the module doc):
    with u = e0 - e1, w = e2 - e3 and scale 3, wte[other] = w, wte[letter] = 2w + u,
    wte[<|end|>] = -w + 10u; then argmax_v LN(wte[x]) . wte[v] is the letter for x != letter
    (4 > 2 > -2) and <|end|> for x = letter (16 > 10 > 4)."""
    p = _zeros(GPT(cfg), jnp.zeros((1, 1), jnp.int32))
    p["ln_f"]["scale"][:] = 1.0
    u, w = np.eye(cfg.n_embd)[0] - np.eye(cfg.n_embd)[1], np.eye(cfg.n_embd)[2] - np.eye(
        cfg.n_embd)[3]
    wte = p["wte"]["embedding"]
    wte[:tok.vocab_size] = 3 * w
    wte[tok.encode(letter)[0]] = 3 * (2 * w + u)
    wte[tok.specials[END_OF_TURN]] = 3 * (-w + 10 * u)
    return p


def ones_judge(tok, cfg: GPTConfig):
    """RewardModel params whose score increases with the share of '1' tokens in the sequence."""
    p = _zeros(RewardModel(cfg), jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32))
    t = p["trunk"]
    t["ln_f"]["scale"][:] = 1.0
    t["h_0"]["ln_1"]["scale"][:] = 1.0
    wte = t["wte"]["embedding"]
    wte[tok.encode("1")[0], :2] = (1.0, -1.0)  # LN -> sqrt(C/2) (1, -1, 0, ...)
    wte[tok.specials[END_OF_TURN], 4:6] = (1.0, -1.0)  # a constant part: LN keeps the share
    t["h_0"]["attn"]["c_attn"]["kernel"][0, 2, 0, 0] = 1.0  # value = coordinate 0; q = k = 0
    t["h_0"]["attn"]["c_proj"]["kernel"][0, 0, 2:4] = (1.0, -1.0)  # mean -> coordinates 2, 3
    p["head"]["kernel"][2, 0] = 1.0
    return p


@pytest.fixture(scope="module")
def wd(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_inputs")
    tok, jtok = CharTokenizer.train(TEXT), CharTokenizer.train(JUDGE_TEXT)
    cfg, jcfg = _cfg(tok), _cfg(jtok)
    big = CharTokenizer.train("".join(chr(i) for i in range(32, 127)) + "\n")
    out = {"root": root, "V": big.vocab_size,
           "a": write_workdir(root / "a", "sft", tok, cfg, says(tok, cfg, "1")),
           "b": write_workdir(root / "b", "ppo", tok, cfg, says(tok, cfg, "b")),
           "judge": write_workdir(root / "judge", "reward", jtok, jcfg, ones_judge(jtok, jcfg)),
           "uniform": write_workdir(root / "uniform", "pretrain", big, _cfg(big, 512),
                                    _zeros(GPT(_cfg(big, 512)), jnp.zeros((1, 1), jnp.int32)))}
    rng = np.random.default_rng(0)
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(11):
            q = "".join(rng.choice(list(TEXT[:26]), size=int(rng.integers(3, 10))))
            f.write(json.dumps({"prompt": f"say {q}?"}) + "\n")
        f.write(json.dumps({"turns": ["this question is far too long for the context"]}) + "\n")
    with open(root / "gsm8k.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"question": f"q {i}?", "answer": f"so\n#### {1 if i < 4 else 2}"})
                    + "\n")
    # 4 prompts x 2 pairs (in the judge's characters); 6 of the 8 prefer the answer with '1's
    with open(root / "pairs.jsonl", "w") as f:
        for i, prompt in enumerate(("x?", "y?", "z?", "xy?")):
            for j in range(2):
                good, bad = "11 1", "bb b"
                flip = i >= 2 and j == 1
                f.write(json.dumps({"prompt": prompt, "chosen": bad if flip else good,
                                    "rejected": good if flip else bad}) + "\n")
    (root / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 30)
    return out


def eval_args(wd, out, *extra):
    r = wd["root"]
    return ("--config", "configs/eval_winrate.py", f"--config.eval.a={wd['a']}",
            f"--config.eval.b={wd['b']}", f"--config.eval.judge={wd['judge']}",
            f"--config.eval.win_rate.prompts={r / 'prompts.jsonl'}",
            "--config.eval.win_rate.max_new_tokens=4", "--config.eval.batch_size=8",
            "--config.eval.reward_accuracy.enabled=False", "--workdir", str(out), *extra)


def test_planted_judge_prefers_the_model_that_has_the_feature(wd, tmp_path):
    """Through the CLI: every task on, numbers worked out from the planted models."""
    r = wd["root"]
    out = tmp_path / "eval"
    res = run_cli("gptjax.eval", *eval_args(
        wd, out, f"--config.eval.base={wd['uniform']}",
        "--config.eval.reward_accuracy.enabled=True", "--config.eval.reward_accuracy.split=all",
        f"--config.eval.reward_accuracy.mixture={r / 'pairs.jsonl'}",
        "--config.eval.gsm8k.enabled=True", f"--config.eval.gsm8k.path={r / 'gsm8k.jsonl'}",
        "--config.eval.gsm8k.max_new_tokens=4",
        "--config.eval.perplexity.enabled=True",
        f"--config.eval.perplexity.text_path={r / 'text.txt'}"))
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((out / "eval.json").read_text())
    w = rep["win_rate"]
    # 11 of the 12 prompts fit (the long one is skipped for both), 2 samples each: A's "1"
    # always raises the judge's '1' share, so A wins every comparison.
    assert w["prompts_skipped"] == {wd["a"]: 1, wd["b"]: 1}
    assert (w["prompts"], w["comparisons"], w["wins"], w["ties"], w["losses"]) == (11, 22, 22,
                                                                                   0, 0)
    assert w["win_rate"] == 1.0 and w["ci_low"] == w["ci_high"] == 1.0
    assert w["mean_length_a"] == w["mean_length_b"] == 1.0  # "1" and "b"
    assert w["length_matched"]["win_rate"] == 1.0 and w["length_matched"]["comparisons"] == 22
    assert w["judge_dropped_chars"] > 0  # the judge's vocabulary lacks most prompt letters
    da, db = w["degeneration"][wd["a"]], w["degeneration"][wd["b"]]
    assert da["digit_share"] == 1.0 and db["digit_share"] == 0.0
    assert da["truncated_fraction"] == db["truncated_fraction"] == 0.0
    assert da["mean_tokens"] == 2.0  # the letter and <|end|>
    assert da["distinct_1"] == pytest.approx(1 / 22) and da["distinct_2"] is None  # no bigrams
    assert da["base_perplexity"] == pytest.approx(wd["V"], rel=1e-4)  # uniform base model
    assert [x["a"] for x in w["side_by_side"]] == ["1"] * 5
    # GSM8K: A answers "1" to every question; 4 of the 6 references are 1. B writes no number.
    g = rep["gsm8k"]
    assert (g[wd["a"]]["correct"], g[wd["a"]]["questions"]) == (4, 6)
    assert g[wd["a"]]["accuracy"] == pytest.approx(4 / 6)
    assert (g[wd["b"]]["accuracy"], g[wd["b"]]["no_number"]) == (0.0, 6)
    # reward accuracy: 6 of 8 pairs, 2 pairs per prompt -> cluster s.e. sqrt(4/3) / 8
    ra = rep["reward_accuracy"]
    assert (ra["accuracy"], ra["pairs"], ra["prompts"], ra["max_pairs_per_prompt"]) == (
        0.75, 8, 4, 2)
    assert ra["cluster_stderr"] == pytest.approx(math.sqrt(4 / 3) / 8)
    assert "share 4 prompts" in ra["grouping"]
    assert set(rep["perplexity"]) == {wd["a"], wd["b"]}
    assert all(math.isfinite(p["perplexity"]) for p in rep["perplexity"].values())
    md = (out / "eval.md").read_text()
    for heading in ("## Win rate", "## GSM8K", "## Reward-model accuracy", "## Perplexity"):
        assert heading in md
    rows = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert sum(x["task"] == "win_rate" for x in rows) == 22
    assert sum(x["task"] == "gsm8k" for x in rows) == 12


def _main(entry, monkeypatch, args) -> int:
    """An entry point's main in this process (ml_collections reads overrides from sys.argv)."""
    monkeypatch.setattr(sys, "argv", ["gptjax", *args])
    return entry.main()


def test_train_entry_runs_stage_eval_and_a_model_ties_with_itself(wd, tmp_path, monkeypatch):
    out = tmp_path / "self"
    args = list(eval_args(wd, out, "--config.eval.win_rate.samples_per_prompt=1"))
    args[args.index(f"--config.eval.b={wd['b']}")] = f"--config.eval.b={wd['a']}"
    assert _main(train_cli, monkeypatch, args) == 0
    w = json.loads((out / "eval.json").read_text())["win_rate"]
    assert (w["ties"], w["wins"], w["losses"], w["win_rate"]) == (11, 0, 0, 0.5)
    assert json.loads((out / "config.json").read_text())["stage"] == "eval"


def test_uniform_model_has_perplexity_v(wd):
    m = load(wd["uniform"])
    r = perplexity.on_text(m, str(wd["root"] / "text.txt"))
    assert r["perplexity"] == pytest.approx(wd["V"], rel=1e-5)
    assert r["tokens"] == len((wd["root"] / "text.txt").read_text()) - 1
    assert r["bits_per_char"] == pytest.approx(math.log2(wd["V"]), rel=1e-5)
    s = perplexity.on_sft_heldout(m, str(SHARED_DATA), "gsm8k", 0.02)
    assert s["perplexity"] == pytest.approx(wd["V"], rel=1e-5) and s["conversations"] > 50


def _bad(wd, tmp_path, capsys, monkeypatch, *extra):
    code = _main(eval_cli, monkeypatch, eval_args(wd, tmp_path / "bad", *extra))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    return err


def test_bad_input_one_line_exit_2(wd, tmp_path, capsys, monkeypatch):
    assert "is a 'sft' workdir, not a reward model" in _bad(
        wd, tmp_path, capsys, monkeypatch, f"--config.eval.judge={wd['a']}")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "is empty" in _bad(wd, tmp_path, capsys, monkeypatch,
                              f"--config.eval.win_rate.prompts={empty}")
    assert "fits the context" in _bad(wd, tmp_path, capsys, monkeypatch,
                                      "--config.eval.win_rate.max_new_tokens=26")
    rows = tmp_path / "gsm.jsonl"
    rows.write_text(json.dumps({"question": "q?", "answer": "5"}) + "\n")
    assert "no final answer '#### N'" in _bad(
        wd, tmp_path, capsys, monkeypatch, "--config.eval.win_rate.enabled=False",
        "--config.eval.gsm8k.enabled=True", f"--config.eval.gsm8k.path={rows}")


class PrefersB:
    """Any object with `name` and `score(prompts, answers)` is a judge (a gold scorer, say)."""

    name = "prefers b"

    def score(self, prompts, answers):
        return np.array([a.count("b") for a in answers], np.float32)


def test_any_judge_plugs_in(wd, tmp_path):
    from gptjax import config as config_lib
    from gptjax.loops import eval as eval_loop
    config = load_config("eval_winrate")
    config_lib.overrides_from_dict(config, {
        "eval.a": wd["a"], "eval.b": wd["b"], "eval.reward_accuracy.enabled": False,
        "eval.win_rate.prompts": str(wd["root"] / "prompts.jsonl"), "eval.batch_size": 8,
        "eval.win_rate.max_new_tokens": 4, "eval.win_rate.samples_per_prompt": 1})
    w = eval_loop.run(config, str(tmp_path / "gold"), judge=PrefersB()).report["win_rate"]
    assert (w["judge"], w["losses"], w["win_rate"]) == ("prefers b", 11, 0.0)
