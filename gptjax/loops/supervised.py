"""A `trainer.Stage` from a loss function: what pretraining, SFT and the reward model share.

The state is a `step.TrainState` (parameters + AdamW moments), the step is `step.make_train_step`
of the loss (gradient accumulation inside), the evaluation is the mean loss (and its aux
metrics) over a fixed validation stack. A stage differs only in its loss, data and start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from gptjax import step as step_lib
from gptjax.loops import trainer
from gptjax.optim import lr_schedule, make_optimizer


def loss_stage(config: ml_collections.ConfigDict, name: str,
               init_params: Callable[[jax.Array], Any], loss_fn: step_lib.LossFn, *,
               data: trainer.Data | None = None, val: Any = None,
               initial: Callable[[], Any] | None = None, tokens_per_step: int = 0,
               flops_per_token: float = 0.0, num_params: int = 0) -> trainer.Stage:
    """The stage of `loss_fn(params, batch, rng) -> (loss, aux)`.

    init_params(rng): parameters boxed with logical axis names (a from-scratch start and the
    layout); initial(): host parameters to fine-tune from instead (fresh optimizer moments);
    val: the validation stack (n, rows, ...) as this process's rows, or None.
    """
    tcfg = config.train
    tx = make_optimizer(config.optim)

    def make_step(layout: trainer.Layout):
        return step_lib.make_train_step(
            loss_fn, tx, lr_schedule(config.optim), config.seed, tcfg.grad_accum, layout.mesh,
            layout.rules, gather_weights=config.sharding.gather_weights,
            param_shardings=layout.shardings.params)

    return trainer.Stage(
        name=name, init=lambda rng: step_lib.train_state(init_params(rng), tx),
        make_step=make_step, rows=tcfg.batch_size // tcfg.grad_accum,
        rows_key="train.batch_size", rows_multiple=tcfg.grad_accum, data=data,
        start=None if initial is None else (lambda params: step_lib.train_state(params, tx)),
        initial=initial,
        eval=None if val is None else trainer.Eval(
            make=lambda layout: step_lib.make_eval_step(loss_fn), data=val, leading=1),
        tokens_per_step=tokens_per_step, flops_per_token=flops_per_token,
        num_params=num_params)
