"""Stage `ppo`: the SFT policy trained against the reward model (InstructGPT's RL step).

`run(config, workdir)`: the policy and the frozen reference start from `config.init_from` (an
SFT workdir), the critic (a `ValueModel`) from the reward model of `config.ppo.reward_from`, as
InstructGPT initialises its value function. Each iteration is three jitted phases
(gptjax/rl/iteration.py): rollout (K answers to each of `ppo.batch_prompts` prompts), scoring
(the four models read them; KL-shaped rewards, GAE; the reward-hacking monitors), and the update
(`ppo.epochs` x `ppo.num_minibatches` clipped-PPO steps on policy and critic, plus the
pretraining term when `ppo.ptx_coef` > 0), run by the one trainer (gptjax/loops/trainer.py).

Scores are the reward model's minus an offset measured at step 0 on the SFT policy's own answers
to `ppo.offset_prompts` training prompts with PPO's sampling settings, so the first iteration
scores about 0 (0 prompts: the reward workdir's reward_normalization.json offset).

Prompts: the prompts of the preference data named by `config.data.mixture` (the reward model's
data, as in InstructGPT), without the held-out `data.val_fraction`, rendered up to
<|assistant|> and left-padded to the prompt width. Iteration i takes the next batch_prompts of a
fixed shuffle per pass (seeded by config.seed and the pass), and its pretraining windows are a
function of (seed, i): the data position is the step, and a resumed run continues exactly. Every
`train.eval_every` iterations the policy answers `ppo.eval_prompts` held-out prompts, greedy and
sampled, appended to samples.jsonl with their scores.

The checkpoint keeps the policy as the state's `params` (a GPT tree, what sample / chat /
init_from read), the critic as `value_params`, one optimizer state over both, the step, beta and
the reward offset. LoRA (lora.rank > 0; `gptjax.rl.policy`): `params` are the policy's adapters
on the frozen SFT model frozen['ref'], which with the adapters off is the reference (no second
copy); the critic still trains in full from the reward model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import reward_model, sampling
from gptjax import workdir as workdir_lib
from gptjax.data import lm as lm_data
from gptjax.data.prompts import batch_indices, load_prompts
from gptjax.data.tokenizer import END_OF_TURN, Tokenizer, special_id
from gptjax.errors import GptjaxError
from gptjax.loops import finetune, ptx, trainer, tuning
from gptjax.model import GPT, GPTConfig, ValueModel
from gptjax.optim import lr_schedule, make_optimizer
from gptjax.rl import iteration, monitors, ppo, rollout
from gptjax.rl.policy import Policy

SAMPLES_FILE = "samples.jsonl"


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
    rtok = workdir_lib.read_tokenizer(where)
    if rtok.to_json() != tok.to_json() or cfg.vocab_size != policy_cfg.vocab_size:
        raise GptjaxError(
            f"the reward model in {where} reads another vocabulary ({rtok.kind}, "
            f"{rtok.vocab_size} tokens) than the policy from {config.init_from} ({tok.kind}, "
            f"{tok.vocab_size} tokens): its scores would be of other tokens. Train the reward "
            "model from this SFT workdir (--config.init_from) or start PPO from the SFT workdir "
            "the reward model was trained from.")
    return reward_model.load(where)


def ptx_rows(config: ml_collections.ConfigDict) -> int:
    """Pretraining windows per optimizer step (ppo.ptx_batch; 0 = ppo.batch_prompts)."""
    return int(config.ppo.ptx_batch) or int(config.ppo.batch_prompts)


@dataclasses.dataclass
class Setup:
    """What the stage needs, built from the config and the two workdirs."""

    spec: iteration.Spec
    tokenizer: Tokenizer
    policy: Any  # host numpy SFT parameters (policy start and frozen reference)
    reward: Any  # reward-model parameters (frozen reward and critic start)
    reward_offset: float  # the reward workdir's own offset (used when ppo.offset_prompts = 0)
    prompts: list[list[int]]
    eval_prompts: list[list[int]]
    corpus: ptx.Corpus | None  # the pretraining data (ptx term, and its held-out loss in eval)
    init_step: int = 0  # the SFT checkpoint's step (a LoRA workdir's lora_base.json records it)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Setup:
    p = config.ppo
    if not p.reward_from:  # before any loading: the cheapest mistake to report
        raise GptjaxError("stage 'ppo' scores answers with a trained reward model: pass "
                          "--config.ppo.reward_from=WORKDIR (a reward stage's --workdir)")
    s = finetune.start(config, workdir)  # resolves config.model, validates, writes run files
    scorer = load_reward(config, s.tokenizer, s.cfg)
    width, n_new = prompt_width(config), int(p.max_new_tokens)
    extra = 1 if p.truncated == "end" else 0  # the appended end token
    for name, c in (("policy", s.cfg), ("reward", scorer.cfg)):
        if width + n_new + (extra if name == "reward" else 0) > c.block_size:
            raise GptjaxError(
                f"prompts of {width} + {n_new} new tokens"
                + (" + the appended end token" if extra and name == "reward" else "")
                + f" exceed the {name} model's block_size {c.block_size}; lower "
                "ppo.max_prompt_tokens or ppo.max_new_tokens")
    prompts, stats = load_prompts(config, s.tokenizer, width)
    held, _ = load_prompts(config, s.tokenizer, width, heldout=True)
    corpus = ptx.load(config, s.tokenizer)
    if corpus is None and p.ptx_coef:
        raise GptjaxError(
            f"ppo.ptx_coef={p.ptx_coef} needs pretraining data, but the init_from chain of "
            f"{config.init_from} has none (e.g. a converted model): name it with "
            "--config.ppo.ptx_data (a pretraining or prepare workdir, or a text file)")
    stats["ptx"] = {"source": corpus.source if corpus else None,
                    "train_tokens": len(corpus.train) if corpus else 0}
    workdir_lib.write_json(workdir, "data_stats.json", stats)
    if jax.process_index() == 0:
        for name, st in stats.items():
            if name != "ptx":
                print(f"ppo prompts {name}: {st['kept']} of {st['records']} training records "
                      f"({st['too_long']} too long for {width} tokens, {st['duplicates']} "
                      f"repeated, {st['not_encodable']} not encodable)", flush=True)
        if corpus is not None:
            print(f"ppo pretraining data: {corpus.source}, {len(corpus.train)} training tokens"
                  + ("" if p.ptx_coef else " (ptx_coef 0: its held-out loss is only watched)"),
                  flush=True)
    rc = rollout.RolloutConfig.of(p, special_id(s.tokenizer, END_OF_TURN))
    spec = iteration.Spec(s.cfg, scorer.cfg, rc, ppo_hparams(config), p.truncated,
                          p.truncated_penalty, bool(p.normalize_scores), float(p.score_clip),
                          bool(p.center_critic), ptx=bool(p.ptx_coef))
    return Setup(spec, s.tokenizer, s.params, jax.device_get(scorer.params), scorer.offset,
                 prompts, held[:p.eval_prompts], corpus, s.init_step)


def _init(spec: iteration.Spec, tx: Any, kl: ppo.KLController, tune: tuning.Tuning,
          rng: jax.Array) -> iteration.PPOState:
    """The state's shapes and logical names (for its layout)."""
    k1, k2 = jax.random.split(rng)
    tokens = jnp.zeros((1, 1), jnp.int32)
    policy = tune.init(k1)  # the GPT tree, or LoRA's adapters
    value = ValueModel(spec.value_cfg).init(k2, tokens)["params"]
    return iteration.PPOState(
        step=jnp.zeros((), jnp.int32), params=policy, value_params=value,
        opt_state=tx.init({"policy": policy, "value": value}), kl=kl,
        reward_offset=jnp.zeros((), jnp.float32), reward_scale=jnp.ones((), jnp.float32))


