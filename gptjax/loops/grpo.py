"""Stage `grpo`: GRPO / RLOO on answers a program checks (or a reward model scores), no critic.

`run(config, workdir)`: the policy and the frozen reference start from `config.init_from` (an
SFT workdir). Each iteration is four phases run by the one trainer (gptjax/loops/trainer.py):

    rollout   K = grpo.samples_per_prompt answers to each of grpo.oversample x
              grpo.batch_prompts prompts of the task (`rollout.sample`, vmapped over K), under
              the training mesh
    reward    on the host: the answers decoded and checked (`verifiers.score`: final-number
              exact match, format), unparsable answers counted
    scoring   the reward model's score when grpo.rewards names it, the weighted reward; with
              oversample > 1 the batch_prompts groups the update keeps (`grpo.
              informative_groups`: those whose rewards differ first); old and reference
              log-probs, group advantages (`grpo.make_batch`), the monitors
    update    grpo.epochs x grpo.num_minibatches clipped steps (`ppo.ppo_update` with the GRPO
              loss of `grpo.make_loss_fn`)

The task (`gptjax.rl.tasks`: the shipped addition task, GSM8K, or a .jsonl) gives training
prompts and held-out ones. Iteration i answers the next batch_prompts of a fresh shuffle per pass
(grain's `MapDataset.shuffle().repeat()` read at positions i * B ..): the data position is the
step, so a resumed run continues exactly. Every train.eval_every iterations (and at step 0) the
policy answers the held-out prompts once greedily (eval_exact_match, eval_format,
eval_unparsed, eval_length) and once sampled at the rollout's temperature (the same with
_sampled), and the first grpo.samples_logged greedy answers are appended to samples.jsonl.

With epochs = num_minibatches = 1 the update is on-policy: pi_old is pi itself (stop-gradient),
so the scoring phase skips the old log-probs' forward, as TRL does. With beta = 0, no reward
model and no LoRA there is no frozen model at all.

LoRA (lora.rank > 0; `gptjax.rl.policy`): the state's params are the adapters (and the
`lora.train` groups); the SFT model is the frozen model frozen['ref'], at once the reference
(adapters off: no second copy of the weights) and the policy's base (adapters on). The rollout
and the evaluation decode with the merged weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import reward_model, sampling, step as step_lib
from gptjax import workdir as workdir_lib
from gptjax.data.tokenizer import END_OF_TURN, Tokenizer, special_id
from gptjax.errors import GptjaxError
from gptjax.loops import finetune, trainer, tuning
from gptjax.model import GPT, GPTConfig, ValueModel
from gptjax.optim import lr_schedule, make_optimizer
from gptjax.rl import grpo, monitors, ppo, rollout, tasks, verifiers
from gptjax.rl import policy as pol

SAMPLES_FILE = "samples.jsonl"


def hparams(config: ml_collections.ConfigDict) -> grpo.GRPOConfig:
    g = config.grpo
    return grpo.GRPOConfig(
        samples_per_prompt=g.samples_per_prompt, advantage=g.advantage, scale=g.scale,
        beta=g.beta, kl_kind=g.kl_kind, kl_in=g.kl_in, aggregation=g.aggregation,
        clip_low=g.clip_low, clip_high=g.clip_high, mask_truncated=g.mask_truncated,
        epochs=g.epochs, num_minibatches=g.num_minibatches, oversample=g.oversample)


def prompt_width(config: ml_collections.ConfigDict) -> int:
    g = config.grpo
    return int(g.max_prompt_tokens) or int(config.model.block_size) - int(g.max_new_tokens)


@dataclasses.dataclass
class Setup:
    cfg: GPTConfig
    tokenizer: Tokenizer
    policy: Any  # host numpy SFT parameters (policy start and reference)
    weights: dict[str, float]  # the reward's weighted sum
    reward_cfg: GPTConfig | None
    reward: Any  # reward-model parameters when weights names reward_model
    task: tasks.Task
    train: tasks.Encoded
    test: tasks.Encoded
    rc: rollout.RolloutConfig
    hp: grpo.GRPOConfig
    init_step: int = 0  # the SFT checkpoint's step (a LoRA workdir's lora_base.json records it)


def load_reward(where: str, tok: Tokenizer, cfg: GPTConfig) -> reward_model.Scorer:
    """A reward workdir's model, refused when it reads another vocabulary than the policy."""
    kind = workdir_lib.stage(where) if workdir_lib.model_config(where) else None
    if kind != "reward":
        raise GptjaxError(f"--config.grpo.reward_from={where} is a {kind!r} workdir; pass the "
                          "--workdir of a `reward` stage run")
    scorer = reward_model.load(where)
    if scorer.tokenizer.to_json() != tok.to_json() or scorer.cfg.vocab_size != cfg.vocab_size:
        raise GptjaxError(f"the reward model in {where} reads another vocabulary than the "
                          "policy; train it from this SFT workdir (--config.init_from)")
    return scorer


