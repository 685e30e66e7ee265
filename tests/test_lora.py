"""LoRA: the adapted model against its merged weights, what trains and what the optimizer holds,
the fine-tuning wiring (tuning.py), bad targets and ranks."""

from __future__ import annotations

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, random_params

from gptjax import lora
from gptjax.errors import GptjaxError
from gptjax.loops import tuning
from gptjax.model import GPT, GPTConfig, RewardModel
from gptjax.optim import make_optimizer

CFG = GPTConfig(vocab_size=70, vocab_multiple=64, block_size=32, n_layer=2, n_head=4, n_embd=32)
SPEC = lora.LoraSpec(4, 8.0, tuple(lora.DEFAULT_TARGETS.split(",")))
TOKENS = jax.random.randint(jax.random.key(1), (3, 16), 0, 70)


def random_adapters(module, spec, seed, *args):
    """Adapters with B != 0 (after some training), O(0.1) entries."""
    fresh = nn.unbox(lora.init(jax.random.key(seed), spec, lora.sites(module, spec, *args)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), jnp.float32), fresh)


@pytest.mark.parametrize("remat", [False, True])
def test_adapters_start_as_the_base_and_match_their_merged_weights(remat):
    cfg = dataclasses.replace(CFG, remat=remat)
    model = GPT(cfg)
    base = random_params(model, seed=0, scale=0.2)
    x = (jnp.zeros((1, 4), jnp.int32),)

    def adapted(adapters):
        with lora.attached(adapters, SPEC):
            return model.apply({"params": base}, TOKENS)

    plain = model.apply({"params": base}, TOKENS)
    fresh = nn.unbox(lora.init(jax.random.key(0), SPEC, lora.sites(model, SPEC, *x)))
    np.testing.assert_array_equal(adapted(fresh), plain)  # B = 0: exactly the base (op by op)
    trained = random_adapters(model, SPEC, 1, *x)
    logits = jax.jit(adapted)(trained)
    merged = model.apply({"params": lora.merge(base, trained, SPEC)}, TOKENS)
    assert float(jnp.abs(logits - plain).max()) > 0.1  # the adapters do change the model
    # float32: (x W + s x A B) vs x (W + s A B) differ by rounding only
    np.testing.assert_allclose(merged, logits, rtol=0, atol=2e-5)


def test_reward_model_adapters_and_dropout():
    model = RewardModel(CFG)
    args = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), jnp.int32))
    spec = dataclasses.replace(SPEC, dropout=0.5)
    sites = lora.sites(model, spec, *args)
    assert [s.name for s in sites][:2] == ["trunk/h_0/attn/c_attn", "trunk/h_0/attn/c_proj"]
    base = random_params(GPT(CFG), seed=0, scale=0.2)
    params = {"trunk": base, "head": {"kernel": jnp.ones((32, 1)) * 0.1, "bias": jnp.zeros(1)}}
    adapters = random_adapters(model, spec, 2, *args)
    lengths = jnp.full((3,), 16)

    def score(rng):
        with lora.attached(adapters, spec, rng):
            return model.apply({"params": params}, TOKENS, lengths)

    merged = model.apply({"params": lora.merge(params, adapters, spec)}, TOKENS, lengths)
    np.testing.assert_allclose(score(None), merged, atol=2e-5)  # no rng: no dropout
    noisy = score(jax.random.key(0))
    assert not np.allclose(noisy, merged, atol=1e-3)
    np.testing.assert_array_equal(noisy, score(jax.random.key(0)))  # the key decides the mask


def _config(**lora_section):
    config = load_config("tiny")
    config.stage = "sft"
    config.init_from = "unused"
    config.lora.update(lora_section)
    return config


def test_trainable_parameters_and_optimizer_memory_against_full_fine_tuning(tmp_path):
    model, x = GPT(CFG), (jnp.zeros((1, 4), jnp.int32),)
    base = jax.tree.map(np.asarray, random_params(model, seed=0))
    full = tuning.make(_config(rank=0), str(tmp_path), model, x, base, lambda: base, 0)
    lo = tuning.make(_config(rank=4), str(tmp_path), model, x, base, None, 7)
    assert full.frozen is None and full.trainable == full.total
    # rank 4 on the 4 projections of 2 blocks: 4 * (in + out) per projection
    c = CFG.n_embd
    per_block = 4 * ((c + 3 * c) + (c + c) + (c + 4 * c) + (4 * c + c))
    assert lo.trainable == 2 * per_block == 4096 and lo.total == full.total
    tx = make_optimizer(load_config("tiny").optim)
    state_bytes = {k: lora.num_bytes(jax.eval_shape(tx.init, nn.unbox(t.init(jax.random.key(0)))))
                   for k, t in (("full", full), ("lora", lo))}
    assert 0 < state_bytes["full"] - 8 * full.total <= 16  # two f32 Adam moments + counts
    assert 0 < state_bytes["lora"] - 8 * lo.trainable <= 16
    # the base is frozen: a trainer.Frozen model, with no optimizer state
    frozen = nn.unbox(jax.eval_shape(lo.frozen.init, jax.random.key(0)))
    assert lora.num_params(frozen["base"]) == full.total
    assert json.load(open(tmp_path / "lora_base.json"))["step"] == 7


def test_reward_tuning_trains_adapters_the_new_head_and_lora_train_groups(tmp_path):
    model = RewardModel(CFG)
    args = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1,), jnp.int32))
    t = tuning.make(_config(rank=2, train="wte"), str(tmp_path), model, args, {"trunk": {}},
                    None, 0, full_keys=("head",), base_key="trunk")
    trainable = nn.unbox(jax.eval_shape(t.init, jax.random.key(0)))
    assert set(trainable) == {"lora", "head", "trunk"} and set(trainable["trunk"]) == {"wte"}
    base = nn.unbox(jax.eval_shape(t.frozen.init, jax.random.key(0)))["base"]
    assert set(base) == {"trunk"} and "wte" not in base["trunk"] and "h_0" in base["trunk"]
    assert json.load(open(tmp_path / "lora_base.json"))["full"] == ["head", "trunk/wte"]
    with pytest.raises(GptjaxError, match="lora.train names 'embedding', which the model lacks"):
        tuning.make(_config(rank=2, train="embedding"), str(tmp_path), model, args, {}, None, 0,
                    full_keys=("head",), base_key="trunk")


@pytest.mark.parametrize("spec, message", [
    (lora.LoraSpec(4, 8.0, ("attn/q_proj",)), "match no projection of the model"),
    (lora.LoraSpec(4, 8.0, ("[",)), "is not a regular expression"),
    (lora.LoraSpec(40, 8.0, ("attn/c_proj",)), r"lora.rank=40 exceeds the dimension 32"),
])
def test_bad_targets_and_ranks(spec, message):
    with pytest.raises(GptjaxError, match=message):
        lora.sites(GPT(CFG), spec, jnp.zeros((1, 4), jnp.int32))
