"""gptjax.aot on this machine's 8 simulated CPU devices: the RL stages' phases (PPO and GRPO,
the GRPO host phase stepped over by its declared shapes) compile with their memory, collectives
and roofline columns, and the collectives follow the layout (dp: the gradient's all-reduce only;
fsdp: the weights all-gathered, in the rollout once before the decode loop)."""

import pytest

from conftest import load_config
from gptjax import aot

pytestmark = pytest.mark.slow
SMALL = dict(vocab_size=256, n_layer=1, n_embd=64, n_head=2, block_size=96)


def _grpo(data: int, fsdp: int):
    config = load_config("grpo_addition")
    config.model.update(SMALL)
    config.mesh.update(data=data, fsdp=fsdp, tensor=1)
    config.grpo.update(beta=0.04, max_new_tokens=16, max_prompt_tokens=32)
    return {r.phase: r for r in aot.compile_config(config, None)}


def test_grpo_phases_compile_with_collectives_that_follow_the_layout():
    dp, fsdp = _grpo(8, 1), _grpo(1, 8)
    assert list(dp) == list(fsdp) == ["rollout", "scoring", "update"]  # no host "reward" row
    for rows in (dp, fsdp):
        for r in rows.values():
            assert not r.error and r.total_mib > 0 and r.cost.flops > 0 and r.cost.hbm_bytes > 0
    # dp: parameters replicated; the update all-reduces the gradient, nothing is gathered
    assert all(r.collectives["all-gather"][0] == 0 for r in dp.values())
    assert dp["update"].collectives["all-reduce"][1] > 0
    assert dp["rollout"].collectives["all-reduce"][1] < dp["update"].collectives["all-reduce"][1]
    # fsdp: every phase gathers the sharded weights, and the rollout's decode loop is counted
    # once (a while loop without a trip count), with the gathers hoisted before it
    for r in fsdp.values():
        assert r.collectives["all-gather"][0] > 0
    assert fsdp["rollout"].unknown_loops >= 1
    text = aot.table(list(fsdp.values()))
    assert "| grpo (grpo) | rollout |" in text and "all-gather n / MiB" in text
    assert "without a fixed trip count" in text


def test_ppo_phases_compile_on_a_mesh():
    config = load_config("ppo")
    config.model.update(SMALL)
    config.mesh.update(data=4, fsdp=2, tensor=1)
    config.ppo.update(batch_prompts=8, max_new_tokens=16, max_prompt_tokens=32)
    rows = aot.compile_config(config, None)
    assert [r.phase for r in rows] == ["rollout", "scoring", "update"]
    assert all(not r.error and r.collectives["all-gather"][0] > 0 for r in rows)
