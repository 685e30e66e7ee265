"""The one training loop. Every stage (pretrain, SFT, reward, PPO, ...) hands `fit` a `Stage`
(gptjax/loops/stage.py: its state, step, data, frozen models, eval, finite metrics).

The trainer owns the rest, alike for every stage: the mesh and the divisibility checks, the
state's sharded layout from `eval_shape` (the state is born sharded), the jit with shardings and
donation, restore-or-init, the loop, host-side metrics read one step late, progress,
SIGINT/SIGTERM, NaN checks and checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gptjax import config as config_lib
from gptjax import sharding, step as step_lib
from gptjax.checkpoint import Checkpointer
from gptjax.errors import GptjaxError, TrainingDiverged
from gptjax.loops.signals import AgreedStop, StopFlag
# The stage contract, re-exported: a stage file writes trainer.Stage(...), trainer.Data(...).
from gptjax.loops.stage import Data, Eval, Frozen, Layout, Phase, Stage  # noqa: F401
from gptjax.metrics import MetricsWriter, Progress, peak_flops_per_device


@dataclasses.dataclass
class Compiled:
    """A stage compiled for a mesh, without data: what `fit` runs, and what benchmarks and
    notebooks drive directly."""

    layout: Layout
    abstract: Any  # the state as ShapeDtypeStructs with their shardings (what restores into)
    batch_sharding: Any  # every batch leaf: the rows over the data axes
    make_state: Any  # jitted rng -> the sharded step-0 state from `init`
    phases: tuple[tuple[str, Any], ...]  # (name, jitted phase); one ("step", train_step) mostly
    frozen_shardings: Any = None
    eval_step: Any = None  # jitted, or None

    @property
    def mesh(self) -> Mesh:
        return self.layout.mesh

    @property
    def rules(self) -> sharding.Rules:
        return self.layout.rules

    @property
    def train_step(self) -> Any:
        """The jitted step of a one-phase stage: (state, batch[, frozen]) -> (state, metrics)."""
        if len(self.phases) != 1:
            raise ValueError(f"this stage's step has {len(self.phases)} phases; use `phases`")
        return self.phases[0][1]


def layout_of(config: ml_collections.ConfigDict, devices: Any = None) -> Layout:
    """The mesh of config.mesh over all devices (or the given ones) and the sharding rules."""
    return Layout(sharding.make_mesh(config.mesh.to_dict(), devices),
                  sharding.rules_from_config(config.sharding.rules))


def abstract_layout(init: Callable[[jax.Array], Any], layout: Layout) -> tuple[Any, Any]:
    """(abstract pytree with shardings, shardings) of what `init` builds, from its logical names."""
    # The key is made outside the mesh: under a mesh of a TPU topology's devices (an AOT compile
    # on a CPU host) nothing may run eagerly.
    key = jax.random.key(0)
    with sharding.activated(layout.mesh, layout.rules):
        boxed = jax.eval_shape(init, key)
    shardings = sharding.logical_shardings(boxed, layout.mesh, layout.rules)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def compile_stage(config: ml_collections.ConfigDict, stage: Stage, devices: Any = None
                  ) -> Compiled:
    """Mesh, divisibility, the state's sharded layout and the jitted step (and eval)."""
    config_lib.validate(config)
    layout = layout_of(config, devices)
    mesh = layout.mesh
    ways = sharding.batch_divisor(mesh, layout.rules)
    pcount = jax.process_count()
    if stage.rows % ways or stage.rows % pcount:
        need = math.lcm(ways, pcount) * stage.rows_multiple
        value = config_lib.get(config, stage.rows_key)
        per = f" / {stage.rows_multiple} micro-steps" if stage.rows_multiple > 1 else ""
        raise GptjaxError(
            f"the {stage.name} batch ({stage.rows_key}={value}{per} = {stage.rows} rows at a "
            f"time) does not divide over the {ways} data-parallel devices of mesh "
            f"{dict(mesh.shape)}" + (f" and {pcount} processes" if pcount > 1 else "")
            + f". Make {stage.rows_key} a multiple of {need}.")
    abstract, shardings = abstract_layout(stage.init, layout)
    layout = dataclasses.replace(layout, shardings=shardings)
    make_state = jax.jit(lambda r: nn.unbox(stage.init(r)), out_shardings=shardings)
    batch_sharding = sharding.batch_sharding(mesh, layout.rules)
    frozen_shardings = None
    if stage.frozen is not None:
        frozen_shardings = abstract_layout(stage.frozen.init, layout)[1]
    extra = () if frozen_shardings is None else (frozen_shardings,)
    step = stage.make_step(layout)
    phases = step if isinstance(step, tuple) else (Phase("step", step),)
    jitted = []
    for i, phase in enumerate(phases):
        last = i == len(phases) - 1
        if phase.host:
            if i in (0, len(phases) - 1):
                raise ValueError(f"host phase {phase.name!r} cannot be the first or last phase")
            jitted.append((phase.name, HostPhase(phase.fn, batch_sharding, phase.shapes)))
            continue
        jitted.append((phase.name, jax.jit(
            phase.fn, in_shardings=(shardings, batch_sharding if i == 0 else None, *extra),
            out_shardings=(shardings, sharding.replicated(mesh)) if last else None,
            donate_argnums=(0,) if last else ())))
    eval_step = None
    if stage.eval is not None:
        data_sharding = sharding.batch_sharding(mesh, layout.rules, leading=stage.eval.leading)
        eval_step = jax.jit(stage.eval.make(layout),
                            in_shardings=(shardings, data_sharding, *extra),
                            out_shardings=sharding.replicated(mesh))
    return Compiled(layout, abstract, batch_sharding, make_state, tuple(jitted),
                    frozen_shardings, eval_step)


