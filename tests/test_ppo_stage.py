"""Stage `ppo` end to end through the CLI, on hand-built tiny workdirs with a planted reward.

The SFT workdir holds a freshly initialised 1-layer char GPT (near-uniform: it explores); the
reward workdir holds a RewardModel built by hand so that its score is a known rule: every block's
output projections and the position table are zero, so the final hidden state at a token is
LayerNorm(wte[token]); wte puts +-1 on two coordinates and the head reads their difference:

    score = +1 if the answer's last token is one of a..m, -1 for n..z, 0 otherwise

(the answer ends at <|end|> when the policy stops, scoring 0). PPO must start at KL 0 and move
the policy towards a..m endings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, run_cli

from gptjax import step as step_lib
from gptjax import workdir as workdir_lib
from gptjax.checkpoint import Checkpointer
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import GptjaxError
from gptjax.loops import ppo as ppo_loop
from gptjax.model import GPT, GPTConfig, RewardModel
from gptjax.optim import make_optimizer

TEXT = "abcdefghijklmnopqrstuvwxyz .?"
GOOD, BAD = "abcdefghijklm", "nopqrstuvwxyz"
KEYS = ("step", "score", "kl", "beta", "reward", "loss", "policy_loss", "value_loss",
        "clipfrac", "approx_kl", "response_length", "tokens_per_sec")


def _cfg(tok) -> GPTConfig:
    return GPTConfig(vocab_size=tok.vocab_size, vocab_multiple=8, block_size=32, n_layer=1,
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


def planted_reward_params(tok, cfg: GPTConfig):
    shapes = jax.eval_shape(lambda: nn.unbox(RewardModel(cfg).init(
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32))["params"]))
    p = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)  # blocks add nothing
    p["trunk"]["ln_f"]["scale"][:] = 1.0
    wte = p["trunk"]["wte"]["embedding"]
    for ch in GOOD:
        wte[tok.encode(ch)[0], :2] = (1.0, -1.0)
    for ch in BAD:
        wte[tok.encode(ch)[0], :2] = (-1.0, 1.0)
    # LayerNorm((a, -a, 0, ...)) = sign(a) * sqrt(C / 2) * (1, -1, 0, ...)
    s = math.sqrt(cfg.n_embd / 2)
    p["head"]["kernel"][:2, 0] = (0.5 / s, -0.5 / s)
    return p


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_inputs")
    tok = CharTokenizer.train(TEXT)
    cfg = _cfg(tok)
    policy = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    sft = write_workdir(root / "sft", "sft", tok, cfg, policy)
    reward = write_workdir(root / "reward", "reward", tok, cfg, planted_reward_params(tok, cfg))
    rng = np.random.default_rng(0)
    with open(root / "prompts.jsonl", "w") as f:
        for i in range(40):
            q = "".join(rng.choice(list(TEXT[:26]), size=int(rng.integers(3, 12))))
            f.write(json.dumps({"prompt": f"say {q}?", "chosen": "a", "rejected": "b"}) + "\n")
    return sft, reward, str(root / "prompts.jsonl")


def test_planted_reward_scores_the_last_token(workdirs):
    from gptjax import reward_model
    scorer = reward_model.load(workdirs[1])
    prompt = [{"role": "user", "content": "say abc?"}]
    s = scorer.score([(prompt, "zza"), (prompt, "aaz"), (prompt, "a.")])
    np.testing.assert_allclose(s, [0.0, 0.0, 0.0], atol=1e-4)  # scored at <|end|>: 0
    from gptjax.data.preferences import answer_ids
    tok = scorer.tokenizer
    ids = [answer_ids(prompt, a, tok, 32)[:-1] for a in ("zza", "aaz", "a.")]  # drop <|end|>
    tokens = np.zeros((3, 32), np.int32)
    for i, x in enumerate(ids):
        tokens[i, :len(x)] = x
    raw = reward_model.score_tokens(scorer.params, scorer.cfg, tokens,
                                    np.array([len(x) for x in ids], np.int32))
    np.testing.assert_allclose(raw, [1.0, -1.0, 0.0], atol=1e-4)


def ppo_args(workdirs, workdir, steps: int, *extra):
    sft, reward, prompts = workdirs
    return ("gptjax.train", "--config", "configs/ppo.py", f"--config.init_from={sft}",
            f"--config.ppo.reward_from={reward}", f"--config.data.mixture={prompts}",
            "--config.ppo.batch_prompts=8", "--config.ppo.samples_per_prompt=4",
            "--config.ppo.max_new_tokens=6", "--config.ppo.num_minibatches=2",
            "--config.ppo.epochs=2", "--config.optim.lr=3e-3", "--config.optim.min_lr=3e-3",
            "--config.optim.warmup_steps=0", "--config.train.checkpoint_every=10",
            "--config.train.progress=False", f"--config.train.steps={steps}",
            "--config.ppo.truncated=none", "--config.ppo.eval_at_start=False",
            "--workdir", str(workdir), *extra)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def test_ppo_learns_the_planted_reward_resumes_exactly_and_samples(workdirs, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    r = run_cli(*ppo_args(workdirs, straight, 30))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ppo prompts" in r.stdout and "stopped at step 30" in r.stdout
    m = _metrics(straight)
    assert [x["step"] for x in m] == list(range(1, 31))
    for x in m:  # (tokens/s from step 2: step 1's time is mostly compilation)
        assert set(KEYS) - ({"tokens_per_sec"} if x["step"] == 1 else set()) <= set(x), x
        assert all(np.isfinite(v) for v in x.values()), x
    assert abs(m[0]["kl"]) < 1e-5  # the first rollout samples the reference policy itself
    assert m[0]["beta"] == pytest.approx(0.2)
    assert 1 <= m[0]["response_length"] <= 6
    # The planted rule is learnt: mean score 0.04 over iterations 1-5, 0.52 over 21-30 (seed 0).
    first, last = (np.mean([x["score"] for x in part]) for part in (m[:5], m[20:]))
    assert last > first + 0.25, (first, last)
    assert 0 < np.mean([x["kl"] for x in m[20:]]) < 5
    ckpt = Checkpointer(str(straight))
    assert ckpt.latest_step() == 30
    ckpt.close()

    # Back to the step-20 checkpoint (as if stopped there) and resumed: steps 21-30 again,
    # the same numbers.
    shutil.copytree(straight, split)
    shutil.rmtree(split / "checkpoints" / "30")
    (split / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in m[:20]))
    r = run_cli(*ppo_args(workdirs, split, 30))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step 20" in r.stderr
    resumed = _metrics(split)
    assert [x["step"] for x in resumed] == list(range(1, 31))
    for a, b in zip(m[20:], resumed[20:]):
        for k in ("score", "kl", "loss", "beta", "value_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (k, a, b)

    # The workdir reads back as the policy.
    r = run_cli("gptjax.sample", "--workdir", str(straight), "--prompt", "say abc?",
                "--max_new_tokens", "5", "--num_samples", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("say abc?") == 2
    from gptjax import workdir as workdir_lib
    model = workdir_lib.load_host(str(straight))
    sft = workdir_lib.load_host(workdirs[0])
    assert model.step == 30 and model.cfg == sft.cfg
    assert not np.array_equal(model.params["wte"]["embedding"], sft.params["wte"]["embedding"])


def _config(workdirs, **overrides):
    from gptjax import config as config_lib
    config = load_config("ppo")
    config_lib.overrides_from_dict(config, {
        "init_from": workdirs[0], "ppo.reward_from": workdirs[1], "data.mixture": workdirs[2],
        "ppo.max_new_tokens": 6, **overrides})
    return config


def test_missing_reward_from(workdirs, tmp_path):
    with pytest.raises(GptjaxError, match="--config.ppo.reward_from=WORKDIR"):
        ppo_loop.run(_config(workdirs, **{"ppo.reward_from": ""}), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_reward_model_of_another_vocabulary(workdirs, tmp_path):
    tok = CharTokenizer.train(TEXT + "!")
    cfg = _cfg(tok)
    other = write_workdir(tmp_path / "other", "reward", tok, cfg, planted_reward_params(tok, cfg))
    with pytest.raises(GptjaxError, match="another vocabulary"):
        ppo_loop.run(_config(workdirs, **{"ppo.reward_from": other}), str(tmp_path / "run"))


def test_reward_from_must_be_a_reward_workdir(workdirs, tmp_path):
    with pytest.raises(GptjaxError, match="is a 'sft' workdir"):
        ppo_loop.run(_config(workdirs, **{"ppo.reward_from": workdirs[0]}),
                     str(tmp_path / "run"))


def test_prompt_batch_stream_is_a_reshuffle_per_pass():
    seen = np.concatenate([ppo_loop.batch_indices(10, 4, 0, s) for s in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    np.testing.assert_array_equal(ppo_loop.batch_indices(10, 4, 0, 3), seen[12:16])


def test_ppo_lora_trains_policy_adapters_and_the_critic(workdirs, tmp_path):
    """LoRA (in process): the policy trains as adapters on the frozen SFT model (adapters off:
    the reference, KL exactly 0 before the first update), the critic in full; the workdir reads
    back as the SFT model with the adapters merged."""
    from gptjax import lora
    wd = str(tmp_path / "run")
    config = _config(workdirs, **{
        "ppo.batch_prompts": 8, "ppo.samples_per_prompt": 2, "ppo.epochs": 1,
        "ppo.num_minibatches": 1, "ppo.eval_prompts": 0, "ppo.offset_prompts": 8,
        "ppo.truncated": "none", "optim.lr": 1e-2, "optim.min_lr": 1e-2,
        "optim.warmup_steps": 0, "train.steps": 2, "train.checkpoint_every": 2,
        "train.progress": False, "lora.rank": 2, "lora.alpha": 4.0})
    result = ppo_loop.run(config, wd)
    state = jax.device_get(result.state)
    assert set(state.params) == {"lora"} and set(state.value_params) == {"trunk", "head"}
    n_adapters = lora.num_params(state.params)
    assert n_adapters == 2 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16))  # r * (in + out)
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    # Adam's two moments over the adapters and the critic (trained in full), none for the base
    assert sum(np.size(x) for x in moments) == 2 * (n_adapters
                                                    + lora.num_params(state.value_params))
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    kl = [m["kl"] for m in rows if "kl" in m]
    assert len(kl) == 2 and kl[0] == 0.0 and kl[1] != 0.0, kl
    info = json.load(open(os.path.join(wd, workdir_lib.LORA_BASE_FILE)))
    assert info["init_from"] == os.path.abspath(workdirs[0])
    base = workdir_lib.load_host(workdirs[0])
    back = workdir_lib.load_host(wd)  # what gptjax.sample reads
    want = lora.merge(base.params, state.params["lora"], lora.spec_from(config.lora))
    adapted = 0
    for (path, got), w, b in zip(jax.tree_util.tree_leaves_with_path(back.params),
                                 jax.tree.leaves(want), jax.tree.leaves(base.params)):
        np.testing.assert_allclose(got, w, rtol=0, atol=1e-6, err_msg=str(path))
        adapted += not np.array_equal(got, b)
    assert adapted == 4  # the 4 adapted kernels moved; every other leaf is the SFT model's
    workdir_lib.merge_lora(wd, str(tmp_path / "merged"))
    merged = workdir_lib.load_host(str(tmp_path / "merged"))
    for a, b in zip(jax.tree.leaves(merged.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(a, b)
