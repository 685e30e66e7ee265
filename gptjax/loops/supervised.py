"""A `trainer.Stage` from a loss function: what pretraining, SFT and the reward model share.

The state is a `step.TrainState` (parameters + AdamW moments), the step is `step.make_train_step`
of the loss (gradient accumulation inside), the evaluation is the mean loss (and its aux
metrics) over a fixed validation stack. A stage differs only in its loss, data and start, and
in the frozen models its loss reads (DPO's reference, a LoRA base), if any.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from gptjax import step as step_lib
from gptjax.loops import trainer
from gptjax.optim import lr_schedule, make_optimizer


def loss_stage(config: ml_collections.ConfigDict, name: str,
               init_params: Callable[[jax.Array], Any], loss_fn: step_lib.LossFn, *,
               data: trainer.Data | None = None, val: Any = None,
               initial: Callable[[], Any] | None = None, frozen: trainer.Frozen | None = None,
               eval_report: Callable[..., Any] | None = None, eval_at_start: bool = False,
               tokens_per_step: int = 0, flops_per_token: float = 0.0, num_params: int = 0,
               describe: str = "") -> trainer.Stage:
    """The stage of `loss_fn(params, batch, rng) -> (loss, aux)`, or of
    `loss_fn(params, batch, rng, frozen)` when `frozen` models are given (only `params` train).

    init_params(rng): parameters boxed with logical axis names (a from-scratch start and the
    layout); initial(): host parameters to fine-tune from instead (fresh optimizer moments);
    val: the validation stack (n, rows, ...) as this process's rows, or None; eval_report:
    `trainer.Eval.report` for it (None logs every output as val_<name>).
    """
    tcfg = config.train
    tx = make_optimizer(config.optim)
    start = None
    if initial is not None:
        start = lambda params: step_lib.train_state(params, tx)  # noqa: E731
    elif frozen is not None:  # trains new parameters (LoRA adapters) on frozen ones
        start = lambda _: step_lib.train_state(  # noqa: E731
            nn.unbox(init_params(jax.random.key(config.seed))), tx)

    def make_step(layout: trainer.Layout):
        return step_lib.make_train_step(
            loss_fn, tx, lr_schedule(config.optim), config.seed, tcfg.grad_accum, layout.mesh,
            layout.rules, gather_weights=config.sharding.gather_weights,
            param_shardings=layout.shardings.params)

    return trainer.Stage(
        name=name, init=lambda rng: step_lib.train_state(init_params(rng), tx),
        make_step=make_step, rows=tcfg.batch_size // tcfg.grad_accum,
        rows_key="train.batch_size", rows_multiple=tcfg.grad_accum, data=data,
        start=start, initial=initial, frozen=frozen,
        eval=None if val is None else trainer.Eval(
            make=lambda layout: step_lib.make_eval_step(loss_fn), data=val, leading=1,
            report=eval_report, at_start=eval_at_start),
        tokens_per_step=tokens_per_step, flops_per_token=flops_per_token,
        num_params=num_params, describe=describe)
