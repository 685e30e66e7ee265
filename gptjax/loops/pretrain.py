"""Stage `pretrain`: next-token prediction on a token stream. `run(config, workdir)`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import losses
from gptjax import workdir as workdir_lib
from gptjax import step as step_lib
from gptjax.data import lm as lm_data
from gptjax.errors import GptjaxError
from gptjax.loops import supervised, trainer
from gptjax.model import GPT
from gptjax.optim import make_optimizer


def lm_loss_fn(model: GPT, dropout: bool):
    """loss_fn(params, tokens (B, T+1), rng) -> (mean next-token loss, {})."""
    def loss_fn(params, tokens, rng):
        rngs = {"dropout": rng} if dropout and rng is not None else None
        logits = model.apply({"params": params}, tokens[:, :-1],
                             deterministic=rngs is None, rngs=rngs)
        return losses.lm_loss(logits, tokens[:, 1:]), {}
    return step_lib.mean_over_rows(loss_fn)  # every row has T tokens: an equal-weight mean


@dataclasses.dataclass
class Pieces(trainer.Compiled):
    """The compiled pretraining pieces (see `trainer.Compiled`) plus the model and window."""

    model: GPT = None
    seq_len: int = 0
    tx: Any = None  # the optimizer (for a state made around given parameters)


def stage(config: ml_collections.ConfigDict, data: trainer.Data | None = None,
          val: Any = None) -> trainer.Stage:
    """The pretraining stage of the config's model (concrete vocab_size) on the given data."""
    mcfg = config_lib.gpt_config(config)
    if mcfg.vocab_size <= 0:
        raise GptjaxError("model.vocab_size is 0 (= the tokenizer's): it is resolved from the "
                          "data in run(); pass a concrete vocabulary size to build()")
    seq_len = config_lib.seq_len(config)
    model = GPT(mcfg)
    return supervised.loss_stage(
        config, "pretrain", lambda r: model.init(r, jnp.zeros((1, seq_len), jnp.int32))["params"],
        lm_loss_fn(model, dropout=mcfg.dropout > 0), data=data, val=val,
        tokens_per_step=config.train.batch_size * seq_len,
        flops_per_token=mcfg.flops_per_token(seq_len),
        num_params=mcfg.num_params(non_embedding=False))


def build(config: ml_collections.ConfigDict, devices: Any = None) -> Pieces:
    """The compiled pieces of a pretraining run on all devices (or the given ones), no data."""
    compiled = trainer.compile_stage(config, stage(config), devices)
    return Pieces(**vars(compiled), model=GPT(config_lib.gpt_config(config)),
                  seq_len=config_lib.seq_len(config), tx=make_optimizer(config.optim))


def run(config: ml_collections.ConfigDict, workdir: str) -> trainer.RunResult:
    tcfg = config.train
    os.makedirs(workdir, exist_ok=True)
    splits = lm_data.corpus_for(config.data, os.path.join(workdir, "data"))
    vocab = splits.tokenizer.vocab_size
    if config.model.vocab_size == 0:  # "the tokenizer's": record the real size in config.json
        config.model.vocab_size = vocab
    elif vocab > config.model.vocab_size:
        raise GptjaxError(
            f"the tokenizer has {vocab} tokens but model.vocab_size={config.model.vocab_size}; "
            f"set --config.model.vocab_size={vocab} (or 0 to take the tokenizer's)")
    config_lib.validate(config)
    workdir_lib.write_run_files(config, workdir, splits.tokenizer)
    seq_len = config_lib.seq_len(config)
    pidx, pcount = jax.process_index(), jax.process_count()
    train_it = lm_data.train_iterator(splits.train, seq_len, tcfg.batch_size, config.seed,
                                      pidx, pcount)
    val_set = np.stack(lm_data.val_batches(splits.val, seq_len, tcfg.batch_size,
                                           tcfg.eval_batches, pidx, pcount))
    # batch i is a function of (seed, i): the data position carries over any process count
    data = trainer.Data.of_iterator(train_it, position_global=True)
    return trainer.fit(config, workdir, stage(config, data, val_set))
