"""Stage `pretrain`: next-token prediction on a token stream. `run(config, workdir)`."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import losses, sharding, step as step_lib
from gptjax.checkpoint import Checkpointer
from gptjax.data import lm as lm_data
from gptjax.data.tokenizer import save_tokenizer
from gptjax.errors import GptjaxError, TrainingDiverged
from gptjax.metrics import MetricsWriter, Progress, peak_flops_per_device
from gptjax.model import GPT
from gptjax.optim import lr_schedule, make_optimizer


@dataclasses.dataclass
class RunResult:
    state: Any
    step: int
    val_loss: float | None
    interrupted_by: int | None  # signal number when stopped early by SIGINT/SIGTERM


def lm_loss_fn(model: GPT, dropout: bool):
    """loss_fn(params, tokens (B, T+1), rng) -> (mean next-token loss, {})."""
    def loss_fn(params, tokens, rng):
        rngs = {"dropout": rng} if dropout and rng is not None else None
        logits = model.apply({"params": params}, tokens[:, :-1],
                             deterministic=rngs is None, rngs=rngs)
        return losses.lm_loss(logits, tokens[:, 1:]), {}
    return loss_fn


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


@dataclasses.dataclass
class Pieces:
    """Everything a pretraining run compiles, built from the config alone (no data, no workdir);
    benchmarks and notebooks use it to drive the real train step."""

    model: GPT
    mesh: Any
    rules: Any
    tx: Any
    make_state: Any  # rng -> sharded TrainState (jitted)
    abstract: Any  # abstract TrainState with shardings
    batch_sharding: Any
    train_step: Any  # jitted (state, tokens (B, T+1)) -> (state, metrics); donates state
    eval_step: Any  # jitted (params, stacked tokens (n, B, T+1)) -> mean loss
    seq_len: int


def build(config: ml_collections.ConfigDict, devices: Any = None) -> Pieces:
    """The compiled pieces of a run on all devices (or the given ones)."""
    config_lib.validate(config)
    mcfg = config_lib.model_config(config)
    seq_len = config_lib.seq_len(config)
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
    model = GPT(mcfg)
    tx = make_optimizer(config.optim)
    make_state, abstract = step_lib.state_layout(
        lambda r: model.init(r, jnp.zeros((1, seq_len), jnp.int32))["params"],
        tx, jax.random.key(config.seed), mesh, rules)
    shardings = step_lib.shardings_of(abstract)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    loss_fn = lm_loss_fn(model, dropout=mcfg.dropout > 0)
    train_step = step_lib.jit_train_step(
        step_lib.make_train_step(loss_fn, tx, lr_schedule(config.optim), config.seed,
                                 tcfg.grad_accum, mesh, rules),
        shardings, batch_sharding, mesh)
    eval_step = step_lib.jit_eval_step(loss_fn, shardings.params, mesh, rules)
    return Pieces(model, mesh, rules, tx, make_state, abstract, batch_sharding, train_step,
                  eval_step, seq_len)


def run(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
    p = build(config)
    mcfg, seq_len, tcfg = p.model.cfg, p.seq_len, config.train
    mesh, rules, batch_sharding = p.mesh, p.rules, p.batch_sharding
    train_step, eval_step = p.train_step, p.eval_step
    is_chief = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    splits = lm_data.corpus_for(config.data, os.path.join(workdir, "data"))
    if splits.tokenizer.vocab_size > mcfg.vocab_size:
        raise GptjaxError(
            f"the tokenizer has {splits.tokenizer.vocab_size} tokens but model.vocab_size="
            f"{mcfg.vocab_size}; set --config.model.vocab_size={splits.tokenizer.vocab_size}")
    if is_chief:
        save_tokenizer(splits.tokenizer, os.path.join(workdir, "tokenizer.json"))
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(config))

    pidx, pcount = jax.process_index(), jax.process_count()
    train_it = lm_data.train_iterator(splits.train, seq_len, tcfg.batch_size, config.seed,
                                      pidx, pcount)
    ckpt = Checkpointer(workdir, tcfg.keep_checkpoints, tcfg.async_checkpoint)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, p.abstract, train_it)
    else:
        state = p.make_state(jax.random.key(config.seed))
    params_finite = jax.jit(step_lib.all_finite)
    val_set = sharding.global_batch(
        np.stack(lm_data.val_batches(splits.val, seq_len, tcfg.batch_size, tcfg.eval_batches,
                                     pidx, pcount)),
        sharding.batch_sharding(mesh, rules, leading=1))

    def evaluate(params) -> float:
        return float(eval_step(params, val_set))

    tokens_per_step = tcfg.batch_size * seq_len
    flops_per_token = mcfg.flops_per_token(seq_len)
    peak, peak_source = peak_flops_per_device()
    peak_total = peak * jax.device_count()
    step = int(jax.device_get(state.step))
    start_step = step
    progress = Progress(tcfg.steps, step, enabled=tcfg.progress and is_chief)
    writer = MetricsWriter(workdir, enabled=is_chief)
    progress.write(
        f"gptjax pretrain: {mcfg.num_params(non_embedding=False) / 1e6:.2f}M params, mesh "
        f"{dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices, "
        f"{tokens_per_step} tokens/step, peak {peak / 1e9:.0f} GFLOP/s per device "
        f"({peak_source}); "
        + (f"resumed at step {step}" if latest is not None else "from scratch"))

    last_saved = latest
    val_loss = None
    window = {"t0": time.perf_counter(), "step0": step}

    def finish_step(s: int, metrics: Any, extra: dict[str, float] | None = None) -> None:
        """Host side of step s (one step late): NaN check, logging, progress."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(m["loss"]):
            raise TrainingDiverged(
                f"the loss became {m['loss']} at step {s}. The last good checkpoint "
                f"(step {last_saved}) is kept in {ckpt.directory}. Lower optim.lr, raise "
                "optim.warmup_steps or set optim.grad_clip, then rerun to resume from it.")
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

    def save(s: int) -> None:
        nonlocal last_saved
        if not bool(params_finite(state.params)):
            raise TrainingDiverged(
                f"the parameters hold NaN/inf at step {s}; the last good checkpoint (step "
                f"{last_saved}) is kept in {ckpt.directory}. Lower optim.lr and rerun.")
        ckpt.save(s, state, train_it)
        last_saved = s

    t_start = time.perf_counter()
    pending = None
    try:
        with _StopFlag() as stop, step_lib.activated(mesh, rules):
            while step < tcfg.steps and stop.signum is None:
                batch = sharding.global_batch(next(train_it), batch_sharding)
                state, metrics = train_step(state, batch)
                step += 1
                if step == start_step + 1:  # keep compilation out of the first tokens/s window
                    jax.block_until_ready(metrics)
                    window.update(t0=time.perf_counter(), step0=step)
                if pending is not None:
                    finish_step(*pending)  # step-1's metrics, read while step runs
                    pending = None
                sync = (step % tcfg.eval_every == 0 or step % tcfg.checkpoint_every == 0
                        or step == tcfg.steps)
                if not sync:
                    pending = (step, metrics)
                    continue
                extra = None
                if step % tcfg.eval_every == 0 or step == tcfg.steps:
                    val_loss = evaluate(state.params)
                    extra = {"val_loss": val_loss}
                finish_step(step, metrics, extra)
                if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
                    save(step)
                # Restart the tokens/s window so eval and save time never count as training.
                window.update(t0=time.perf_counter(), step0=step)
            if pending is not None:
                finish_step(*pending)
            if stop.signum is not None and last_saved != step:
                progress.write(f"signal {stop.signum}: saving step {step} before exiting")
                save(step)
        ckpt.wait()
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    wall = time.perf_counter() - t_start
    if is_chief:
        msg = f"stopped at step {step} after {step - start_step} steps in {wall:.1f}s"
        if val_loss is not None:
            msg += f"; val_loss {val_loss:.4f}"
        print(msg, flush=True)
    return RunResult(state=state, step=step, val_loss=val_loss, interrupted_by=stop.signum)
