"""Stage `sft`: supervised fine-tuning on conversations, loss on the assistant's tokens only.

`run(config, workdir)`: start from `config.init_from` (a pretrained workdir; parameters only),
read the data sets of `config.data.mixture`, pack conversations into rows with segment ids and
restarting positions, and train with the shared loop: the whole model, or LoRA adapters on it
when lora.rank > 0 (gptjax/loops/tuning.py). Validation loss is on held-out
conversations' assistant tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from gptjax import config as config_lib
from gptjax import losses
from gptjax import workdir as workdir_lib
from gptjax.data import sft as sft_data
from gptjax.loops import finetune, supervised, trainer, tuning
from gptjax.model import GPT, GPTConfig


def sft_loss_fn(model: GPT, dropout: bool):
    """loss_fn(params, packed batch, rng) -> (mean loss over assistant tokens, {}).

    batch: 'tokens' (B, T+1), 'weights' (B, T+1) loss mask, 'segment_ids' and 'positions'
    (B, T+1); inputs are the first T, targets and their mask the last T.
    """
    def loss_fn(params, batch, rng):
        rngs = {"dropout": rng} if dropout and rng is not None else None
        logits = model.apply({"params": params}, batch["tokens"][:, :-1],
                             positions=batch["positions"][:, :-1],
                             segment_ids=batch["segment_ids"][:, :-1],
                             deterministic=rngs is None, rngs=rngs)
        return losses.sft_loss(logits, batch["tokens"][:, 1:], batch["weights"][:, 1:]), {}
    return loss_fn


def stage(config: ml_collections.ConfigDict, cfg: GPTConfig) -> trainer.Stage:
    """The SFT stage of model `cfg` on packed batches, without data or a start: what
    `gptjax.aot` compiles (the full model, no LoRA)."""
    seq_len = config_lib.seq_len(config)
    model = GPT(cfg)
    return supervised.loss_stage(
        config, "sft", lambda r: model.init(r, jnp.zeros((1, seq_len), jnp.int32))["params"],
        sft_loss_fn(model, dropout=cfg.dropout > 0),
        tokens_per_step=config.train.batch_size * seq_len,
        flops_per_token=cfg.flops_per_token(seq_len),
        num_params=cfg.num_params(non_embedding=False))


def run(config: ml_collections.ConfigDict, workdir: str) -> trainer.RunResult:
    s = finetune.start(config, workdir)
    tcfg, seq_len = config.train, config_lib.seq_len(config)
    train, weights, val, stats = sft_data.load(
        config.data.root, config.data.mixture, s.tokenizer, seq_len, config.data.val_fraction,
        config.data.format)
    workdir_lib.write_json(workdir, "data_stats.json",
                           {k: {**dataclasses.asdict(v), "kept": v.kept()}
                            for k, v in stats.items()})
    if jax.process_index() == 0:
        for name, st in stats.items():
            print(f"sft data {name}: {st.kept()} of {st.conversations} conversations "
                  f"({st.cut} cut to fit {seq_len + 1} tokens, {st.too_long} too long, "
                  f"{st.unencodable} not encodable)", flush=True)
            for kind, n in st.rejected.items():  # rows of the user's files that were skipped
                print(f"sft data {name}: {n} rows rejected as {kind}, the first at "
                      f"{st.first_rejected[kind]}", flush=True)
    model = GPT(s.cfg)
    pidx, pcount = jax.process_index(), jax.process_count()
    train_it = sft_data.train_iterator(train, weights, seq_len, tcfg.batch_size, config.seed,
                                       pidx, pcount)
    val_set = sft_data.val_batches(val, seq_len, tcfg.batch_size, tcfg.eval_batches, pidx, pcount)
    tune = tuning.make(config, workdir, model, (jnp.zeros((1, seq_len), jnp.int32),), s.params,
                       lambda: s.params, s.init_step)
    return trainer.fit(config, workdir, supervised.loss_stage(
        config, "sft", tune.init, tune.wrap(sft_loss_fn(model, dropout=s.cfg.dropout > 0)),
        data=trainer.Data.of_iterator(train_it), val=val_set, initial=tune.initial,
        frozen=tune.frozen, tokens_per_step=tcfg.batch_size * seq_len,
        flops_per_token=tune.flops_per_token(s.cfg.flops_per_token(seq_len)),
        num_params=s.cfg.num_params(non_embedding=False), describe=tune.describe()))
