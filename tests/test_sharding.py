"""Layouts on 8 simulated devices: dp, fsdp, tp, fsdp_tp train exactly like one device."""

import jax
import numpy as np
import pytest

from gptjax import sharding
from gptjax.errors import GptjaxError
from gptjax.loops import pretrain

LAYOUTS = {  # DESIGN.md's layout names
    "single": None,
    "dp": dict(data=-1, fsdp=1, tensor=1),
    "fsdp": dict(data=1, fsdp=-1, tensor=1),
    "tp": dict(data=1, fsdp=1, tensor=-1),
    "fsdp_tp": dict(data=1, fsdp=-1, tensor=2),
}


def _losses(config, layout, steps=5):
    if layout is None:  # the mesh (1, 1, 1) on the first device
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
        pieces = pretrain.build(config, jax.devices()[:1])
    else:
        config.mesh.update(layout)
        pieces = pretrain.build(config)
    state = pieces.make_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        batch = rng.integers(0, config.model.vocab_size, (config.train.batch_size,
                                                          pieces.seq_len + 1)).astype(np.int32)
        state, metrics = pieces.train_step(state, jax.device_put(batch, pieces.batch_sharding))
        out.append(float(metrics["loss"]))
    return np.array(out), state, pieces


@pytest.fixture(scope="module")
def reference(request):
    from conftest import load_config
    return _losses(load_config("tiny"), None)[0]


@pytest.mark.parametrize("layout", ["dp", "fsdp", "tp", "fsdp_tp"])
def test_layout_matches_single_device(layout, reference, tiny_config):
    assert jax.device_count() == 8
    losses, state, pieces = _losses(tiny_config, LAYOUTS[layout])
    assert losses[-1] < losses[0]  # it trains
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


def test_fsdp_holds_one_eighth_of_the_parameters(tiny_config):
    tiny_config.mesh.update(LAYOUTS["fsdp"])
    pieces = pretrain.build(tiny_config)
    state = pieces.make_state(jax.random.key(0))
    total = per_device = 0
    for leaf in jax.tree.leaves(state.params):
        shard = leaf.addressable_shards[0].data
        total += leaf.size
        per_device += shard.size
        if leaf.ndim >= 2 and leaf.shape[-1] == tiny_config.model.n_embd:
            assert shard.shape[-1] == leaf.shape[-1] // 8, leaf.shape  # split on the model width
    # Everything with an embed axis is split 8 ways; only the small qkv biases are replicated.
    assert per_device / total < 1 / 8 + 0.01
    # Adam's moments are sharded like the parameters.
    mu = state.opt_state[1][0].mu
    for p, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mu)):
        assert p.sharding == m.sharding


def test_mesh_errors():
    with pytest.raises(GptjaxError, match="does not fit 8 devices"):
        sharding.make_mesh(dict(data=3, fsdp=-1, tensor=1))
    with pytest.raises(GptjaxError, match="needs 16 devices but 8"):
        sharding.make_mesh(dict(data=4, fsdp=4, tensor=1))
    with pytest.raises(GptjaxError, match="at most one of them -1"):
        sharding.make_mesh(dict(data=-1, fsdp=-1, tensor=1))


def test_batch_not_divisible_by_data_axes(tiny_config):
    tiny_config.train.batch_size = 12  # 12 rows over 8 data-parallel devices
    with pytest.raises(GptjaxError, match="multiple of 8"):
        pretrain.build(tiny_config)


def test_gradient_accumulation_matches_one_big_batch(tiny_config):
    """16 rows as one batch vs two micro-batches of 8 (scan): same losses, same updates."""
    tiny_config.train.batch_size = 16
    big = _losses(tiny_config.copy_and_resolve_references(), LAYOUTS["dp"], steps=3)[0]
    tiny_config.train.grad_accum = 2
    small = _losses(tiny_config, LAYOUTS["dp"], steps=3)[0]
    np.testing.assert_allclose(small, big, rtol=1e-5)
