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
from gptjax import step as step_lib
from gptjax.data import lm as lm_data
from gptjax.errors import GptjaxError
from gptjax.loops import trainer
from gptjax.model import GPT


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


def build(config: ml_collections.ConfigDict, devices: Any = None) -> Pieces:
    """The compiled pieces of a pretraining run on all devices (or the given ones)."""
    config_lib.validate(config)
    mcfg = config_lib.model_config(config)
    if mcfg.vocab_size <= 0:
        raise GptjaxError("model.vocab_size is 0 (= the tokenizer's): it is resolved from the "
                          "data in run(); pass a concrete vocabulary size to build()")
    seq_len = config_lib.seq_len(config)
    model = GPT(mcfg)
    compiled = trainer.compile_stage(
        config, lambda r: model.init(r, jnp.zeros((1, seq_len), jnp.int32))["params"],
        lm_loss_fn(model, dropout=mcfg.dropout > 0), devices)
    return Pieces(**vars(compiled), model=model, seq_len=seq_len)


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
    p = build(config)
    trainer.write_run_files(config, workdir, splits.tokenizer)
    pidx, pcount = jax.process_index(), jax.process_count()
    train_it = lm_data.train_iterator(splits.train, p.seq_len, tcfg.batch_size, config.seed,
                                      pidx, pcount)
    val_set = np.stack(lm_data.val_batches(splits.val, p.seq_len, tcfg.batch_size,
                                           tcfg.eval_batches, pidx, pcount))
    mcfg = p.model.cfg
    return trainer.fit(config, workdir, p, train_it, val_set, stage="pretrain",
                       tokens_per_step=tcfg.batch_size * p.seq_len,
                       flops_per_token=mcfg.flops_per_token(p.seq_len),
                       num_params=mcfg.num_params(non_embedding=False),
                       data_position_global=True)  # batch i is a function of (seed, i)
