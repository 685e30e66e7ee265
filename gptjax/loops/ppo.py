"""Stage `ppo`: the SFT policy trained against the reward model (InstructGPT's RL step).

`run(config, workdir)`: the policy and the frozen reference start from `config.init_from` (an
SFT workdir), the critic (a `ValueModel`) from the reward model of `config.ppo.reward_from`, as
InstructGPT initialises its value function; the frozen reward model scores with that workdir's
normalisation offset subtracted, so the SFT policy starts near score 0. Each iteration is one
jitted program: sample K answers to each of `ppo.batch_prompts` prompts, read them with the four
models, KL-shape the rewards, GAE, then `ppo.epochs` x `ppo.num_minibatches` clipped PPO steps
on policy and critic together, and move the KL coefficient (gptjax/rl/).

Prompts: the prompts of the preference data named by `config.data.mixture` (the reward model's
data, as in InstructGPT: "hh-rlhf", "finegrained-rlhf" or a .jsonl of records; the answers are
unused), without the held-out `data.val_fraction` (the fixed split of the other stages),
rendered up to <|assistant|> and left-padded to ppo.max_prompt_tokens. Iteration i takes the
next batch_prompts of a fixed shuffle per pass (seeded by config.seed and the pass), so the
data position is the step and a resumed run continues exactly.

The checkpoint's train state keeps the policy as `params` (a GPT tree, what sample / chat /
init_from read) and the critic as `value_params`, with one optimizer state over both, the step
and the KL controller's beta. metrics.jsonl per iteration: score (mean normalised reward), kl
(mean per-sequence sum of the per-token KL estimate), beta, reward (mean total shaped reward),
loss / policy_loss / value_loss / clipfrac / approx_kl / entropy (means over the update's
steps), response_length, tokens_per_sec (rollout tokens, prompt + response slots, per second
of whole iterations).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import reward_model, sampling, sharding, step as step_lib
from gptjax import workdir as workdir_lib
from gptjax.checkpoint import Checkpointer
from gptjax.data.prompts import batch_indices, load_prompts
from gptjax.data.tokenizer import END_OF_TURN, Tokenizer, load_tokenizer, special_id
from gptjax.errors import GptjaxError, TrainingDiverged
from gptjax.loops import finetune, trainer
from gptjax.metrics import MetricsWriter, Progress
from gptjax.model import GPT, GPTConfig, ValueModel
from gptjax.optim import lr_schedule, make_optimizer
from gptjax.rl import ppo, rollout


@flax.struct.dataclass
class PPOState:
    step: jax.Array  # int32 scalar: PPO iterations done
    params: Any  # the policy (GPT tree): what sample / chat / init_from read from a checkpoint
    value_params: Any  # the critic (ValueModel tree: 'trunk', 'head')
    opt_state: Any  # one optimizer over {'policy': params, 'value': value_params}
    kl: ppo.KLController  # beta, a leaf; its rule is static (from the config)


def ppo_hparams(config: ml_collections.ConfigDict) -> ppo.PPOConfig:
    p = config.ppo
    return ppo.PPOConfig(gamma=p.gamma, lam=p.lam, clip_eps=p.clip_eps, vf_clip=p.vf_clip,
                         vf_coef=p.vf_coef, ent_coef=p.ent_coef, ptx_coef=p.ptx_coef,
                         kl_kind=p.kl_kind, whiten_advantages=p.whiten_advantages,
                         epochs=p.epochs, num_minibatches=p.num_minibatches)


def kl_controller(config: ml_collections.ConfigDict) -> ppo.KLController:
    p = config.ppo
    if p.target_kl > 0:
        return ppo.adaptive_kl(p.init_kl_coef, p.target_kl, p.kl_horizon)
    return ppo.fixed_kl(p.init_kl_coef)


def prompt_width(config: ml_collections.ConfigDict) -> int:
    p = config.ppo
    return int(p.max_prompt_tokens) or int(config.model.block_size) - int(p.max_new_tokens)


def load_reward(config: ml_collections.ConfigDict, tok: Tokenizer, policy_cfg: GPTConfig
                ) -> reward_model.Scorer:
    """The reward workdir's model, refused when it is no reward model or reads another
    vocabulary than the policy's."""
    where = config.ppo.reward_from
    cfg = workdir_lib.model_config(where)  # a clear error for a missing / non-gptjax folder
    kind = workdir_lib.stage(where)
    if kind != "reward":
        raise GptjaxError(f"--config.ppo.reward_from={where} is a {kind!r} workdir; pass the "
                          "--workdir of a `reward` stage run")
    rtok = load_tokenizer(os.path.join(where, "tokenizer.json"))
    if rtok.to_json() != tok.to_json() or cfg.vocab_size != policy_cfg.vocab_size:
        raise GptjaxError(
            f"the reward model in {where} reads another vocabulary ({rtok.kind}, "
            f"{rtok.vocab_size} tokens) than the policy from {config.init_from} ({tok.kind}, "
            f"{tok.vocab_size} tokens): its scores would be of other tokens. Train the reward "
            "model from this SFT workdir (--config.init_from) or start PPO from the SFT workdir "
            "the reward model was trained from.")
    return reward_model.load(where)