@dataclasses.dataclass
class RunResult:
    state: Any
    step: int
    val_loss: float | None
    interrupted_by: int | None  # signal number when stopped early by SIGINT/SIGTERM
    val_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class Saver:
    """Checkpoint saves that never write non-finite parameters; `last` is the newest saved step."""

    def __init__(self, ckpt: Checkpointer, finite: Callable[[Any], Any], last: int | None):
        self.ckpt, self.finite, self.last = ckpt, finite, last

    def save(self, step: int, state: Any, data_iter: Any = None) -> None:
        if not bool(self.finite(state)):
            raise TrainingDiverged(
                f"the parameters hold NaN/inf at step {step}. {self.ckpt.describe(self.last)}. "
                "Lower optim.lr and rerun.")
        self.ckpt.save(step, state, data_iter)
        self.last = step


class _Log:
    """The host side of a step, read one step late: NaN checks, metrics.jsonl / TensorBoard,
    the progress bar, tokens/s and MFU over the steps since the last reset of the clock."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, stage: Stage,
                 step: int, saver: Saver):
        self.tcfg, self.stage, self.saver = config.train, stage, saver
        chief = jax.process_index() == 0
        self.progress = Progress(self.tcfg.steps, step, enabled=self.tcfg.progress and chief,
                                 desc=self.tcfg.progress_label or stage.name)
        self.writer = MetricsWriter(workdir, enabled=chief)
        self.note = self.progress.write if chief else (lambda _: None)
        peak, self.peak_source = peak_flops_per_device()
        self.peak_total = peak * jax.device_count()
        self.peak = peak
        self.last: dict[str, float] = {}
        self.reset_clock(step)

    def reset_clock(self, step: int) -> None:
        """Start the tokens/s window after `step` (compilation and eval stay out of it)."""
        self.t0, self.step0 = time.perf_counter(), step

    def finish(self, step: int, metrics: Any, extra: dict[str, float] | None = None,
               done_at: float | None = None) -> None:
        """Step `step`'s metrics (device arrays) and extra host values; done_at: when the step
        had finished, if work (evaluation) came between that and now."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k in self.stage.finite if not np.isfinite(m.get(k, 0.0))]
        if bad:
            what = ", ".join(f"the {k} became {m[k]}" for k in bad)
            raise TrainingDiverged(
                f"{self.stage.name}: {what} at step {step}. "
                f"{self.saver.ckpt.describe(self.saver.last)}. " + self.stage.fix_divergence)
        self.last = m
        if step % self.tcfg.log_every == 0 or extra or step == self.tcfg.steps:
            now = time.perf_counter() if done_at is None else done_at
            if step > self.step0:
                tps = (step - self.step0) * self.stage.tokens_per_step / (now - self.t0)
                m["tokens_per_sec"] = tps
                if self.stage.flops_per_token:
                    m["mfu"] = tps * self.stage.flops_per_token / self.peak_total
            self.writer.write(step, {**m, **(extra or {})})
            self.reset_clock(step)
            self.progress.update(step, **{k: f"{m[k]:.4f}" for k in self.stage.show if k in m},
                                 tok_s=f"{m.get('tokens_per_sec', 0):.0f}")
        else:
            self.progress.update(step)

    def close(self) -> None:
        self.progress.close()
        self.writer.close()