def setup(config: ml_collections.ConfigDict, workdir: str) -> Setup:
    g = config.grpo
    weights = verifiers.parse_rewards(g.rewards)
    if "reward_model" in weights and not g.reward_from:
        raise GptjaxError("grpo.rewards names reward_model: pass --config.grpo.reward_from="
                          "WORKDIR (a reward stage's --workdir)")
    task = tasks.load(config)
    s = finetune.start(config, workdir)
    width, n_new = prompt_width(config), int(g.max_new_tokens)
    scorer = load_reward(g.reward_from, s.tokenizer, s.cfg) if "reward_model" in weights else None
    for name, c in (("policy", s.cfg), ("reward", scorer and scorer.cfg)):
        if c is not None and width + n_new > c.block_size:
            raise GptjaxError(f"prompts of {width} + {n_new} new tokens exceed the {name} "
                              f"model's block_size {c.block_size}; lower grpo.max_prompt_tokens "
                              "or grpo.max_new_tokens")
    train, test = (tasks.encode(x, s.tokenizer, width) for x in (task.train, task.test))
    workdir_lib.write_json(workdir, "data_stats.json", {"train": train.stats, "test": test.stats})
    if not train.ids:
        raise GptjaxError(f"no training prompt of task {task.name!r} can be used "
                          f"({train.stats}): raise grpo.max_prompt_tokens (or the model's block "
                          "size) or use a tokenizer that covers the prompts")
    if jax.process_index() == 0:
        print(f"grpo task {task.name}: {train.stats['kept']} of {train.stats['records']} training "
              f"prompts, {test.stats['kept']} held out ({train.stats['too_long']} too long for "
              f"{width} tokens, {train.stats['not_encodable']} not encodable); rewards {weights}",
              flush=True)
    rc = rollout.RolloutConfig.of(g, special_id(s.tokenizer, END_OF_TURN))
    return Setup(s.cfg, s.tokenizer, s.params, weights, scorer and scorer.cfg,
                 scorer and jax.device_get(scorer.params), task, train, test, rc, hparams(config),
                 s.init_step)


def masked(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask > 0, x, 0.0)


def decode_answers(tok: Tokenizer, tokens: np.ndarray, lengths: np.ndarray, eos: int
                   ) -> list[str]:
    """Response tokens (B, N) and lengths (B,) -> the answers' text (without the end token)."""
    out = []
    for row, n in zip(tokens, lengths):
        ids = row[:int(n)].tolist()
        out.append(tok.decode(ids[:-1] if ids and ids[-1] == eos else ids))
    return out


def sft(frozen: dict[str, Any] | None) -> Any:
    """The frozen SFT model (the reference; under LoRA the policy's base), None without one."""
    return None if frozen is None else frozen.get("ref")


