"""The train state and the pure `train_step(state, batch) -> (state, metrics)` of a loss.

Shared by every stage that trains a network on a loss: a stage supplies its loss function
`loss_fn(params, batch, rng) -> (loss, aux_metrics)`; nothing here knows about LM batches. The
trainer (gptjax/loops/trainer.py) lays the state out, jits the step and runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gptjax import sharding
from gptjax.errors import GptjaxError

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


GATHER_WEIGHTS = ("per_step", "per_micro_step")


def mean_over_rows(loss_fn: LossFn) -> LossFn:
    """Mark a loss as the mean over the batch's rows of a term that depends on its own row only,
    with equal weights (the LM loss: every row has T tokens), so L(batch) = mean_d L(shard_d) over
    equal row shards. make_train_step may then take its gradient shard by shard on each device
    and reduce it once per optimizer step. A masked token mean (SFT) is not such a loss: each
    shard's mean would weigh its own tokens."""
    loss_fn.mean_over_rows = True
    return loss_fn


def batch_mesh_axes(mesh: Mesh, rules: sharding.Rules) -> tuple[str, ...]:
    """The mesh axes of size > 1 that the batch is split over (data, fsdp), in mesh order."""
    ax = sharding.batch_axes(rules)
    ax = () if ax is None else (ax,) if isinstance(ax, str) else tuple(ax)
    return tuple(a for a in mesh.axis_names if a in ax and mesh.shape[a] > 1)


def gather_over_batch_axes(tree: Any, mesh: Mesh, rules: sharding.Rules) -> Any:
    """Every leaf made whole over the batch mesh axes, its other splits (tensor) kept: one
    all-gather per fsdp-sharded leaf, nothing for the others. An identity shard_map over just
    those axes, replicated in and out, says so without knowing each leaf's partition spec."""
    names = batch_mesh_axes(mesh, rules)
    if not names:
        return tree
    return jax.shard_map(lambda t: t, mesh=mesh, in_specs=P(), out_specs=P(),
                         axis_names=set(names))(tree)


def _sums(grad_fn, params: Any, batch: Any, key: jax.Array, grad_accum: int,
          split: Callable[[jax.Array], jax.Array], like: Any, vary: Callable = lambda t: t):
    """(sum of gradients, sum of losses, sum of aux) over the micro-batches `split` cuts from the
    batch, in a lax.scan; one plain call when grad_accum is 1. Dropout keys: fold(key, micro).
    The gradient accumulator is laid out like `like` (the sharded parameters, or whole ones);
    `vary` types the loss and metric zeros as per-device values inside a shard_map."""
    if grad_accum == 1:
        (loss, aux), grads = grad_fn(params, batch, key)
        return grads, loss, aux
    micro = jax.tree.map(split, batch)

    def body(carry, xs):
        i, mb = xs
        (l, a), g = grad_fn(params, mb, jax.random.fold_in(key, i))
        acc_g, acc_l, acc_a = carry
        return (jax.tree.map(jnp.add, acc_g, g), acc_l + l,
                jax.tree.map(jnp.add, acc_a, a)), None

    (_, aux_shape), _ = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), key)
    zeros = (jax.tree.map(jnp.zeros_like, like), *vary(
        (jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                  aux_shape))))
    (grads, loss, aux), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
    return grads, loss, aux


def _local_rules(rules: sharding.Rules, manual: tuple[str, ...]) -> list[tuple[str, Any]]:
    """The rules with the manual (per-device) axes taken out: inside the shard_map a device's
    rows are its whole batch, so activation constraints may name only the other axes."""
    def strip(physical):
        if isinstance(physical, (tuple, list)):
            kept = tuple(a for a in physical if a not in manual)
            return kept or None
        return None if physical in manual else physical
    return [(logical, strip(physical)) for logical, physical in rules]


def _scatter_spec(spec: P | None, manual: tuple[str, ...]) -> P:
    """The manual (batch) axes of a parameter's partition spec, dim by dim: where its gradient
    is reduce-scattered to (P() when the parameter is whole over them)."""
    if spec is None:
        return P()
    dims = []
    for entry in spec:
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        kept = tuple(a for a in names if a in manual)
        dims.append(kept if len(kept) > 1 else kept[0] if kept else None)
    return P(*dims)