def _fresh_state(config: ml_collections.ConfigDict, stage: Stage, c: Compiled, frozen: tuple):
    if stage.start is None:
        return c.make_state(jax.random.key(config.seed))
    shardings = step_lib.shardings_of(c.abstract)
    if stage.initial is not None:
        given = jax.device_put(stage.initial(), shardings.params)
    else:
        given = frozen[0]
    return jax.jit(stage.start, out_shardings=shardings)(given)


class HostPhase:
    """A host phase as the trainer calls it: (state, carry, *frozen) -> carry | fn(carry)."""

    def __init__(self, fn: Callable[[Any], dict[str, np.ndarray]], batch_sharding: Any,
                 shapes: Callable[[Any], Any] | None = None):
        self.fn, self.batch_sharding, self.shapes = fn, batch_sharding, shapes

    def __call__(self, state: Any, carry: dict[str, Any], *frozen: Any) -> dict[str, Any]:
        extra = self.fn(sharding.to_host(carry))
        return {**carry, **jax.device_put(extra, self.batch_sharding)}


def _dispatch(c: Compiled, state: Any, batch: Any, frozen: tuple, timed: bool):
    """One step through its phases -> (state, metrics, {time_<phase>: seconds} if timed)."""
    carry, times = batch, {}
    for i, (name, fn) in enumerate(c.phases):
        t = time.perf_counter()
        if i == len(c.phases) - 1:
            state, carry = fn(state, carry, *frozen)
        else:
            carry = fn(state, carry, *frozen)
        if timed:
            jax.block_until_ready(carry)
            times[f"time_{name}"] = time.perf_counter() - t
    return state, carry, times