def state_layout(cfg: GPTConfig, value_cfg: GPTConfig, tx: Any, kl: ppo.KLController,
                 mesh: Any, rules: Any) -> tuple[Any, Any]:
    """(abstract PPOState with shardings, its shardings): the parameters laid out by the
    logical rules, as `step.state_layout` lays out a TrainState."""
    def init(rng):
        k1, k2 = jax.random.split(rng)
        tokens = jnp.zeros((1, 1), jnp.int32)
        policy = GPT(cfg).init(k1, tokens)["params"]
        value = ValueModel(value_cfg).init(k2, tokens)["params"]
        return PPOState(step=jnp.zeros((), jnp.int32), params=policy, value_params=value,
                        opt_state=tx.init({"policy": policy, "value": value}), kl=kl)

    with step_lib.activated(mesh, rules):
        boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def make_iteration(cfg: GPTConfig, value_cfg: GPTConfig, rc: rollout.RolloutConfig,
                   hp: ppo.PPOConfig, tx: Any, schedule: Any, seed: int, rows: int):
    """iteration(state, frozen {'ref', 'reward'}, prompts (B, P), lengths (B,)) -> (state,
    metrics): one rollout, the PPO update, the KL controller. Keys: fold_in(seed, step)."""
    loss_fn = ppo.make_loss_fn(rollout.make_forward(cfg, value_cfg, rc.max_new_tokens), hp)
    base = jax.random.key(seed)
    updates_per_iteration = hp.epochs * hp.num_minibatches

    def iteration(state: PPOState, frozen: dict[str, Any], prompts, lengths):
        k_rollout, k_update = jax.random.split(jax.random.fold_in(base, state.step))
        params = rollout.RolloutParams(state.params, frozen["ref"], state.value_params,
                                       frozen["reward"])
        r = rollout.rollout(params, prompts, lengths, k_rollout, cfg=cfg, value_cfg=value_cfg,
                            reward_cfg=value_cfg, rc=rc)
        batch, stats = rollout.to_transitions(r, state.kl.beta, hp)
        train = {"policy": state.params, "value": state.value_params}
        train, opt_state, m = ppo.ppo_update(train, state.opt_state, batch, loss_fn, tx,
                                             k_update, hp.epochs, hp.num_minibatches)
        metrics = {**stats, **m, "beta": state.kl.beta,
                   "lr": schedule(state.step * updates_per_iteration)}
        new = state.replace(step=state.step + 1, params=train["policy"],
                            value_params=train["value"], opt_state=opt_state,
                            kl=ppo.update_kl(state.kl, stats["kl"], rows))
        return new, metrics

    return iteration


