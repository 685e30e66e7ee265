"""Every file in configs/ loads, validates and builds the model shape it says it does."""


import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_config
from gptjax import config as config_lib, pipeline
from gptjax.errors import GptjaxError
from gptjax.model import GPT

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))
# Parameter counts of the GPT-2 family (Hugging Face checkpoints, tied embeddings).
GPT2_PARAMS = {"gpt2_124m": 124_439_808, "gpt2_350m": 354_823_168,
               "gpt2_774m": 774_030_080, "gpt2_1558m": 1_557_611_200}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
    config = load_config(name)
    if config.stage == "pipeline":  # its stages' configs are checked by the pipeline's validate
        pipeline.validate(config)
        assert all(config.stages[n].is_locked for n in config.order)
        return
    config_lib.validate(config)
    assert config.is_locked  # unknown keys are errors
    cfg = config_lib.gpt_config(config)
    shapes = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0),
                                                  jnp.zeros((1, 8), jnp.int32)))
    n = sum(x.size for x in jax.tree.leaves(shapes))
    padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
    assert n - padding == cfg.num_params(non_embedding=False)
    if name in GPT2_PARAMS:
        assert n - padding == GPT2_PARAMS[name]


def test_all_expected_configs_exist():
    assert {"base", "shakespeare_char", "tiny", *GPT2_PARAMS} <= set(CONFIGS)


def test_shakespeare_char_is_nanogpts_baby_gpt():
    c = load_config("shakespeare_char")
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (4, 4, 128, 64)
    assert (c.train.batch_size, c.train.steps, c.model.dropout) == (12, 2000, 0.0)
    assert (c.optim.lr, c.optim.min_lr, c.optim.warmup_steps, c.optim.decay_steps) == (
        1e-3, 1e-4, 100, 2000)


def test_locked_config_rejects_unknown_key():
    c = load_config("base")
    with pytest.raises(AttributeError):
        c.model.n_layr = 3
    with pytest.raises(GptjaxError, match="unknown config key"):
        config_lib.overrides_from_dict(c, {"train.stepz": 3})
