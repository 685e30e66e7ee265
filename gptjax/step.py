"""The train state and the pure `train_step(state, batch) -> (state, metrics)` of a loss.

Shared by every stage that trains a network on a loss: a stage supplies its loss function
`loss_fn(params, batch, rng) -> (loss, aux_metrics)`; nothing here knows about LM batches. The
trainer (gptjax/loops/trainer.py) lays the state out, jits the step and runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gptjax import sharding

# loss_fn(params, batch, rng[, frozen]) -> (loss, aux metrics); `frozen`: the stage's frozen
# models (a trainer.Frozen pytree: a reference model, a LoRA base), never differentiated.
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any


def train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """The step-0 state around parameters: fresh optimizer moments. Given parameters boxed with
    logical axis names (flax Partitioned), the moments inherit the boxes, so one pass of the rules
    lays out parameters and moments alike (see `trainer.abstract_layout`)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def shardings_of(abstract: Any) -> Any:
    return jax.tree.map(lambda s: s.sharding, abstract)


def _split_micro(x: jax.Array, n: int, mesh: Mesh, rules: sharding.Rules) -> jax.Array:
    """(B, ...) -> (n, B/n, ...) taking rows with stride n, so every micro-batch stays spread over
    the batch-sharded devices instead of living on 1/n of them."""
    y = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    spec = P(None, sharding.batch_axes(rules), *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    seed: int, grad_accum: int, mesh: Mesh, rules: sharding.Rules):
    """The pure step. Gradients of `grad_accum` micro-batches are averaged in a lax.scan, so one
    call is one optimizer step whatever the accumulation. Dropout keys: fold(seed, step, micro).
    A stage with frozen models gets step(state, batch, frozen), and its loss loss_fn(params,
    batch, rng, frozen): gradients are of `params` only."""
    base_key = jax.random.key(seed)

    def step_fn(state: TrainState, batch: Any, *frozen: Any
                ) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(base_key, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(state.params, batch, key, *frozen)
        else:
            micro = jax.tree.map(lambda x: _split_micro(x, grad_accum, mesh, rules), batch)

            def body(carry, xs):
                i, mb = xs
                (l, a), g = grad_fn(state.params, mb, jax.random.fold_in(key, i), *frozen)
                acc_g, acc_l, acc_a = carry
                return (jax.tree.map(jnp.add, acc_g, g), acc_l + l,
                        jax.tree.map(jnp.add, acc_a, a)), None

            (_, aux_shape), _ = jax.eval_shape(
                grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), key, *frozen)
            zeros = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
                     jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape))
            (grads, loss, aux), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
            loss, aux = loss / grad_accum, jax.tree.map(lambda a: a / grad_accum, aux)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state.step), **aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step_fn


def make_eval_step(loss_fn: LossFn):
    """eval(state, batches (n, B, ...)[, frozen]) -> {'loss': mean, **{name: mean}}: the
    forward-only loss and aux metrics of the state's parameters over a stack of batches, in one
    program (no dropout).

    One dispatch for the whole validation set: besides saving n-1 launches, this keeps
    independent collective programs from being in flight together, which XLA:CPU's multi-device
    runtime can deadlock on.
    """
    def eval_fn(state, batches, *frozen):
        def one(b):
            loss, aux = loss_fn(state.params, b, None, *frozen)
            return {"loss": loss, **aux}
        return jax.tree.map(jnp.mean, jax.lax.map(one, batches))
    return eval_fn


def all_finite(tree: Any) -> jax.Array:
    """One boolean: every leaf of the tree is free of NaN and inf."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))
