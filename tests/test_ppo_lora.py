"""Stage `ppo` with LoRA (lora.rank > 0), in process on the tiny SFT / planted-reward workdirs of
test_ppo_stage: the policy trains as adapters on the frozen SFT model (with the adapters off, the
reference: KL exactly 0 before the first update), the critic in full from the reward model; the
workdir reads back as the SFT model with the adapters merged."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from test_ppo_stage import _config, workdirs  # noqa: F401 (a fixture)

from gptjax import lora
from gptjax import workdir as workdir_lib
from gptjax.loops import ppo as ppo_loop


def test_ppo_lora_trains_policy_adapters_and_the_critic(workdirs, tmp_path):  # noqa: F811
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