def make_phases(su: Setup, tx, schedule, seed: int, layout: trainer.Layout,
                policy: pol.Policy):
    """(rollout, reward [host], scoring, update) as trainer Phases."""
    cfg, rc, hp, n = su.cfg, su.rc, su.hp, su.rc.max_new_tokens
    mesh, rules = layout.mesh, layout.rules
    base = jax.random.key(seed)
    on_policy = hp.epochs * hp.num_minibatches == 1
    rm_weight = su.weights.get("reward_model", 0.0)

    def loss_fn_of(frozen):
        def forward(params, inputs):
            return policy.logprobs(params, sft(frozen), inputs["tokens"],
                                   inputs["prompt_lengths"], n, with_entropy=True)
        return grpo.make_loss_fn(forward, hp, on_policy=on_policy)

    def keys(state):
        return jax.random.split(jax.random.fold_in(base, state.step))

    def kept_rows(rewards, step):
        """Rows of the groups the update keeps (None without oversampling: all of them)."""
        if hp.oversample == 1:
            return None
        key = jax.random.fold_in(jax.random.fold_in(base, step), 2)
        groups = rewards.shape[0] // hp.samples_per_prompt
        return grpo.informative_groups(rewards, hp.samples_per_prompt,
                                       groups // hp.oversample, key)

    def rollout_phase(state, batch, frozen=None):
        s = rollout.sample(policy.sampling_params(state.params, sft(frozen)), cfg,
                           batch["prompts"], batch["lengths"], keys(state)[0], rc, mesh, rules)
        return {"tokens": s.tokens, "prompt_lengths": s.prompt_lengths,
                "response_lengths": s.response_lengths,
                "index": jnp.repeat(batch["index"], rc.samples_per_prompt)}

    def reward_phase(carry):
        answers = decode_answers(su.tokenizer, carry["tokens"][:, -n:],
                                 carry["response_lengths"], rc.eos_id)
        refs = [su.train.references[i] for i in carry["index"]]
        return verifiers.score(answers, refs, su.weights, su.task.marker)

    def scoring_phase(state, carry, frozen=None):
        tokens, plen, rlen = carry["tokens"], carry["prompt_lengths"], carry["response_lengths"]
        rewards = carry["host_reward"]
        stats = {}
        if rm_weight:
            rm = rollout.reward_scores(frozen["reward"], su.reward_cfg, tokens, plen, rlen, n)
            rewards = rewards + rm_weight * rm
            stats["rm_score"] = rm.mean()
        cut = monitors.truncated(tokens[:, -n:], rlen, rc.eos_id)
        # every sampled answer's measures, before the update keeps its groups
        stats.update({"exact_match": carry["exact_match"].mean(),
                      "format": carry["format"].mean(), "unparsed": carry["unparsed"].mean(),
                      "response_length": rlen.astype(jnp.float32).mean(),
                      "truncated": cut.astype(jnp.float32).mean()})
        rows = kept_rows(rewards, state.step)
        if rows is not None:
            stats["zero_std_fraction_sampled"] = grpo.flat_groups(
                rewards, hp.samples_per_prompt).mean()
            tokens, plen, rlen, rewards, cut = (x[rows] for x in (tokens, plen, rlen, rewards,
                                                                  cut))
        mask = rollout.response_mask(rlen, n)
        # pi's own log-probs: pi_old of an off-policy update, or the KL put in the reward
        need_logp = not on_policy or (hp.beta and hp.kl_in == "reward")
        logp = (masked(policy.logprobs(state.params, sft(frozen), tokens, plen, n)[0], mask)
                if need_logp else None)
        ref = jnp.zeros(mask.shape, jnp.float32)
        if hp.beta:
            ref = masked(rollout.policy_logprobs(frozen["ref"], cfg, tokens, plen, n)[0], mask)
        batch, grpo_stats = grpo.make_batch({"tokens": tokens, "prompt_lengths": plen}, mask,
                                            logp, ref, rewards, cut, hp)
        stats.update(grpo_stats)
        return {"batch": batch, "stats": stats}

    def update_phase(state, carry, frozen=None):
        params, opt_state, m = ppo.ppo_update(state.params, state.opt_state, carry["batch"],
                                              loss_fn_of(frozen), tx, keys(state)[1], hp.epochs,
                                              hp.num_minibatches)
        metrics = {**carry["stats"], **m,
                   "lr": schedule(state.step * hp.epochs * hp.num_minibatches)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def reward_shapes(carry):
        rows = carry["response_lengths"].shape
        return {k: jax.ShapeDtypeStruct(rows, jnp.float32) for k in verifiers.SCORES}

    return (trainer.Phase("rollout", rollout_phase),
            trainer.Phase("reward", reward_phase, True, reward_shapes),
            trainer.Phase("scoring", scoring_phase), trainer.Phase("update", update_phase))


def make_eval(su: Setup, seed: int, layout: trainer.Layout, policy: pol.Policy):
    """eval(state, data[, frozen]) -> one greedy and one sampled answer (the rollout's
    temperature) to each held-out prompt; the sampling key is fold_in(seed, step)."""
    n = su.rc.max_new_tokens
    base = jax.random.fold_in(jax.random.key(seed), 0x4556)

    def eval_fn(state, data, frozen=None):
        out, params = {}, policy.sampling_params(state.params, sft(frozen))
        for mode, t in (("greedy", 0.0), ("sampled", su.rc.temperature)):
            rc = dataclasses.replace(su.rc, samples_per_prompt=1, temperature=t)
            s = rollout.sample(params, su.cfg, data["prompts"], data["lengths"],
                               jax.random.fold_in(base, state.step), rc, layout.mesh,
                               layout.rules)
            out.update({f"{mode}_tokens": s.tokens[:, -n:], f"{mode}_lengths": s.response_lengths})
        return out
    return eval_fn


def report_eval(workdir: str, su: Setup, logged: int, step: int, out: dict[str, np.ndarray]
                ) -> dict[str, float]:
    """Check the held-out answers; append the first `logged` greedy ones to samples.jsonl."""
    k, metrics = len(su.test.ids), {}
    for mode, suffix in (("greedy", ""), ("sampled", "_sampled")):
        answers = decode_answers(su.tokenizer, out[f"{mode}_tokens"][:k],
                                 out[f"{mode}_lengths"][:k], su.rc.eos_id)
        r = verifiers.score(answers, su.test.references, su.weights, su.task.marker)
        metrics.update({f"eval_exact_match{suffix}": float(r["exact_match"].mean()),
                        f"eval_format{suffix}": float(r["format"].mean()),
                        f"eval_unparsed{suffix}": float(r["unparsed"].mean()),
                        f"eval_length{suffix}": float(out[f"{mode}_lengths"][:k].mean())})
        if mode == "greedy" and jax.process_index() == 0 and logged:
            with open(os.path.join(workdir, SAMPLES_FILE), "a") as f:
                for i in range(min(logged, k)):
                    f.write(json.dumps({"step": step,
                                        "prompt": su.tokenizer.decode(su.test.ids[i]),
                                        "answer": answers[i], "reference": su.test.references[i],
                                        "exact_match": bool(r["exact_match"][i])},
                                       ensure_ascii=False) + "\n")
    return metrics


def stage(config: ml_collections.ConfigDict, su: Setup, workdir: str) -> trainer.Stage:
    g, seed = config.grpo, int(config.seed)
    groups = int(g.batch_prompts)  # the update's groups
    b = groups * int(g.oversample)  # the prompts a rollout answers
    width, k = prompt_width(config), int(g.samples_per_prompt)
    pidx, pcount = jax.process_index(), jax.process_count()
    tx = make_optimizer(config.optim)
    one = jnp.zeros((1, 1), jnp.int32)
    # full: params = the GPT tree; LoRA: params = the adapters, the SFT model frozen (below)
    tune = tuning.make(config, workdir, GPT(su.cfg), (one,), su.policy, lambda: su.policy,
                       su.init_step)
    policy = pol.Policy(su.cfg, tune.spec)
    order = grain.MapDataset.range(len(su.train.ids)).shuffle(seed=seed).repeat()

    def mine(x: np.ndarray) -> np.ndarray:  # this process's rows
        rows = x.shape[0] // pcount
        return x[pidx * rows:(pidx + 1) * rows]

    def batch(step: int) -> dict[str, np.ndarray]:
        idx = np.array([order[i] for i in range(step * b, (step + 1) * b)], np.int32)
        tokens, lengths = sampling.left_pad([su.train.ids[i] for i in idx], width)
        return {"prompts": mine(tokens), "lengths": mine(lengths), "index": mine(idx)}

    # the reference; under LoRA also the policy's base (the whole SFT model, so the reference
    # keeps the SFT values of the groups lora.train trains in full)
    needs = {"ref": bool(su.hp.beta) or tune.spec is not None, "reward": su.reward is not None}
    frozen = None
    if any(needs.values()):
        def frozen_init(rng):
            k1, k2 = jax.random.split(rng)
            out = {}
            if needs["ref"]:
                out["ref"] = GPT(su.cfg).init(k1, one)["params"]
            if needs["reward"]:
                out["reward"] = ValueModel(su.reward_cfg).init(k2, one)["params"]
            return out

        def frozen_load():
            return {k: v for k, v in (("ref", su.policy), ("reward", su.reward)) if needs[k]}
        frozen = trainer.Frozen(frozen_init, frozen_load)

    ev = None
    if su.test.ids:
        n_eval = -(-len(su.test.ids) // groups) * groups  # rows: a multiple of the data axis
        tokens, lengths = sampling.left_pad(
            [su.test.ids[i % len(su.test.ids)] for i in range(n_eval)], width)
        ev = trainer.Eval(make=lambda layout: make_eval(su, seed, layout, policy),
                          data={"prompts": mine(tokens), "lengths": mine(lengths)}, leading=0,
                          at_start=bool(g.eval_at_start),
                          report=lambda step, out: report_eval(workdir, su, g.samples_logged,
                                                               step, out))

    def start(params):
        if tune.spec is None:  # the SFT model's parameters, copied (the reference keeps its own)
            return step_lib.train_state(jax.tree.map(jnp.copy, params), tx)
        # fresh adapters (B = 0: the policy starts as the SFT model exactly)
        return step_lib.train_state(nn.unbox(tune.init(jax.random.key(seed))), tx)

    return trainer.Stage(
        name="grpo",
        init=lambda rng: step_lib.train_state(tune.init(rng), tx),
        make_step=lambda layout: make_phases(su, tx, lr_schedule(config.optim), seed, layout,
                                             policy),
        rows=groups, rows_key="grpo.batch_prompts", data=trainer.Data(batch), frozen=frozen,
        start=start, initial=tune.initial, eval=ev, finite=("loss", "reward"),
        show=("reward", "exact_match"), tokens_per_step=b * k * (width + su.rc.max_new_tokens),
        num_params=su.cfg.num_params(non_embedding=False),
        describe=(f"task {su.task.name}, {len(su.train.ids)} prompts, {b} x {k} answers of <= "
                  f"{su.rc.max_new_tokens} tokens per iteration"
                  + (f" ({groups} groups kept, those whose rewards differ first)"
                     if b > groups else "") + f", {su.hp.advantage} advantages "
                  f"scaled by {su.hp.scale}, beta {su.hp.beta} ({su.hp.kl_kind} in the "
                  f"{su.hp.kl_in}), {tune.describe()}"),
        fix_divergence="Lower optim.lr or raise grpo.beta, then rerun to resume from it.")


def run(config: ml_collections.ConfigDict, workdir: str) -> trainer.RunResult:
    su = setup(config, workdir)
    return trainer.fit(config, workdir, stage(config, su, workdir))
