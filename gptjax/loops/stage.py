"""The stage contract: what a stage (pretrain, SFT, reward, PPO, ...) hands the one trainer.

A stage supplies only what is its own: how to build its step-0 state (`init`; `start` from given
parameters when it fine-tunes), its pure step `(state, batch) -> (state, metrics)` (or a few
`Phase`s), the batch of step i (`Data`), the models it reads but never trains (`Frozen`), an
optional evaluation (`Eval`), and which metrics must stay finite. Everything else (mesh, layout,
jit, restore-or-init, the loop, logging, signals, NaN checks, checkpoints) is the trainer's
(gptjax/loops/trainer.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from gptjax import sharding


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a stage's arrays live: the mesh, the logical-name rules and (once the trainer has
    laid the state out) the state's shardings."""

    mesh: Mesh
    rules: sharding.Rules
    shardings: Any = None  # the state's NamedShardings (a pytree like the state)


@dataclasses.dataclass
class Phase:
    """One jitted part of a step: fn(state, carry[, frozen]) -> carry. The first phase's carry is
    the batch and the last phase returns (state, metrics). On logged steps the trainer times the
    phases apart (metrics `time_<name>`); otherwise they run back to back without a host sync.

    host=True: a phase that runs on the host between two jitted ones (e.g. a program that checks
    answers): fn(carry as numpy, the whole global batch) -> {name: numpy array leading with the
    rows}, which the trainer places over the data axes and merges into the (dict) carry. It syncs
    every step; the same values must come out in every process. `shapes(carry)`: what it returns
    as jax.ShapeDtypeStructs, given the carry's, so that an ahead-of-time compile (gptjax.aot)
    can go past it without running it."""

    name: str
    fn: Callable[..., Any]
    host: bool = False
    shapes: Callable[[Any], Any] | None = None


@dataclasses.dataclass
class Data:
    """The batch of step i: this process's rows, a pytree of numpy arrays whose every leaf leads
    with the rows. `iterator`: the checkpointable grain iterator behind `batch`, saved with the
    state (None when the batch is a pure function of the step and needs no saving).
    `position_global`: the iterator's state is the next global batch index, so it carries over
    to a run with another number of processes (see `Checkpointer.restore`)."""

    batch: Callable[[int], Any]
    iterator: Any = None
    position_global: bool = False

    @classmethod
    def of_iterator(cls, it: Any, position_global: bool = False) -> Data:
        return cls(lambda _: next(it), it, position_global)


@dataclasses.dataclass
class Frozen:
    """Models a stage reads but never trains (PPO's reference and reward model), laid out by the
    same logical rules as the state, placed on the devices once and passed to every step and
    evaluation as their last argument."""

    init: Callable[[jax.Array], Any]  # rng -> pytree boxed with logical names (shapes only)
    load: Callable[[], Any]  # -> the host values


@dataclasses.dataclass
class Eval:
    """An evaluation on every `train.eval_every`-th step and the last one."""

    make: Callable[[Layout], Callable[..., Any]]  # -> pure fn(state, data[, frozen]) -> outputs
    data: Any  # host pytree: this process's rows (fixed for the run)
    leading: int = 1  # dimensions before the rows in `data` (1 for an (n, rows, ...) stack)
    # host: (step, outputs as numpy) -> scalars to log; None logs every output as val_<name>
    report: Callable[[int, dict[str, np.ndarray]], dict[str, float]] | None = None
    at_start: bool = False  # also before the first step of a fresh run (logged as step 0)


def _params(state: Any) -> Any:
    return state.params


@dataclasses.dataclass
class Stage:
    """What a stage hands the trainer."""

    name: str
    init: Callable[[jax.Array], Any]  # rng -> step-0 state, parameters boxed with logical names
    make_step: Callable[[Layout], Callable[..., Any] | tuple[Phase, ...]]  # the pure step
    rows: int  # rows of a global batch: they split over the data-parallel devices
    rows_key: str = "train.batch_size"  # the config key that sets them (for the error message)
    rows_multiple: int = 1  # the key's value is rows * this (e.g. train.grad_accum)
    data: Data | None = None  # None: compile only (benchmarks, notebooks)
    frozen: Frozen | None = None
    # A fine-tuning start: start(params) -> step-0 state, pure; params = initial() laid out as the
    # state's `params`, or the frozen models when there is no `initial`. None: init(config.seed).
    start: Callable[[Any], Any] | None = None
    initial: Callable[[], Any] | None = None
    eval: Eval | None = None
    finite: tuple[str, ...] = ("loss",)  # metrics that must stay finite
    checked: Callable[[Any], Any] = _params  # what of the state must be finite to be saved
    show: tuple[str, ...] = ("loss",)  # metrics on the progress bar
    tokens_per_step: int = 0
    flops_per_token: float = 0.0  # 0: no MFU
    num_params: int = 0
    describe: str = ""  # the banner's stage-specific part
    fix_divergence: str = ("Lower optim.lr, raise optim.warmup_steps or set optim.grad_clip, "
                           "then rerun to resume from it.")
