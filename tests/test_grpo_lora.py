"""Stage `grpo` with LoRA (lora.rank > 0), in process on a tiny SFT workdir and a "say 7" task:
only the adapters train and hold optimizer state, the SFT model is the frozen base and, with
the adapters off, the reference (KL exactly 0 before the first update), and the workdir reads
back (gptjax.sample's loader, --merge-lora) as the SFT model with the adapters merged."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from test_grpo_stage import TEXT, _workdir

from gptjax import config as config_lib
from gptjax import lora
from gptjax import workdir as workdir_lib
from gptjax.errors import GptjaxError
from gptjax.loops import grpo as grpo_loop
from gptjax.rl import rollout
from gptjax.rl.policy import Policy


def _config(sft: str, task: str, steps: int):
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


def test_grpo_lora_trains_adapters_on_the_frozen_sft_model(tmp_path):
    sft = _workdir(tmp_path, "sft", TEXT)
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"say {q}?", "answer": "#### 7"}) + "\n"
                            for q in ("a", "b", "c", "ab", "ba", "ca", "cb", "bc", "aa", "cc",
                                      "abc", "cab")))
    wd = str(tmp_path / "run")
    config = _config(sft, str(task), 2)
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
    ("ppo", {"rank": 4}, "stage 'ppo' does not train LoRA adapters"),
])
def test_rl_lora_bad_input(stage, section, message):
    c = load_config("grpo_addition")
    c.stage = stage
    c.lora.update(section)
    with pytest.raises(GptjaxError, match=message):
        config_lib.validate_lora(c)