def _padded(prompts: list[list[int]], multiple: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts, repeated cyclically up to a multiple of `multiple` rows."""
    n = -(-max(len(prompts), 1) // multiple) * multiple
    return sampling.left_pad([prompts[i % len(prompts)] for i in range(n)], width)


def stage(config: ml_collections.ConfigDict, su: Setup, workdir: str) -> trainer.Stage:
    tcfg, p, spec = config.train, config.ppo, su.spec
    b, seed = int(p.batch_prompts), int(config.seed)
    width, seq_len = prompt_width(config), config_lib.seq_len(config)
    pidx, pcount = jax.process_index(), jax.process_count()
    tx, kl = make_optimizer(config.optim), kl_controller(config)
    tune = tuning.make(config, workdir, GPT(spec.cfg), (jnp.zeros((1, 1), jnp.int32),),
                       su.policy, lambda: su.policy, su.init_step)
    policy = Policy(spec.cfg, tune.spec)
    r_ptx = ptx_rows(config)
    updates = p.epochs * p.num_minibatches

    def mine(x: np.ndarray) -> np.ndarray:  # this process's rows
        rows = x.shape[0] // pcount
        return x[pidx * rows:(pidx + 1) * rows]

    def batch(step: int) -> dict[str, np.ndarray]:
        idx = batch_indices(len(su.prompts), b, seed, step)
        tokens, lengths = sampling.left_pad([su.prompts[i] for i in idx], width)
        out = {"prompts": mine(tokens), "lengths": mine(lengths)}
        if spec.ptx:
            w = ptx.windows(su.corpus.train, seq_len, r_ptx * updates, seed, step)
            out["ptx"] = mine(w.reshape(updates, r_ptx, -1).swapaxes(0, 1))  # rows first
        return out

    n_off = -(-int(p.offset_prompts) // b) if p.offset_prompts else 0
    off_tokens, off_lengths = _padded(su.prompts, b, width)
    off_idx = np.arange(n_off * b) % len(off_tokens)
    offset_prompts = (off_tokens[off_idx].reshape(n_off, b, width),
                      off_lengths[off_idx].reshape(n_off, b))
    tables = monitors.text_tables(su.tokenizer, spec.cfg.padded_vocab_size)

    def frozen_init(rng):
        k1, k2 = jax.random.split(rng)
        tokens = jnp.zeros((1, 1), jnp.int32)
        return {"ref": GPT(spec.cfg).init(k1, tokens)["params"],
                "reward": ValueModel(spec.value_cfg).init(k2, tokens)["params"],
                "tables": jax.tree.map(jnp.asarray, tables),
                "offset_prompts": jax.tree.map(jnp.asarray, offset_prompts)}

    def frozen_load():
        return {"ref": su.policy, "reward": su.reward, "tables": tables,
                "offset_prompts": offset_prompts}

    def start(frozen):
        # offset_prompts = 0: the reward workdir's own offset
        adapters = None if tune.spec is None else nn.unbox(tune.init(jax.random.key(seed)))
        return iteration.initial_state(spec, tx, kl, frozen,
                                       jax.random.fold_in(jax.random.key(seed), 0x0FF5),
                                       offset=None if p.offset_prompts else su.reward_offset,
                                       policy=policy, adapters=adapters)

    def make_step(layout: trainer.Layout):
        phases = iteration.make_phases(spec, tx, lr_schedule(config.optim), seed, layout.mesh,
                                       layout.rules, policy)
        return tuple(trainer.Phase(n, f) for n, f in zip(("rollout", "scoring", "update"),
                                                         phases))

    ev = None
    if su.eval_prompts:
        tokens, lengths = _padded(su.eval_prompts, b, width)
        data = {"prompts": mine(tokens), "lengths": mine(lengths)}
        if su.corpus is not None:
            val = np.stack(ptx_val_windows(su.corpus, seq_len, b, tcfg.eval_batches), 1)
            data["ptx_val"] = mine(val)
        ev = trainer.Eval(
            make=lambda layout: iteration.make_eval(spec, seed, layout.mesh, layout.rules,
                                                    policy),
            data=data, leading=0, at_start=bool(p.eval_at_start),
            report=lambda step, out: report_eval(workdir, su, step, out))
    n_params = spec.cfg.num_params(non_embedding=False) + \
        spec.value_cfg.num_params(non_embedding=False)
    rows = b * p.samples_per_prompt
    return trainer.Stage(
        name="ppo", init=lambda rng: _init(spec, tx, kl, tune, rng), make_step=make_step,
        rows=math.gcd(b, r_ptx) if spec.ptx else b,
        rows_key="ppo.batch_prompts" if not spec.ptx or r_ptx % b == 0 else "ppo.ptx_batch",
        data=trainer.Data(batch), frozen=trainer.Frozen(frozen_init, frozen_load), start=start,
        eval=ev, finite=("loss", "score", "kl"),
        checked=lambda st: (st.params, st.value_params), show=("score", "kl"),
        tokens_per_step=rows * (width + spec.rc.max_new_tokens), num_params=n_params,
        describe=(f"{len(su.prompts)} prompts, {b} x {p.samples_per_prompt} answers of <= "
                  f"{spec.rc.max_new_tokens} tokens per iteration"
                  + (f", ptx {r_ptx} windows x {updates} steps, coef {p.ptx_coef}"
                     if spec.ptx else "") + f", policy: {tune.describe()}"),
        fix_divergence="Lower optim.lr or raise ppo.init_kl_coef, then rerun to resume from it.")


def ptx_val_windows(corpus: ptx.Corpus, seq_len: int, rows: int, n: int) -> list[np.ndarray]:
    """n fixed (rows, T + 1) batches of evenly spaced held-out windows (all processes' rows)."""
    return lm_data.val_batches(corpus.val, seq_len, rows, n)


def report_eval(workdir: str, su: Setup, step: int, out: dict[str, np.ndarray]
                ) -> dict[str, float]:
    """Append the eval answers to samples.jsonl (process 0) and return the scalars to log."""
    n = len(su.eval_prompts)
    tok, eos = su.tokenizer, su.spec.rc.eos_id
    metrics = {}
    lines = []
    for mode in ("greedy", "sampled"):
        scores = out[f"{mode}_scores"][:n]
        metrics[f"eval_score_{mode}"] = float(scores.mean())
        metrics[f"eval_length_{mode}"] = float(out[f"{mode}_lengths"][:n].mean())
        for i in range(n):
            ids = out[f"{mode}_tokens"][i][:int(out[f"{mode}_lengths"][i])].tolist()
            ids = ids[:-1] if ids and ids[-1] == eos else ids
            lines.append({"step": step, "mode": mode, "prompt": tok.decode(su.eval_prompts[i]),
                          "answer": tok.decode(ids), "score": float(scores[i]),
                          "truncated": bool(out[f"{mode}_truncated"][i])})
    if "ptx_loss" in out:
        metrics["val_ptx_loss"] = float(out["ptx_loss"])
    if jax.process_index() == 0:
        with open(os.path.join(workdir, SAMPLES_FILE), "a") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> trainer.RunResult:
    su = setup(config, workdir)
    return trainer.fit(config, workdir, stage(config, su, workdir))