@dataclasses.dataclass
class Setup:
    """What the loop needs, built from the config and the two workdirs."""

    cfg: GPTConfig
    value_cfg: GPTConfig
    policy: Any  # host numpy SFT parameters (policy start and frozen reference)
    reward: Any  # reward-model parameters (frozen reward and critic start)
    prompts: list[list[int]]
    rc: rollout.RolloutConfig


def setup(config: ml_collections.ConfigDict, workdir: str) -> Setup:
    if not config.ppo.reward_from:  # before any loading: the cheapest mistake to report
        raise GptjaxError("stage 'ppo' scores answers with a trained reward model: pass "
                          "--config.ppo.reward_from=WORKDIR (a reward stage's --workdir)")
    s = finetune.start(config, workdir)  # resolves config.model, validates, writes run files
    scorer = load_reward(config, s.tokenizer, s.cfg)
    width, n_new = prompt_width(config), int(config.ppo.max_new_tokens)
    for name, c in (("policy", s.cfg), ("reward", scorer.cfg)):
        if width + n_new > c.block_size:
            raise GptjaxError(
                f"prompts of {width} + {n_new} new tokens exceed the {name} model's block_size "
                f"{c.block_size}; lower ppo.max_prompt_tokens or ppo.max_new_tokens")
    prompts, stats = load_prompts(config, s.tokenizer, width)
    finetune.write_json(workdir, "data_stats.json", stats)
    if jax.process_index() == 0:
        for name, st in stats.items():
            print(f"ppo prompts {name}: {st['kept']} of {st['records']} training records "
                  f"({st['too_long']} too long for {width} tokens, {st['duplicates']} repeated, "
                  f"{st['not_encodable']} not encodable)", flush=True)
    p = config.ppo
    rc = rollout.RolloutConfig(
        samples_per_prompt=p.samples_per_prompt, max_new_tokens=n_new, temperature=p.temperature,
        top_k=p.top_k, top_p=p.top_p, eos_id=special_id(s.tokenizer, END_OF_TURN),
        reward_offset=scorer.offset)
    return Setup(s.cfg, scorer.cfg, s.params, jax.device_get(scorer.params), prompts, rc)


