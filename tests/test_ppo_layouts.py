"""Stage `ppo` on the one trainer: every layout, two processes, SIGTERM, PPO-ptx, bad input.

Workdirs are the hand-built ones of test_ppo_stage.py (a fresh 1-layer char policy and the
planted reward: +1 for an answer ending in a..m, -1 for n..z), here with 8 heads so that every
layout of 8 simulated devices can split them.

Tolerances (measured on this CPU): the layouts run the same program with their reductions in
another order. The first rollout is the same to the bit; the updates differ by float rounding,
which Adam's first steps amplify where a gradient is near 0 (update ~ lr * g / (|g| + eps): with
the default eps 1e-8 the first iteration's value loss already differs by 0.3% between dp and one
device). With eps 1e-4 the scores, KLs and losses of 2 iterations agree to 1e-6 (rel) + 1e-7
(abs) (largest difference seen: 1.2e-7), and the test asserts 1e-5 + 1e-6.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest
from conftest import ROOT, load_config, run_cli
from test_multihost import _launch
from test_ppo_stage import TEXT, planted_reward_params, write_workdir

from gptjax import config as config_lib
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import GptjaxError
from gptjax.loops import ppo as ppo_loop, trainer
from gptjax.model import GPT, GPTConfig

KEYS = ("score", "kl", "loss", "value_loss", "policy_loss")
LAYOUTS = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "tp": (1, 1, -1), "fsdp_tp": (1, -1, 2)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_layout_inputs")
    tok = CharTokenizer.train(TEXT)
    cfg = GPTConfig(vocab_size=tok.vocab_size, vocab_multiple=8, block_size=32, n_layer=1,
                    n_head=8, n_embd=32)
    policy = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    sft = write_workdir(root / "sft", "sft", tok, cfg, policy)
    reward = write_workdir(root / "reward", "reward", tok, cfg, planted_reward_params(tok, cfg))
    rng = np.random.default_rng(0)
    with open(root / "prompts.jsonl", "w") as f:
        for _ in range(40):
            q = "".join(rng.choice(list(TEXT[:26]), size=int(rng.integers(3, 12))))
            f.write(json.dumps({"prompt": f"say {q}?", "chosen": "a", "rejected": "b"}) + "\n")
    text = root / "pretrain.txt"
    text.write_text(" ".join("".join(rng.choice(list("abcdefgh"), size=5)) for _ in range(400)))
    return {"sft": sft, "reward": reward, "prompts": str(root / "prompts.jsonl"),
            "text": str(text)}


OVERRIDES = {"ppo.batch_prompts": 8, "ppo.samples_per_prompt": 2, "ppo.max_new_tokens": 6,
             "ppo.num_minibatches": 2, "ppo.epochs": 2, "ppo.offset_prompts": 8,
             "optim.lr": 3e-3, "optim.min_lr": 3e-3, "optim.warmup_steps": 0,
             "train.progress": False, "train.checkpoint_every": 1000}


def _config(inputs, **overrides):
    config = load_config("ppo")
    config_lib.overrides_from_dict(config, {
        "init_from": inputs["sft"], "ppo.reward_from": inputs["reward"],
        "data.mixture": inputs["prompts"], **OVERRIDES, **overrides})
    return config


def _args(inputs, workdir, **overrides):
    flat = {"init_from": inputs["sft"], "ppo.reward_from": inputs["reward"],
            "data.mixture": inputs["prompts"], **OVERRIDES, **overrides}
    return ("gptjax.train", "--config", "configs/ppo.py",
            *(f"--config.{k}={v}" for k, v in flat.items()), "--workdir", str(workdir))


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def _fit(config, workdir, devices):
    su = ppo_loop.setup(config, str(workdir))
    st = ppo_loop.stage(config, su, str(workdir))
    trainer.fit(config, str(workdir), st, trainer.compile_stage(config, st, devices))
    return _metrics(workdir)


def test_every_layout_gives_the_numbers_of_one_device(inputs, tmp_path):
    steps = {"train.steps": 2, "optim.eps": 1e-4, "ppo.eval_prompts": 0,
             "ppo.offset_prompts": 0}
    config = _config(inputs, **steps)
    config.mesh.update(data=1, fsdp=1, tensor=1)
    one = _fit(config, tmp_path / "one", jax.devices()[:1])
    assert [m["step"] for m in one] == [1, 2]
    for name, (d, f, t) in LAYOUTS.items():
        config = _config(inputs, **steps)
        config.mesh.update(data=d, fsdp=f, tensor=t)
        got = _fit(config, tmp_path / name, jax.devices())
        for a, b in zip(one, got):
            for k in KEYS:
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (name, k, a, b)
            assert b["response_length"] == a["response_length"], name


def test_two_processes_give_the_numbers_of_one(inputs, tmp_path):
    steps = {"train.steps": 3, "optim.eps": 1e-4, "ppo.eval_prompts": 0}
    args = _args(inputs, tmp_path / "two", **steps)[1:]
    r = _launch(2, 2, *args, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli(*_args(inputs, tmp_path / "one", **steps),
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert r.returncode == 0, r.stderr[-3000:]
    for a, b in zip(_metrics(tmp_path / "one"), _metrics(tmp_path / "two")):
        for k in KEYS:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (k, a, b)


def test_sigterm_saves_and_the_rerun_continues_exactly(inputs, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    r = run_cli(*_args(inputs, straight, **{"train.steps": 20}))
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen([sys.executable, "-m", *_args(inputs, stopped,
                                                          **{"train.steps": 100000})],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while not (stopped / "metrics.jsonl").exists() or len(_metrics(stopped)) < 3:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    saved = [int(s) for s in os.listdir(stopped / "checkpoints") if s.isdigit()]
    assert len(saved) == 1 and 2 <= saved[0] < 20 and f"saving step {saved[0]}" in err
    r = run_cli(*_args(inputs, stopped, **{"train.steps": 20}))
    assert r.returncode == 0 and f"resumed at step {saved[0]}" in r.stderr, r.stderr[-3000:]
    a = {m["step"]: m for m in _metrics(straight)}
    b = {m["step"]: m for m in _metrics(stopped)}
    for s in range(saved[0] + 1, 21):
        for k in KEYS:
            assert b[s][k] == pytest.approx(a[s][k], rel=1e-6, abs=1e-7), (s, k)


def test_ptx_keeps_the_policy_on_the_pretraining_text(inputs, tmp_path):
    """The same 12 iterations with gamma 0 and gamma 1 on a text of a..h words: with the
    pretraining term the policy's held-out loss on that text falls; without it, it does not."""
    runs = {}
    for coef in (0.0, 1.0):
        config = _config(inputs, **{"train.steps": 12, "train.eval_every": 12,
                                    "ppo.ptx_coef": coef, "ppo.ptx_data": inputs["text"],
                                    "ppo.ptx_batch": 8})
        config.mesh.update(data=1, fsdp=1, tensor=1)
        runs[coef] = _fit(config, tmp_path / f"ptx{coef}", jax.devices()[:1])
    # Step 0: the SFT policy's evaluation, before any update: the same in both runs.
    assert runs[0.0][0]["step"] == runs[1.0][0]["step"] == 0
    assert runs[1.0][0]["val_ptx_loss"] == pytest.approx(runs[0.0][0]["val_ptx_loss"], rel=1e-6)
    with_ptx, without = ([m for m in runs[c] if m["step"] > 0] for c in (1.0, 0.0))
    assert "ptx_loss" in with_ptx[0] and "ptx_loss" not in without[0]
    assert with_ptx[-1]["ptx_loss"] < with_ptx[0]["ptx_loss"] - 0.2
    assert with_ptx[-1]["val_ptx_loss"] < without[-1]["val_ptx_loss"] - 0.2
    assert all(np.isfinite(m["score"]) for m in with_ptx)
    samples = [json.loads(x) for x in
               (tmp_path / "ptx1.0" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 4  # steps 0 and 12, greedy and sampled, 4 prompts
    assert {x["step"] for x in samples} == {0, 12} and {x["mode"] for x in samples} == {
        "greedy", "sampled"}


@pytest.mark.parametrize("overrides, message", [
    ({"ppo.ptx_coef": 1.0, "ppo.ptx_data": "/nonexistent"}, "no such file or directory"),
    ({"ppo.ptx_coef": 1.0}, "needs pretraining data"),
    ({"ppo.ptx_coef": 1.0, "ppo.ptx_data": "EMPTY"}, "is empty"),
    ({"ppo.ptx_coef": 1.0, "ppo.ptx_data": "FOREIGN"}, "not in this char tokenizer"),
    ({"ppo.samples_per_prompt": 0}, "must be >= 1"),
    ({"ppo.max_new_tokens": 32}, "room for a prompt"),
    ({"ppo.batch_prompts": 3, "ppo.num_minibatches": 1}, "Make ppo.batch_prompts a multiple of 8"),
    ({"ppo.truncated": "cut"}, "ppo.truncated='cut'"),
])
def test_bad_input_one_clear_message(inputs, tmp_path, overrides, message):
    paths = {"EMPTY": tmp_path / "empty.txt", "FOREIGN": tmp_path / "foreign.txt"}
    paths["EMPTY"].write_text("  \n")
    paths["FOREIGN"].write_text("日本語のテキスト" * 200)
    overrides = {k: str(paths.get(v, v)) if k == "ppo.ptx_data" else v
                 for k, v in overrides.items()}
    config = _config(inputs, **overrides)
    with pytest.raises(GptjaxError, match=message):
        su = ppo_loop.setup(config, str(tmp_path / "run"))
        trainer.compile_stage(config, ppo_loop.stage(config, su, str(tmp_path / "run")))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stage_contract_fields():
    """The PPO stage is a trainer.Stage: three phases, frozen models, no loop of its own."""
    import inspect
    src = inspect.getsource(ppo_loop)
    for forbidden in ("Checkpointer(", "MetricsWriter(", "Progress(", "make_mesh("):
        assert forbidden not in src, forbidden
    assert dataclasses.is_dataclass(trainer.Stage)
