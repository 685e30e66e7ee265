"""Stage `grpo` end to end through the CLI on a hand-built tiny SFT workdir and a .jsonl task.

The task asks for a number whose reference is always 7 ("say 7"); the policy is a freshly
initialised 1-layer char GPT over digits and a few letters, so its answers start near random.
GRPO must raise the share of answers whose final number is 7. A second run's verifier can parse
no answer at all (answers can only hold letters): counted, not a crash.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_cli
from test_ppo_stage import write_workdir

from gptjax.data.tokenizer import CharTokenizer
from gptjax.model import GPT, GPTConfig

TEXT = "0123456789 sayabc?"


def _workdir(root, name: str, text: str) -> str:
    tok = CharTokenizer.train(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, vocab_multiple=8, block_size=24, n_layer=1,
                    n_head=2, n_embd=16)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    return write_workdir(root / name, "sft", tok, cfg, params)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_inputs")
    rng = np.random.default_rng(0)
    with open(root / "task.jsonl", "w") as f:
        for i in range(40):
            q = "".join(rng.choice(list("abc"), size=int(rng.integers(1, 5))))
            f.write(json.dumps({"prompt": f"say {q}?", "answer": "#### 7"}) + "\n")
    return _workdir(root, "sft", TEXT), _workdir(root, "letters", "sayabc ?"), \
        str(root / "task.jsonl")


def grpo_args(sft: str, task: str, workdir, steps: int, *extra):
    return ("gptjax.train", "--config", "configs/grpo_addition.py", f"--config.init_from={sft}",
            f"--config.grpo.task={task}", "--config.grpo.batch_prompts=8",
            "--config.grpo.samples_per_prompt=4", "--config.grpo.max_new_tokens=6",
            "--config.grpo.max_prompt_tokens=12", "--config.grpo.eval_prompts=8",
            "--config.grpo.epochs=1", "--config.grpo.num_minibatches=1", "--config.grpo.beta=0.04",
            "--config.optim.lr=1e-2", "--config.optim.min_lr=1e-2",
            "--config.optim.warmup_steps=0", f"--config.train.steps={steps}",
            "--config.train.eval_every=10", "--config.train.checkpoint_every=10",
            "--config.train.progress=False", "--workdir", str(workdir), *extra)


def _metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_grpo_learns_the_verified_answer(inputs, tmp_path):
    sft, _, task = inputs
    r = run_cli(*grpo_args(sft, task, tmp_path / "run", 30))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _metrics(tmp_path / "run")
    steps = [m for m in rows if "exact_match" in m]
    assert [m["step"] for m in steps] == list(range(1, 31))
    for key in ("reward", "exact_match", "format", "unparsed", "zero_std_groups",
                "kl_loss", "loss", "clip_low", "clip_high", "entropy", "response_length",
                "truncated", "time_rollout", "time_reward", "time_scoring", "time_update"):
        assert key in steps[-1], key
    first = np.mean([m["exact_match"] for m in steps[:5]])
    last = np.mean([m["exact_match"] for m in steps[-5:]])
    assert last > first + 0.3, (first, last)
    evals = [m for m in rows if "eval_exact_match" in m]
    assert [m["step"] for m in evals] == [0, 10, 20, 30]  # at start, every 10, the last
    with open(tmp_path / "run" / "samples.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert {line["step"] for line in lines} == {0, 10, 20, 30}
    assert all(line["reference"] == "7" for line in lines)


def test_grpo_counts_answers_no_verifier_can_parse(inputs, tmp_path):
    """A policy whose vocabulary has no digit: every answer unparsed, every group flat (zero
    reward variance), advantages 0; the run finishes."""
    _, letters, _ = inputs
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"say {q}?", "answer": "3"}) + "\n"
                            for q in ("a", "b", "c", "ab", "ba", "ca", "cb", "bc", "aa", "cc")))
    r = run_cli(*grpo_args(letters, str(task), tmp_path / "run", 2,
                           "--config.data.val_fraction=0.2"))
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [m for m in _metrics(tmp_path / "run") if "unparsed" in m]
    assert [m["unparsed"] for m in steps] == [1.0, 1.0]
    assert [m["zero_std_fraction"] for m in steps] == [1.0, 1.0]
    assert all(m["reward"] == 0.0 and m["advantage_abs"] == 0.0 for m in steps)


@pytest.mark.parametrize("flag,needle", [
    ("--config.grpo.rewards=exact_match:1,bleu:1", "unknown reward 'bleu'"),
    ("--config.grpo.rewards=reward_model", "grpo.reward_from"),
    ("--config.grpo.samples_per_prompt=1", "samples_per_prompt=1 must be >= 2"),
])
def test_bad_input_is_one_line(inputs, tmp_path, flag, needle):
    sft, _, task = inputs
    r = run_cli(*grpo_args(sft, task, tmp_path / "run", 1, flag))
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
