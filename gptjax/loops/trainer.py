"""The training loop every stage shares; a stage differs only in its loss, data and init.

A stage builds a `Compiled` (mesh, the jitted step and eval for its loss function, the state's
layout) with `compile_stage`, makes its grain iterator and validation stack, and calls `fit`.
`fit` does the rest the same way for pretraining, SFT and the reward model: resume from the
latest checkpoint exactly (state + data position), host-side metrics one step late, NaN checks
that never save bad parameters, periodic validation, async checkpoints, SIGINT/SIGTERM saving,
tokens/s and MFU, a progress bar.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gptjax import config as config_lib
from gptjax import sharding, step as step_lib
from gptjax.checkpoint import Checkpointer
from gptjax.data.tokenizer import save_tokenizer
from gptjax.errors import GptjaxError, TrainingDiverged
from gptjax.metrics import MetricsWriter, Progress, peak_flops_per_device
from gptjax.optim import lr_schedule, make_optimizer


@dataclasses.dataclass
class Compiled:
    """What a stage compiles from its config alone (no data, no workdir): benchmarks and
    notebooks use it to drive the real train step."""

    mesh: Any
    rules: Any
    tx: Any
    make_state: Any  # rng -> sharded TrainState (jitted), parameters from the stage's init
    abstract: Any  # abstract TrainState with shardings
    batch_sharding: Any  # for every leaf of a batch: the leading (batch) dim over the data axes
    train_step: Any  # jitted (state, batch) -> (state, metrics); donates state
    eval_step: Any  # jitted (params, stacked batches (n, B, ...)) -> {'loss', **aux} means

    def state_from_params(self, params: Any) -> step_lib.TrainState:
        """A step-0 state around given parameters (fine-tuning): fresh optimizer moments."""
        shardings = step_lib.shardings_of(self.abstract)
        params = jax.device_put(params, shardings.params)
        return jax.jit(lambda p: step_lib.TrainState(
            step=jax.numpy.zeros((), jax.numpy.int32), params=p, opt_state=self.tx.init(p)),
            out_shardings=shardings)(params)


def compile_stage(config: ml_collections.ConfigDict, init_params: Callable[[jax.Array], Any],
                  loss_fn: step_lib.LossFn, devices: Any = None) -> Compiled:
    """Mesh, optimizer, sharded state layout and the jitted steps for one loss function.

    `init_params(rng)` returns parameters boxed with logical axis names (flax Partitioned);
    `loss_fn(params, batch, rng)` -> (scalar loss, {name: scalar}); rng is None in evaluation.
    """
    config_lib.validate(config)
    tcfg = config.train
    mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
    rules = sharding.rules_from_config(config.sharding.rules)
    micro_batch = tcfg.batch_size // tcfg.grad_accum
    ways = sharding.batch_divisor(mesh, rules)
    if micro_batch % ways:
        raise GptjaxError(
            f"the batch ({tcfg.batch_size} sequences / grad_accum {tcfg.grad_accum} = "
            f"{micro_batch} per micro-step) does not divide over the {ways} data-parallel "
            f"devices of mesh {dict(mesh.shape)}. Make train.batch_size a multiple of "
            f"{ways * tcfg.grad_accum}.")
    tx = make_optimizer(config.optim)
    make_state, abstract = step_lib.state_layout(
        init_params, tx, jax.random.key(config.seed), mesh, rules)
    shardings = step_lib.shardings_of(abstract)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(loss_fn, tx, lr_schedule(config.optim), config.seed,
                                 tcfg.grad_accum, mesh, rules),
        shardings, batch_sharding, mesh)
    eval_step = step_lib.jit_eval_step(loss_fn, shardings.params, mesh, rules)
    return Compiled(mesh, rules, tx, make_state, abstract, batch_sharding, train_step, eval_step)


def write_run_files(config: ml_collections.ConfigDict, workdir: str, tokenizer: Any) -> None:
    """The workdir's tokenizer.json and resolved config.json (process 0), which every command
    that reads a workdir back (sample, chat, convert, init_from) relies on."""
    if jax.process_index() != 0:
        return
    save_tokenizer(tokenizer, os.path.join(workdir, "tokenizer.json"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))


@dataclasses.dataclass
class RunResult:
    state: Any
    step: int
    val_loss: float | None
    interrupted_by: int | None  # signal number when stopped early by SIGINT/SIGTERM
    val_metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step and returns."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class _AgreedStop:
    """The signal that stops the run, agreed by every process at the same step.

    Processes may receive SIGINT/SIGTERM a step apart; if each stopped on its own, their
    collectives (the next step, the checkpoint) would no longer match and the run would hang. So
    a multi-process run also takes the max of the processes' signal numbers after each step, read
    one step late like the metrics: every process stops after the same step.
    """

    def __init__(self, flag: _StopFlag, mesh: Any):
        self.flag = flag
        self.agreed: int | None = None
        self.multi = jax.process_count() > 1
        self._pending = None
        if self.multi:
            self._spec = NamedSharding(mesh, P(tuple(mesh.axis_names)))  # one int per device
            self._max = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))

    @property
    def signum(self) -> int | None:
        return self.agreed if self.multi else self.flag.signum

    def after_step(self) -> None:
        """Call once per step, right after dispatching it."""
        if not self.multi:
            return
        previous = self._pending
        local = np.full((jax.local_device_count(),), self.flag.signum or 0, np.int32)
        self._pending = self._max(jax.make_array_from_process_local_data(self._spec, local))
        if previous is not None and int(previous):
            self.agreed = int(previous)


class Saver:
    """Checkpoint saves that never write non-finite parameters; `last` is the newest saved step."""

    def __init__(self, ckpt: Checkpointer, finite: Callable[[Any], Any], last: int | None):
        self.ckpt, self.finite, self.last = ckpt, finite, last

    def save(self, step: int, state: Any, *items: Any) -> None:
        if not bool(self.finite(state)):
            raise TrainingDiverged(
                f"the parameters hold NaN/inf at step {step}. {self.ckpt.describe(self.last)}. "
                "Lower optim.lr and rerun.")
        self.ckpt.save(step, state, *items)
        self.last = step


def run_steps(step: int, steps: int, mesh: Any, rules: Any, *, advance: Callable[[int], Any],
              finish: Callable[[int, Any], None], at_step: Callable[[int, Any], bool],
              save: Callable[[int], None], saver: Saver, window: dict[str, float],
              note: Callable[[str], None]) -> tuple[int, int | None]:
    """The loop every stage runs: steps until `steps` or an agreed SIGINT/SIGTERM ->
    (the step reached, the signal or None).

    advance(s) dispatches one step from state s (the steps already taken) and returns its
    metrics (device arrays). Their host side, finish(s, metrics), runs one step late, so the
    host reads step s while step s + 1 runs, except where at_step(s, metrics) returns True: it
    handled step s at once (evaluation, checkpoint). The first step's compilation and each such step's work are kept out of the
    tokens/s `window`. On a signal every process stops after the same step and saves it.
    """
    start, pending = step, None
    with _StopFlag() as flag, step_lib.activated(mesh, rules):
        stop = _AgreedStop(flag, mesh)
        while step < steps and stop.signum is None:
            metrics = advance(step)
            step += 1
            stop.after_step()
            if step == start + 1:  # keep compilation out of the first tokens/s window
                jax.block_until_ready(metrics)
                window.update(t0=time.perf_counter(), step0=step)
            if pending is not None:
                finish(*pending)  # the previous step's metrics, read while this one runs
                pending = None
            if at_step(step, metrics):
                window.update(t0=time.perf_counter(), step0=step)
            else:
                pending = (step, metrics)
        if pending is not None:
            finish(*pending)
        if stop.signum is not None and saver.last != step:
            note(f"signal {stop.signum}: saving step {step} before exiting")
            save(step)
    return step, stop.signum


def fit(config: ml_collections.ConfigDict, workdir: str, c: Compiled,
        train_it: Iterator[Any], val_set: Any, *, stage: str, tokens_per_step: int,
        flops_per_token: float, num_params: int,
        initial_params: Callable[[], Any] | None = None,
        data_position_global: bool = False) -> RunResult:
    """Train `config.train.steps` optimizer steps (resuming from the workdir's latest checkpoint).

    train_it: checkpointable grain iterator of this process's rows of each batch (a pytree of
    numpy arrays with the batch first); val_set: the same pytree stacked (n, rows, ...), or None.
    initial_params: loader of the starting parameters for a fresh run (fine-tuning); None
    initialises them from `config.seed`. It is not called when a checkpoint is resumed.
    data_position_global: the iterator's state is the next global batch index, so it carries
    over to a run with another number of processes (see `Checkpointer.restore`).
    """
    tcfg = config.train
    mesh, rules = c.mesh, c.rules
    is_chief = jax.process_index() == 0
    ckpt = Checkpointer(workdir, tcfg.keep_checkpoints, tcfg.async_checkpoint)
    restored = ckpt.restore_latest(c.abstract, train_it, data_position_global, tcfg.resume)
    latest = None if restored is None else restored[0]
    if restored is not None:
        state = restored[1]
    elif initial_params is not None:
        state = c.state_from_params(initial_params())
    else:
        state = c.make_state(jax.random.key(config.seed))
    if val_set is not None:
        val_set = sharding.global_batch(val_set, sharding.batch_sharding(mesh, rules, leading=1))

    def evaluate(params) -> dict[str, float]:
        means = jax.device_get(c.eval_step(params, val_set))
        return {f"val_{k}": float(v) for k, v in means.items()}

    peak, peak_source = peak_flops_per_device()
    peak_total = peak * jax.device_count()
    step = int(jax.device_get(state.step))
    start_step = step
    progress = Progress(tcfg.steps, step, enabled=tcfg.progress and is_chief)
    writer = MetricsWriter(workdir, enabled=is_chief)
    if is_chief:
        progress.write(
            f"gptjax {stage}: {num_params / 1e6:.2f}M params, mesh {dict(mesh.shape)} on "
            f"{jax.device_count()} {jax.devices()[0].platform} devices"
            + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + f", {tokens_per_step} tokens/step, peak {peak / 1e9:.0f} GFLOP/s per device "
            f"({peak_source}); "
            + (f"resumed at step {step}" if latest is not None
               else "fine-tuning" if initial_params is not None else "from scratch"))

    saver = Saver(ckpt, jax.jit(lambda st: step_lib.all_finite(st.params)), latest)
    val_metrics: dict[str, float] = {}
    window = {"t0": time.perf_counter(), "step0": step}

    def finish_step(s: int, metrics: Any, extra: dict[str, float] | None = None) -> None:
        """Host side of step s (one step late): NaN check, logging, progress."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["loss"]):
            raise TrainingDiverged(
                f"the loss became {m['loss']} at step {s}. {ckpt.describe(saver.last)}. Lower "
                "optim.lr, raise optim.warmup_steps or set optim.grad_clip, then rerun to resume "
                "from it.")
        if s % tcfg.log_every == 0 or extra or s == tcfg.steps:
            now = time.perf_counter()
            done = s - window["step0"]
            if done > 0:
                tps = done * tokens_per_step / (now - window["t0"])
                m.update(tokens_per_sec=tps, mfu=tps * flops_per_token / peak_total)
            writer.write(s, {**m, **(extra or {})})
            window.update(t0=now, step0=s)
            progress.update(s, loss=f"{m['loss']:.4f}", tok_s=f"{m.get('tokens_per_sec', 0):.0f}")
        else:
            progress.update(s)

    def advance(_: int) -> Any:
        nonlocal state
        batch = sharding.global_batch(next(train_it), c.batch_sharding)
        state, metrics = c.train_step(state, batch)
        return metrics

    def save(s: int) -> None:
        saver.save(s, state, train_it)

    def at_step(s: int, metrics: Any) -> bool:
        """Evaluation and checkpoint steps: their metrics are read now, not one step late."""
        nonlocal val_metrics
        evaluate_now = val_set is not None and (s % tcfg.eval_every == 0 or s == tcfg.steps)
        checkpoint_now = s % tcfg.checkpoint_every == 0 or s == tcfg.steps
        if not (evaluate_now or checkpoint_now or s % tcfg.eval_every == 0):
            return False
        if evaluate_now:
            val_metrics = evaluate(state.params)
        finish_step(s, metrics, val_metrics if evaluate_now else None)
        if checkpoint_now:
            save(s)
        return True

    t_start = time.perf_counter()
    try:
        step, signum = run_steps(step, tcfg.steps, mesh, rules, advance=advance,
                                 finish=finish_step, at_step=at_step, save=save, saver=saver,
                                 window=window, note=progress.write if is_chief else print_nothing)
        ckpt.wait()
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    wall = time.perf_counter() - t_start
    val_loss = val_metrics.get("val_loss")
    if is_chief:
        msg = f"stopped at step {step} after {step - start_step} steps in {wall:.1f}s"
        msg += "".join(f"; {k} {v:.4f}" for k, v in val_metrics.items())
        print(msg, flush=True)
    return RunResult(state=state, step=step, val_loss=val_loss, interrupted_by=signum,
                     val_metrics=val_metrics)


def print_nothing(_: str) -> None:
    """The `note` of a process that does not report (every one but process 0)."""