def run(config: ml_collections.ConfigDict, workdir: str) -> trainer.RunResult:
    su = setup(config, workdir)
    tcfg, p = config.train, config.ppo
    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.rules_from_config(config.sharding.rules)
    b, rows = int(p.batch_prompts), int(p.batch_prompts) * int(p.samples_per_prompt)
    pidx, pcount = jax.process_index(), jax.process_count()
    ways = sharding.batch_divisor(mesh, rules)
    if b % ways or b % pcount:
        raise GptjaxError(f"ppo.batch_prompts={b} does not divide over the {ways} data-parallel "
                          f"devices of mesh {dict(mesh.shape)} ({pcount} processes); make it a "
                          "multiple of both")
    hp, tx = ppo_hparams(config), make_optimizer(config.optim)
    abstract, shardings = state_layout(su.cfg, su.value_cfg, tx, kl_controller(config), mesh,
                                       rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    frozen_shardings = {"ref": shardings.params, "reward": shardings.value_params}
    iteration = jax.jit(
        make_iteration(su.cfg, su.value_cfg, su.rc, hp, tx, lr_schedule(config.optim),
                       config.seed, rows),
        in_shardings=(shardings, frozen_shardings, batch_sharding, batch_sharding),
        out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    frozen = jax.device_put({"ref": su.policy, "reward": su.reward}, frozen_shardings)

    is_chief = pidx == 0
    ckpt = Checkpointer(workdir, tcfg.keep_checkpoints, tcfg.async_checkpoint)
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract)
    else:
        def start(f):  # copies (never the frozen buffers: the iteration donates the state)
            policy, value = jax.tree.map(jnp.copy, (f["ref"], f["reward"]))
            return PPOState(step=jnp.zeros((), jnp.int32), params=policy, value_params=value,
                            opt_state=tx.init({"policy": policy, "value": value}),
                            kl=kl_controller(config))
        state = jax.jit(start, out_shardings=shardings)(frozen)

    width = prompt_width(config)
    tokens_per_step = rows * (width + su.rc.max_new_tokens)
    step = start_step = int(jax.device_get(state.step))
    progress = Progress(tcfg.steps, step, enabled=tcfg.progress and is_chief)
    writer = MetricsWriter(workdir, enabled=is_chief)
    if is_chief:
        progress.write(
            f"gptjax ppo: policy {su.cfg.num_params(non_embedding=False) / 1e6:.2f}M + critic "
            f"{su.value_cfg.num_params(non_embedding=False) / 1e6:.2f}M params, "
            f"{len(su.prompts)} prompts, {b} x {p.samples_per_prompt} answers of <= "
            f"{su.rc.max_new_tokens} tokens per iteration, mesh {dict(mesh.shape)}; "
            + (f"resumed at step {step}" if latest is not None else "starting from the SFT model"))

    def prompt_batch(s: int):
        """This process's rows of iteration s's prompts, as global arrays."""
        idx = batch_indices(len(su.prompts), b, config.seed, s)
        tokens, lengths = sampling.left_pad([su.prompts[i] for i in idx], width)
        mine = slice(pidx * b // pcount, (pidx + 1) * b // pcount)
        return sharding.global_batch((tokens[mine], lengths[mine]), batch_sharding)

    saver = trainer.Saver(
        ckpt, jax.jit(lambda st: step_lib.all_finite((st.params, st.value_params))), latest)
    window = {"t0": time.perf_counter(), "step0": step}
    last: dict[str, float] = {}

    def finish(s: int, metrics: Any) -> None:
        """Host side of iteration s (one iteration late): NaN check, logging, progress."""
        nonlocal last
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = [k for k in ("loss", "score", "kl") if not np.isfinite(m[k])]
        if bad:
            raise TrainingDiverged(
                f"{', '.join(bad)} became non-finite at step {s}. The last good checkpoint "
                f"(step {saver.last}) is kept in {ckpt.directory}. Lower optim.lr or raise "
                "ppo.init_kl_coef, then rerun to resume from it.")
        last = m
        if s % tcfg.log_every == 0 or s == tcfg.steps:
            now = time.perf_counter()
            done = s - window["step0"]
            if done > 0:
                m["tokens_per_sec"] = done * tokens_per_step / (now - window["t0"])
            writer.write(s, m)
            window.update(t0=now, step0=s)
            progress.update(s, score=f"{m['score']:.3f}", kl=f"{m['kl']:.3f}")
        else:
            progress.update(s)

    def advance(s: int) -> Any:
        nonlocal state
        state, metrics = iteration(state, frozen, *prompt_batch(s))
        return metrics

    def save(s: int) -> None:
        saver.save(s, state)

    def at_step(s: int, metrics: Any) -> bool:
        """Checkpoint iterations: their metrics are read now, then the state is saved."""
        if s % tcfg.checkpoint_every and s != tcfg.steps:
            return False
        finish(s, metrics)
        save(s)
        return True

    t_start = time.perf_counter()
    try:
        step, signum = trainer.run_steps(
            step, tcfg.steps, mesh, rules, advance=advance, finish=finish, at_step=at_step,
            save=save, saver=saver, window=window,
            note=progress.write if is_chief else trainer.print_nothing)
        ckpt.wait()
    finally:
        progress.close()
        writer.close()
        ckpt.close()
    if is_chief:
        msg = (f"stopped at step {step} after {step - start_step} iterations in "
               f"{time.perf_counter() - t_start:.1f}s")
        msg += "".join(f"; {k} {last[k]:.4f}" for k in ("score", "kl", "beta") if k in last)
        print(msg, flush=True)
    return trainer.RunResult(state=state, step=step, val_loss=None, interrupted_by=signum)