def fit(config: ml_collections.ConfigDict, workdir: str, stage: Stage,
        compiled: Compiled | None = None) -> RunResult:
    """Run `config.train.steps` steps of the stage, resuming from the workdir's latest
    checkpoint (state, data position, step), as a plain loop."""
    tcfg = config.train
    c = compiled or compile_stage(config, stage)
    mesh, data = c.mesh, stage.data
    chief = jax.process_index() == 0
    frozen = () if stage.frozen is None else (
        jax.device_put(stage.frozen.load(), c.frozen_shardings),)
    ckpt = Checkpointer(workdir, tcfg.keep_checkpoints, tcfg.async_checkpoint)
    restored = ckpt.restore_latest(c.abstract, data.iterator, data.position_global, tcfg.resume)
    latest = None if restored is None else restored[0]
    if restored is not None:
        state = restored[1]
    else:
        with sharding.activated(mesh, c.rules):
            state = _fresh_state(config, stage, c, frozen)
    eval_data = None
    if stage.eval is not None:
        eval_data = sharding.global_batch(stage.eval.data, sharding.batch_sharding(
            mesh, c.rules, leading=stage.eval.leading))
    step = start = int(jax.device_get(state.step))
    saver = Saver(ckpt, jax.jit(lambda st: step_lib.all_finite(stage.checked(st))), latest)
    log = _Log(config, workdir, stage, step, saver)
    if chief:
        log.note(
            f"gptjax {stage.name}: {stage.num_params / 1e6:.2f}M params, "
            + (f"{stage.describe}, " if stage.describe else "")
            + f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} "
            "devices" + (f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            + f", {stage.tokens_per_step} tokens/step, peak {log.peak / 1e9:.0f} GFLOP/s per "
            f"device ({log.peak_source}); "
            + (f"resumed at step {step}" if latest is not None
               else "fine-tuning" if stage.start is not None else "from scratch"))

    def evaluate(s: int, state: Any) -> dict[str, float]:
        out = {k: np.asarray(v) for k, v in
               jax.device_get(c.eval_step(state, eval_data, *frozen)).items()}
        if stage.eval.report is not None:
            return stage.eval.report(s, out)
        return {f"val_{k}": float(v) for k, v in out.items()}

    val_metrics: dict[str, float] = {}
    if stage.eval is not None and stage.eval.at_start and latest is None:
        with sharding.activated(mesh, c.rules):
            val_metrics = evaluate(step, state)
        log.writer.write(step, val_metrics)
    pending = None  # (step, metrics, times) whose host side is still to do
    t_start = time.perf_counter()
    try:
        with StopFlag() as flag, sharding.activated(mesh, c.rules):
            stop = AgreedStop(flag, mesh)
            while step < tcfg.steps and stop.signum is None:
                batch = sharding.global_batch(data.batch(step), c.batch_sharding)
                timed = len(c.phases) > 1 and (step + 1) % tcfg.log_every == 0
                state, metrics, times = _dispatch(c, state, batch, frozen, timed)
                step += 1
                stop.after_step()
                if step == start + 1:  # keep compilation out of the first tokens/s window
                    jax.block_until_ready(metrics)
                    log.reset_clock(step)
                if pending is not None:  # the previous step's metrics, read while this one runs
                    log.finish(pending[0], pending[1], pending[2])
                    pending = None
                evaluate_now = stage.eval is not None and (
                    step % tcfg.eval_every == 0 or step == tcfg.steps)
                checkpoint_now = step % tcfg.checkpoint_every == 0 or step == tcfg.steps
                if evaluate_now or checkpoint_now:  # read now, not one step late
                    jax.block_until_ready(metrics)
                    done_at = time.perf_counter()
                    if evaluate_now:
                        val_metrics = evaluate(step, state)
                    log.finish(step, metrics, {**times, **(val_metrics if evaluate_now else {})},
                               done_at)
                    if checkpoint_now:
                        saver.save(step, state, data.iterator)
                    log.reset_clock(step)
                else:
                    pending = (step, metrics, times)
            if pending is not None:
                log.finish(*pending)
            if stop.signum is not None and saver.last != step:
                log.note(f"signal {stop.signum}: saving step {step} before exiting")
                saver.save(step, state, data.iterator)
        ckpt.wait()
    finally:
        log.close()
        ckpt.close()
    if chief:
        msg = (f"stopped at step {step} after {step - start} steps in "
               f"{time.perf_counter() - t_start:.1f}s")
        msg += "".join(f"; {k} {log.last[k]:.4f}" for k in stage.show if k in log.last)
        msg += "".join(f"; {k} {v:.4f}" for k, v in val_metrics.items())
        print(msg, flush=True)
    return RunResult(state=state, step=step, val_loss=val_metrics.get("val_loss"),
                     interrupted_by=stop.signum, val_metrics=val_metrics, last_metrics=log.last)
