"""One PPO iteration as three pure phases (rollout -> scoring -> update), and the evaluation.

    rollout   K answers to each of B prompts from the policy (`rollout.sample`, vmapped)
    scoring   the four models read the answers (policy, reference, critic, reward model); the
              score is the reward model's minus the offset of the SFT policy's own answers, an
              answer cut at max_new_tokens is treated per `truncated` (below); KL-shaped rewards,
              GAE, whitening (`ppo.make_transitions`); the monitors (`monitors.answer_stats`)
    update    `epochs` x `num_minibatches` clipped-PPO steps on policy and critic together, with
              InstructGPT's pretraining term gamma * E_pretrain[-log pi] summed into the same loss
              of each minibatch step (one backward pass), then the KL controller

Answers that never end (no end token within max_new_tokens) sit where the reward model, trained
on answers closed by <|end|>, never learned to score. `truncated`:
    "penalty"  their score is -truncated_penalty * scale (scale: the standard deviation of the SFT
               answers' scores): below an average SFT answer, whatever the reward model says, as
               lm-human-preferences' penalty reward and TRL's missing_eos_penalty do. The default:
               it is the only one that pushes the policy back towards ending its answers.
    "end"      scored with the end token appended (needs one more slot of context)
    "mask"     left out of the loss (DAPO's overlong filtering): no signal either way
    "none"     scored at their last token as they are
The frozen pytree holds {'ref', 'reward', 'tables', 'offset_prompts'}: the SFT policy, the reward
model, the monitors' per-token character tables and the prompts the offset is measured on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from gptjax import losses
from gptjax.model import GPT, GPTConfig
from gptjax.rl import monitors, ppo, rollout
from gptjax.rl.policy import Policy


@flax.struct.dataclass
class PPOState:
    step: jax.Array  # int32 scalar: PPO iterations done
    params: Any  # the policy (GPT tree; LoRA: its adapters): what sample / chat / init_from read
    value_params: Any  # the critic (ValueModel tree: 'trunk', 'head')
    opt_state: Any  # one optimizer over {'policy': params, 'value': value_params}
    kl: ppo.KLController  # beta, a leaf; its rule is static (from the config)
    reward_offset: jax.Array  # mean raw score of the SFT policy's answers (PPO's own sampling)
    reward_scale: jax.Array  # their standard deviation: the unit of the truncation penalty


@dataclasses.dataclass(frozen=True)
class Spec:
    """The static shape of an iteration (hashable)."""

    cfg: GPTConfig  # policy and reference
    value_cfg: GPTConfig  # critic and reward model
    rc: rollout.RolloutConfig
    hp: ppo.PPOConfig
    truncated: str = "penalty"
    truncated_penalty: float = 1.0
    normalize_scores: bool = False  # divide by the SFT answers' score std (reward_scale)
    score_clip: float = 0.0  # |score| <= score_clip SFT score stds; 0 = no clipping
    center_critic: bool = True  # start the critic on the scores' scale (initial_state)
    ptx: bool = False  # batches carry pretraining windows (R, epochs * minibatches, T + 1)


def initial_state(spec: Spec, tx: optax.GradientTransformation, kl: ppo.KLController,
                  frozen: dict[str, Any], key: jax.Array, mesh: Any = None, rules: Any = None,
                  offset: float | None = None, policy: Policy | None = None,
                  adapters: Any = None) -> PPOState:
    """Step 0: policy = the SFT model, critic = the reward model (copies: the iteration donates
    the state), and the reward offset / scale measured on the SFT policy's own answers to
    frozen['offset_prompts'] ((n, B, P) tokens, (n, B) lengths) with PPO's sampling settings.
    With n = 0 the offset is `offset` (default 0) and the scale 1. LoRA (`policy`): the policy
    is `adapters` (fresh, B = 0) on frozen['ref'].

    The critic starts as the reward model read at every prefix, moved to the scale of the
    scores it learns to predict (center_critic): its head (w, b) becomes ((w, b − offset) /
    scale) with normalize_scores, (w, b − offset) without. Started at the raw reward model (as
    before; center_critic=False), its values are off by the offset at every token, which GAE
    turns into an advantage of offset · λ^(T−t) on the answer's last tokens, whatever they are,
    for the iterations the clipped value loss (vf_clip per update) takes to unlearn it."""
    view = policy or Policy(spec.cfg)
    trained, value = jax.tree.map(jnp.copy, (frozen["ref"] if adapters is None else adapters,
                                             frozen["reward"]))
    decode = view.sampling_params(trained, frozen["ref"])
    tokens, lengths = frozen["offset_prompts"]
    if tokens.shape[0] == 0:
        offset = jnp.asarray(0.0 if offset is None else offset, jnp.float32)
        scale = jnp.ones((), jnp.float32)
    else:
        def one(args):
            i, p, n = args
            s = rollout.sample(decode, spec.cfg, p, n, jax.random.fold_in(key, i), spec.rc,
                               mesh, rules)
            raw, cut = raw_scores(spec, frozen["reward"], s)
            return raw, cut

        raw, cut = jax.lax.map(one, (jnp.arange(tokens.shape[0]), tokens, lengths))
        w = (~cut if spec.truncated != "end" else jnp.ones_like(cut)).astype(jnp.float32)
        w = jnp.where(w.sum() > 0, w, jnp.ones_like(w))  # every answer cut: all of them
        offset = (raw * w).sum() / w.sum()
        scale = jnp.sqrt(((raw - offset) ** 2 * w).sum() / w.sum())
        scale = jnp.where(scale > 0, scale, 1.0)
    unit = scale if spec.normalize_scores else jnp.ones((), jnp.float32)
    if spec.center_critic:
        value = critic_on_score_scale(value, offset, unit)
    return PPOState(step=jnp.zeros((), jnp.int32), params=trained, value_params=value,
                    opt_state=tx.init({"policy": trained, "value": value}), kl=kl,
                    reward_offset=offset, reward_scale=scale)


def critic_on_score_scale(value: Any, offset: jax.Array, unit: jax.Array) -> Any:
    """A ValueModel tree whose every reading is (reward model − offset) / unit: the head
    v = h·w + b becomes h·(w / unit) + (b − offset) / unit."""
    head = value["head"]
    return {**value, "head": {**head, "kernel": head["kernel"] / unit,
                              "bias": (head["bias"] - offset) / unit}}


def raw_scores(spec: Spec, reward_params: Any, s: rollout.Samples) -> tuple[jax.Array, jax.Array]:
    """(raw reward-model scores (B,), truncated flags (B,)) of sampled answers; with
    truncated='end' a cut answer is scored with the end token appended."""
    n = s.sample_logprobs.shape[1]
    cut = monitors.truncated(s.tokens[:, -n:], s.response_lengths, spec.rc.eos_id)
    if spec.truncated == "end":
        ext = jnp.concatenate([s.tokens, jnp.full_like(s.tokens[:, :1], spec.rc.eos_id)], 1)
        raw = rollout.reward_scores(reward_params, spec.value_cfg, ext, s.prompt_lengths,
                                    s.response_lengths + cut, n + 1)
    else:
        raw = rollout.reward_scores(reward_params, spec.value_cfg, s.tokens, s.prompt_lengths,
                                    s.response_lengths, n)
    return raw, cut


def scores_of(spec: Spec, state: PPOState, raw: jax.Array, cut: jax.Array) -> jax.Array:
    """The scores PPO optimises, in units u = reward_scale (the SFT answers' score std) with
    normalize_scores, else 1:

        score = (raw − offset) / u,  clipped to ±score_clip · reward_scale / u when
                score_clip > 0,  then the truncation rule (penalty: −truncated_penalty ·
                reward_scale / u)
    """
    unit = state.reward_scale if spec.normalize_scores else jnp.ones_like(state.reward_scale)
    sd = state.reward_scale / unit  # one SFT score std in the scores' units
    scores = (raw - state.reward_offset) / unit
    if spec.score_clip > 0:
        scores = jnp.clip(scores, -spec.score_clip * sd, spec.score_clip * sd)
    if spec.truncated == "penalty":
        scores = jnp.where(cut, -spec.truncated_penalty * sd, scores)
    return scores


def read(spec: Spec, state: PPOState, s: rollout.Samples, frozen: dict[str, Any],
         policy: Policy | None = None) -> tuple[rollout.Rollout, dict[str, jax.Array]]:
    """The scoring phase's reading of the samples: a Rollout (masked log-probs, values, scores)
    and the answer monitors."""
    cfg, n = spec.cfg, s.sample_logprobs.shape[1]
    tokens, plen, rlen = s.tokens, s.prompt_lengths, s.response_lengths
    raw, cut = raw_scores(spec, frozen["reward"], s)
    scores = scores_of(spec, state, raw, cut)
    mask = rollout.response_mask(rlen, n)
    stats = monitors.answer_stats(tokens[:, -n:], rlen, mask, scores, cut, frozen["tables"])
    stats["rm_score"] = (raw - state.reward_offset).mean()  # in the reward model's units
    if spec.truncated == "mask":
        mask = mask * (1.0 - cut.astype(jnp.float32))[:, None]

    def masked(x):
        return jnp.where(mask > 0, x, 0.0)

    logp, _ = (policy or Policy(cfg)).logprobs(state.params, frozen["ref"], tokens, plen, n)
    ref, _ = rollout.policy_logprobs(frozen["ref"], cfg, tokens, plen, n)
    values = rollout.token_values(state.value_params, spec.value_cfg, tokens, plen, n)
    r = rollout.Rollout(tokens, plen, rlen, s.sample_logprobs, mask, masked(logp), masked(ref),
                        masked(values), scores)
    return r, stats


def make_phases(spec: Spec, tx: optax.GradientTransformation, schedule: optax.Schedule,
                seed: int, mesh: Any = None, rules: Any = None, policy: Policy | None = None):
    """(rollout, scoring, update): fn(state, carry, frozen) -> carry, the last -> (state,
    metrics). Keys: fold_in(seed, step), split into the rollout's and the update's. policy:
    how the state's params are the policy (default: the GPT tree itself; or LoRA adapters)."""
    policy = policy or Policy(spec.cfg)
    hp = spec.hp
    base = jax.random.key(seed)
    forward = rollout.make_forward(spec.cfg, spec.value_cfg, spec.rc.max_new_tokens)
    model = GPT(spec.cfg)

    def ptx_loss(params, tokens):  # -log pi of pretraining windows (B, T + 1)
        return losses.lm_loss(model.apply({"params": params["policy"]}, tokens[:, :-1]),
                              tokens[:, 1:])

    def loss_fn_of(ref):  # the losses of the state's {'policy', 'value'} (LoRA: on ref)
        return ppo.make_loss_fn(policy.reading(forward, ref, "policy"), hp,
                                policy.reading(ptx_loss, ref, "policy") if spec.ptx else None)

    def keys(state):
        return jax.random.split(jax.random.fold_in(base, state.step))

    def rollout_phase(state, batch, frozen):
        samples = rollout.sample(policy.sampling_params(state.params, frozen["ref"]), spec.cfg,
                                 batch["prompts"], batch["lengths"], keys(state)[0], spec.rc,
                                 mesh, rules)
        return {"samples": samples, "ptx": batch.get("ptx")}

    def scoring_phase(state, carry, frozen):
        r, stats = read(spec, state, carry["samples"], frozen, policy)
        batch, ppo_stats = rollout.to_transitions(r, state.kl.beta, hp)
        return {"batch": batch, "stats": {**ppo_stats, **stats}, "ptx": carry["ptx"]}

    def update_phase(state, carry, frozen):
        ptx = carry["ptx"]
        if ptx is not None:  # (R, E * M, T + 1), rows first -> (E, M, R, T + 1)
            ptx = jnp.swapaxes(ptx, 0, 1).reshape(hp.epochs, hp.num_minibatches,
                                                  *ptx.shape[:1], *ptx.shape[2:])
        train = {"policy": state.params, "value": state.value_params}
        train, opt_state, m = ppo.ppo_update(train, state.opt_state, carry["batch"],
                                             loss_fn_of(frozen["ref"]), tx, keys(state)[1],
                                             hp.epochs, hp.num_minibatches, ptx)
        n_rows = carry["batch"].mask.shape[0]
        metrics = {**carry["stats"], **m, "beta": state.kl.beta,
                   "lr": schedule(state.step * hp.epochs * hp.num_minibatches),
                   "reward_offset": state.reward_offset}
        new = state.replace(step=state.step + 1, params=train["policy"],
                            value_params=train["value"], opt_state=opt_state,
                            kl=ppo.update_kl(state.kl, carry["stats"]["kl"], n_rows))
        return new, metrics

    return rollout_phase, scoring_phase, update_phase


def make_eval(spec: Spec, seed: int, mesh: Any = None, rules: Any = None,
              policy: Policy | None = None):
    """eval(state, data, frozen) -> greedy and sampled answers to data['prompts'] with their
    scores (as PPO scores them), and the policy's LM loss on data['ptx_val'] windows
    (R, n, T + 1) when given: how far the policy has drifted from the pretraining text."""
    base = jax.random.fold_in(jax.random.key(seed), 0x4556)
    n = spec.rc.max_new_tokens
    model = GPT(spec.cfg)
    policy = policy or Policy(spec.cfg)

    def eval_fn(state, data, frozen):
        out, params = {}, policy.sampling_params(state.params, frozen["ref"])
        key = jax.random.fold_in(base, state.step)
        for mode, temperature in (("greedy", 0.0), ("sampled", spec.rc.temperature)):
            rc = dataclasses.replace(spec.rc, samples_per_prompt=1, temperature=temperature)
            s = rollout.sample(params, spec.cfg, data["prompts"], data["lengths"], key, rc,
                               mesh, rules)
            raw, cut = raw_scores(spec, frozen["reward"], s)
            out.update({f"{mode}_tokens": s.tokens[:, -n:], f"{mode}_lengths": s.response_lengths,
                        f"{mode}_scores": scores_of(spec, state, raw, cut),
                        f"{mode}_truncated": cut})
        if "ptx_val" in data:
            windows = jnp.swapaxes(data["ptx_val"], 0, 1)  # (n, R, T + 1)

            def loss(w):
                return losses.lm_loss(model.apply({"params": params}, w[:, :-1]), w[:, 1:])
            out["ptx_loss"] = jax.lax.map(loss, windows).mean()
        return out

    return eval_fn