def _reduce(x: jax.Array, spec: P, manual: tuple[str, ...]) -> jax.Array:
    """Sum a per-device value over the manual axes, leaving it sharded as `spec` says: a
    reduce-scatter over the axes the parameter is split on, then an all-reduce of that shard
    over the rest (data, in a data x fsdp mesh)."""
    scattered = []
    for dim, entry in enumerate(spec):
        if entry is not None:
            names = (entry,) if isinstance(entry, str) else tuple(entry)
            x = jax.lax.psum_scatter(x, names, scatter_dimension=dim, tiled=True)
            scattered += names
    rest = tuple(a for a in manual if a not in scattered)
    return jax.lax.psum(x, rest) if rest else x


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    seed: int, grad_accum: int, mesh: Mesh, rules: sharding.Rules,
                    gather_weights: str = "per_step", param_shardings: Any = None):
    """The pure step. Gradients of `grad_accum` micro-batches are averaged in a lax.scan, so one
    call is one optimizer step whatever the accumulation. Dropout keys: fold(seed, step, micro).

    Where the weights are gathered over the batch axes (fsdp), `gather_weights`:
      per_step        each weight is all-gathered once per optimizer step and held through the
                      accumulation (memory: one whole copy of the parameters per device, divided
                      by the tensor ways). For a loss marked `mean_over_rows`, each device then
                      accumulates the gradient of its own rows, g_d = sum_i grad L(mb_i,d), and
                      the step reduces once: g = sum_d g_d / (k n_d), one reduce-scatter of the
                      parameter bytes onto the parameters' shards (an all-reduce for whole ones;
                      memory: a whole gradient copy per device too). The shards come from
                      `param_shardings` (the trainer passes the state's); without them the
                      reduction is an all-reduce. Dropout masks differ from per_micro_step's
                      (each device folds its index into the key). Any other loss keeps the
                      global gradient of every micro-batch (reduced each micro-step), with the
                      weights still gathered once.
      per_micro_step  the weights stay sharded and XLA gathers them where it uses them: in every
                      micro-step's forward and backward; gradients are reduced (scattered) each
                      micro-step into the sharded accumulator. Least memory.
    With one device on the batch axes both are the same program.

    A stage with frozen models gets step(state, batch, frozen), and its loss loss_fn(params,
    batch, rng, frozen): gradients are of `params` only.
    """
    if gather_weights not in GATHER_WEIGHTS:
        raise GptjaxError(f"sharding.gather_weights={gather_weights!r} is unknown; use one of "
                          f"{GATHER_WEIGHTS}")
    base_key = jax.random.key(seed)
    manual = batch_mesh_axes(mesh, rules)
    per_device = bool(manual) and gather_weights == "per_step" and getattr(
        loss_fn, "mean_over_rows", False)

    def grads_of(frozen: tuple):
        # d loss / d params; the frozen models (none, or a trainer.Frozen pytree) are constants
        return jax.value_and_grad(lambda p, b, k: loss_fn(p, b, k, *frozen), has_aux=True)

    def global_grads(params, batch, key, sharded, frozen):
        # Each micro-batch's gradient is reduced as XLA sees fit, into an accumulator sharded
        # like the parameters.
        grads, loss, aux = _sums(grads_of(frozen), params, batch, key, grad_accum,
                                 lambda x: _split_micro(x, grad_accum, mesh, rules), sharded)
        if grad_accum == 1:
            return grads, loss, aux
        grads = jax.tree.map(lambda g: g / grad_accum, grads)
        return grads, loss / grad_accum, jax.tree.map(lambda a: a / grad_accum, aux)

    def local_grads(params, batch, key, sharded, frozen):
        n = grad_accum * math.prod(mesh.shape[a] for a in manual)
        specs = jax.tree.map(lambda _: P(), params) if param_shardings is None else jax.tree.map(
            lambda sh: _scatter_spec(sh.spec, manual), param_shardings)

        def per_device_sums(params, batch, key, frozen):
            # Typed per-device before differentiating: the gradient is then this device's own
            # (an invariant input would have its cotangent summed over devices right away).
            def vary(tree):
                return jax.tree.map(lambda x: jax.lax.pcast(x, manual, to="varying"), tree)
            params = vary(params)
            key = jax.random.fold_in(key, jax.lax.axis_index(manual))
            with nn.logical_axis_rules(_local_rules(rules, manual)):
                grads, loss, aux = _sums(
                    grads_of(frozen), params, batch, key, grad_accum, lambda x: x.reshape(
                        x.shape[0] // grad_accum, grad_accum, *x.shape[1:]).swapaxes(0, 1),
                    params, vary)
            # The one reduction of the step. A device's rows are the shards of the global-view
            # micro-batches it would have held, so the same rows meet in the same micro-step.
            grads = jax.tree.map(lambda g, sp: _reduce(g, sp, manual) / n, grads, specs)
            return grads, *jax.tree.map(lambda x: jax.lax.psum(x, manual) / n, (loss, aux))

        batch_spec = jax.tree.map(lambda x: P(manual), batch)
        # (frozen models enter whole, like the gathered weights)
        return jax.shard_map(per_device_sums, mesh=mesh,
                             in_specs=(P(), batch_spec, P(), P()),
                             out_specs=(specs, P(), P()), axis_names=set(manual))(
                                 params, batch, key, frozen)

    def step_fn(state: TrainState, batch: Any, *frozen: Any
                ) -> tuple[TrainState, dict[str, jax.Array]]:
        key = jax.random.fold_in(base_key, state.step)
        params = state.params
        if gather_weights == "per_step":
            params = gather_over_batch_axes(params, mesh, rules)
        grads, loss, aux = (local_grads if per_device else global_grads)(
            params, batch, key, state.params, frozen)
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
