"""Stage `grpo` end to end through the CLI (and LoRA in process) on a hand-built tiny SFT workdir
and a .jsonl task.

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
from conftest import load_config, run_cli
from test_ppo_stage import write_workdir

from gptjax import config as config_lib
from gptjax import lora
from gptjax import workdir as workdir_lib
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import GptjaxError
from gptjax.loops import grpo as grpo_loop
from gptjax.model import GPT, GPTConfig
from gptjax.rl import rollout
from gptjax.rl.policy import Policy

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


def test_oversampling_keeps_the_groups_whose_rewards_differ(inputs, tmp_path):
    """grpo.oversample=2: 16 prompts answered, 8 groups kept, flat ones only when fewer than 8
    differ: the kept share of flat groups is max(0, 2 z - 1) for a sampled share z."""
    sft, _, task = inputs
    r = run_cli(*grpo_args(sft, task, tmp_path / "run", 8, "--config.grpo.oversample=2",
                           "--config.grpo.eval_prompts=0"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "16 x 4 answers" in r.stdout + r.stderr and "8 groups kept" in r.stdout + r.stderr
    steps = [m for m in _metrics(tmp_path / "run") if "zero_std_fraction_sampled" in m]
    assert len(steps) == 8
    for m in steps:
        z = m["zero_std_fraction_sampled"]
        assert m["zero_std_fraction"] == pytest.approx(max(0.0, 2 * z - 1), abs=1e-6), m
    assert any(0 < m["zero_std_fraction_sampled"] for m in steps)


@pytest.mark.parametrize("flag,needle", [
    ("--config.grpo.rewards=exact_match:1,bleu:1", "unknown reward 'bleu'"),
    ("--config.grpo.rewards=reward_model", "grpo.reward_from"),
    ("--config.grpo.samples_per_prompt=1", "samples_per_prompt=1 must be >= 2"),
    ("--config.grpo.oversample=0", "grpo.oversample (=0) >= 1"),
])
def test_bad_input_is_one_line(inputs, tmp_path, flag, needle):
    sft, _, task = inputs
    r = run_cli(*grpo_args(sft, task, tmp_path / "run", 1, flag))
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr


def _lora_config(sft: str, task: str, steps: int):
    c = load_config("grpo_addition")
    c.init_from, c.grpo.task = sft, task
    c.grpo.update(batch_prompts=8, samples_per_prompt=4, max_new_tokens=6, max_prompt_tokens=12,
                  eval_prompts=0, beta=0.04)  # no eval: it samples as the rollout does
    c.optim.update(lr=1e-2, min_lr=1e-2, warmup_steps=0)
    c.train.update(steps=steps, eval_every=steps, checkpoint_every=steps, progress=False)
    c.lora.update(rank=2, alpha=4.0)
    return c


def _leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_grpo_lora_trains_adapters_on_the_frozen_sft_model(inputs, tmp_path):
    """LoRA (in process): only the adapters train and hold optimizer state, the SFT model is
    the frozen base and, adapters off, the reference (KL exactly 0 before the first update);
    the workdir reads back (gptjax.sample's loader, --merge-lora) as SFT + merged adapters."""
    sft, _, task = inputs
    wd = str(tmp_path / "run")
    config = _lora_config(sft, task, 2)
    result = grpo_loop.run(config, wd)
    assert result.step == 2

    # the state: the adapters alone, and Adam moments over them alone
    params = jax.device_get(result.state.params)
    assert set(params) == {"lora"}
    paths = lora.adapted_paths(params["lora"])
    assert len(paths) == 4  # 1 block x attn/c_attn, attn/c_proj, mlp/c_fc, mlp/c_proj
    n_adapters = lora.num_params(params)
    assert n_adapters == 2 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))  # r * (in + out)
    moments = [x for x in jax.tree.leaves(result.state.opt_state) if np.ndim(x) > 0]
    assert sum(np.size(x) for x in moments) == 2 * n_adapters  # mu and nu, nothing for the base
    assert any(np.abs(params["lora"][p[0]][p[1]][p[2]]["kernel"]["lora_b"]).max() > 0
               for p in paths)  # B moved off 0

    # before the first update the policy is the SFT model exactly: the k3 KL is 0
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    kl = [m["kl_loss"] for m in rows if "kl_loss" in m]
    assert len(kl) == 2 and kl[0] == 0.0 and kl[-1] > 0.0, kl

    # the base is the SFT workdir (not its init model), at its step
    info = json.load(open(os.path.join(wd, workdir_lib.LORA_BASE_FILE)))
    assert info["init_from"] == os.path.abspath(sft) and info["step"] == 1

    # read back as gptjax.sample does: the SFT model bit-identical outside the adapted kernels,
    # W + (alpha / r) A B on them; --merge-lora writes those very weights as a plain workdir
    base, spec = workdir_lib.load_host(sft), lora.spec_from(config.lora)
    back = workdir_lib.load_host(wd)
    assert back.step == 2
    want = _leaves(lora.merge(base.params, params["lora"], spec))
    got, sft_leaves = _leaves(back.params), _leaves(base.params)
    assert got.keys() == want.keys() == sft_leaves.keys()
    adapted = {jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in p)) for p in paths}
    for k in got:
        if k in adapted:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6)
            assert not np.array_equal(got[k], sft_leaves[k]), k
        else:
            np.testing.assert_array_equal(got[k], sft_leaves[k], err_msg=k)
    workdir_lib.merge_lora(wd, str(tmp_path / "merged"))
    merged = workdir_lib.load_host(str(tmp_path / "merged"))
    assert workdir_lib.lora_spec(str(tmp_path / "merged")) is None
    for k, v in _leaves(merged.params).items():
        np.testing.assert_array_equal(v, got[k], err_msg=k)

    # the phases' policy: the base with adapters attached = the merged model; the reference
    # (frozen['ref'], adapters off) = the SFT model exactly
    policy = Policy(back.cfg, spec)
    tokens = jax.random.randint(jax.random.key(0), (4, 18), 0, back.cfg.vocab_size)
    plen = jnp.array([12, 9, 5, 1])
    frozen = {"ref": jax.tree.map(jnp.asarray, base.params)}

    @jax.jit
    def logps(p, f):
        def of(tree):
            return rollout.policy_logprobs(tree, back.cfg, tokens, plen, 6)[0]
        return policy.logprobs(p, f["ref"], tokens, plen, 6)[0], of(f["ref"]), of(back.params), \
            policy.sampling_params(p, f["ref"])

    pol, ref, merged_logp, sampled = logps(params, frozen)
    np.testing.assert_allclose(pol, merged_logp, rtol=0, atol=1e-5)
    assert np.abs(np.asarray(pol) - np.asarray(ref)).max() > 1e-3  # the adapters are off in ref
    for k, v in _leaves(sampled).items():  # the rollout decodes with the merged weights
        np.testing.assert_allclose(v, got[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("stage, section, message", [
    ("grpo", {"rank": 4, "dropout": 0.1}, "lora.dropout=0.1: stage 'grpo' samples and scores"),
    ("ppo", {"rank": 4, "dropout": 0.1}, "lora.dropout=0.1: stage 'ppo' samples and scores"),
    ("pretrain", {"rank": 4}, "stage 'pretrain' does not train LoRA adapters"),
])
def test_rl_lora_bad_input(stage, section, message):
    c = load_config("grpo_addition")
    c.stage = stage
    c.lora.update(section)
    with pytest.raises(GptjaxError, match=message):
        config_lib.validate_lora(c)
