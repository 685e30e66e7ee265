"""The gptjax side of `benchmarks/rollout.py`: PPO iterations and rollouts, timed in one process.

Run by `rollout.py` as `python benchmarks/rollout_gptjax.py MODE SPEC_JSON`; prints one line
`RESULT {json}`. Built only from the pure pieces (`gptjax.rl.rollout`, `gptjax.rl.ppo`,
`gptjax.sampling`, `gptjax.optim`), with random weights and random prompt tokens:

- mode `iteration`: one PPO iteration as one jitted program (sample K answers per prompt,
  read them with policy, reference, critic and reward model, KL-shaped rewards, GAE, then
  epochs x minibatches clipped-PPO AdamW steps on policy and critic, the KL controller), as the
  `ppo` stage runs it; and the same work as three jitted programs (rollout = `rollout.sample`,
  scoring = `rollout.evaluate` + `rollout.to_transitions`, update = `ppo.ppo_update` +
  `ppo.update_kl`), each waited for, which gives the time split. The two alternate.
- mode `loop`: `jit(rollout.sample)` (K answers per prompt, vmapped over K, one program) against
  a Python loop over prompts and samples calling `sampling.generate` once per answer (batch 1),
  with the same per-answer keys, so the answers are the same draws; the two alternate.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

from gptjax import optim, sampling  # noqa: E402
from gptjax.model import GPT, GPTConfig, ValueModel  # noqa: E402
from gptjax.rl import ppo, rollout  # noqa: E402


def model_config(spec: dict[str, Any]) -> GPTConfig:
    m = spec["model"]
    return GPTConfig(vocab_size=m["vocab_size"], block_size=m["block_size"],
                     n_layer=m["n_layer"], n_head=m["n_head"], n_embd=m["n_embd"],
                     bias=m["bias"], dropout=0.0)


def prompt_tokens(spec: dict[str, Any], batch: int) -> np.ndarray:
    """(B, P) random prompt tokens in [1, V) (0 is the peers' pad token), the same on every
    side (seed 0). Every prompt fills its P slots, so no side pads."""
    rng = np.random.default_rng(0)
    return rng.integers(1, spec["model"]["vocab_size"], (batch, spec["prompt_len"]),
                        dtype=np.int32)


def init_params(cfg: GPTConfig) -> tuple[Any, Any]:
    """Random (policy, reward model) parameters, seed 0."""
    import flax.linen as nn
    k1, k2 = jax.random.split(jax.random.key(0))
    tokens = jnp.zeros((1, 8), jnp.int32)
    return (nn.unbox(GPT(cfg).init(k1, tokens)["params"]),
            nn.unbox(ValueModel(cfg).init(k2, tokens)["params"]))


def settings(spec: dict[str, Any]) -> tuple[rollout.RolloutConfig, ppo.PPOConfig, Any]:
    """Sampling at temperature 1 with no top-k / top-p and no end token (every answer runs
    N tokens, as on the peers' side); configs/ppo.py's PPO and optimizer settings."""
    rc = rollout.RolloutConfig(samples_per_prompt=spec["samples"],
                               max_new_tokens=spec["new_tokens"], temperature=1.0, top_k=0,
                               top_p=1.0, eos_id=None)
    hp = ppo.PPOConfig(epochs=spec["epochs"], num_minibatches=spec["minibatches"])
    o = ml_collections.ConfigDict(dict(lr=1e-5, min_lr=1e-5, warmup_steps=10, decay_steps=3200,
                                       b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                                       weight_decay_mask="matrices", grad_clip=1.0))
    return rc, hp, optim.make_optimizer(o)


def block(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def now() -> tuple[float, float]:
    """(wall, CPU) clocks. CPU time is the process's, all threads: on a loaded machine it
    counts the work done, where wall time also counts the waits for a core."""
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> tuple[float, float]:
    w, c = now()
    return w - t[0], c - t[1]


def record(out: dict[str, Any], name: str, wall_cpu: tuple[float, float]) -> None:
    out.setdefault(f"{name}_s", []).append(wall_cpu[0])
    out.setdefault(f"{name}_cpu_s", []).append(wall_cpu[1])


class Iteration(NamedTuple):
    """One PPO iteration of a spec, two ways: `fused(state, key)` one jitted program (what the
    `ppo` stage runs), `split(state, key)` three (rollout, scoring, update), each waited for and
    timed. Both -> (state, metrics[, {phase: (wall, cpu)}]); state = (train, opt_state, kl)."""

    fused: Callable
    split: Callable
    initial_state: Callable
    cfg: GPTConfig


def build(spec: dict[str, Any]) -> Iteration:
    cfg = model_config(spec)
    rc, hp, tx = settings(spec)
    b, n = spec["prompts"], rc.max_new_tokens
    rows = b * rc.samples_per_prompt
    policy, reward = init_params(cfg)
    frozen = {"ref": policy, "reward": reward}  # frozen; the trained pair starts as copies
    prompts = jnp.asarray(prompt_tokens(spec, b))
    lengths = jnp.full((b,), spec["prompt_len"], jnp.int32)
    loss_fn = ppo.make_loss_fn(rollout.make_forward(cfg, cfg, n), hp)
    static = dict(cfg=cfg, value_cfg=cfg, reward_cfg=cfg, rc=rc)

    def update(train, opt_state, kl, batch, stats, key):
        train, opt_state, m = ppo.ppo_update(train, opt_state, batch, loss_fn, tx, key,
                                             hp.epochs, hp.num_minibatches)
        return train, opt_state, ppo.update_kl(kl, stats["kl"], rows), m

    def iteration(train, opt_state, kl, frozen, prompts, lengths, key):
        k_rollout, k_update = jax.random.split(key)
        params = rollout.RolloutParams(train["policy"], frozen["ref"], train["value"],
                                       frozen["reward"])
        r = rollout.rollout(params, prompts, lengths, k_rollout, **static)
        batch, stats = rollout.to_transitions(r, kl.beta, hp)
        train, opt_state, kl, m = update(train, opt_state, kl, batch, stats, k_update)
        return train, opt_state, kl, {**stats, **m}

    def score(train, frozen, samples, beta):
        params = rollout.RolloutParams(train["policy"], frozen["ref"], train["value"],
                                       frozen["reward"])
        r = rollout.evaluate(params, samples, cfg, cfg, cfg, rc)
        return rollout.to_transitions(r, beta, hp)

    iteration_j = jax.jit(iteration, donate_argnums=(0, 1))
    sample_j = jax.jit(lambda pol, pr, ln, key: rollout.sample(pol, cfg, pr, ln, key, rc))
    score_j = jax.jit(score)
    update_j = jax.jit(update, donate_argnums=(0, 1))

    def fused(state, key):
        train, opt, kl, m = iteration_j(*state, frozen, prompts, lengths, key)
        return block((train, opt, kl)), block(m)

    def split(state, key):
        train, opt, kl = state
        k_rollout, k_update = jax.random.split(key)
        t = now()
        samples = block(sample_j(train["policy"], prompts, lengths, k_rollout))
        times, t = {"rollout": since(t)}, now()
        batch, stats = block(score_j(train, frozen, samples, kl.beta))
        times["scoring"], t = since(t), now()
        train, opt, kl, m = block(update_j(train, opt, kl, batch, stats, k_update))
        times["update"] = since(t)
        return (train, opt, kl), {**stats, **m}, times

    def initial_state():
        """The start of the `ppo` stage: policy = reference, critic = reward model (copies)."""
        train = {"policy": jax.tree.map(jnp.copy, policy),
                 "value": jax.tree.map(jnp.copy, reward)}
        return train, tx.init(train), ppo.adaptive_kl(0.2, 6.0, 10000.0)

    return Iteration(fused, split, initial_state, cfg)


def run_iterations(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up (compile), then spec['iters'] timed iterations of each form, alternating on one
    training state (a second copy would double the memory: gigabytes at 124M)."""
    it = build(spec)
    state = it.initial_state()
    base = jax.random.key(1)
    out: dict[str, Any] = {}
    t = now()
    state, first = it.fused(state, jax.random.fold_in(base, 0))
    compile_fused = since(t)[0]
    t = now()
    state, _, _ = it.split(state, jax.random.fold_in(base, 0))
    compile_split = since(t)[0]
    for i in range(1, spec["iters"] + 1):
        t = now()
        state, last = it.fused(state, jax.random.fold_in(base, i))
        record(out, "fused", since(t))
        state, _, times = it.split(state, jax.random.fold_in(base, i))
        for phase, wall_cpu in times.items():
            record(out, phase, wall_cpu)
    split = [sum(x) for x in zip(out["rollout_s"], out["scoring_s"], out["update_s"])]
    out["compile_s"] = {"fused": compile_fused - statistics.median(out["fused_s"]),
                        "split": compile_split - statistics.median(split)}
    out["metrics_first"] = {k: float(v) for k, v in first.items()}
    out["metrics_last"] = {k: float(v) for k, v in last.items()}
    out["params"] = it.cfg.num_params(non_embedding=False)
    out["jax"] = jax.__version__
    return out


def run_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """jit(rollout.sample) vs one `sampling.generate` call per answer, alternating."""
    cfg = model_config(spec)
    rc, _, _ = settings(spec)
    b, k, n = spec["prompts"], rc.samples_per_prompt, rc.max_new_tokens
    policy, _ = init_params(cfg)
    prompts_np = prompt_tokens(spec, b)
    prompts = jnp.asarray(prompts_np)
    lengths = jnp.full((b,), spec["prompt_len"], jnp.int32)
    key = jax.random.key(2)
    sample_j = jax.jit(lambda pol, pr, ln, key: rollout.sample(pol, cfg, pr, ln, key, rc))
    # The loop, made as cheap as a loop can be: its inputs sliced and its keys split in advance,
    # every call dispatched without waiting for the previous one (one wait at the end).
    keys = jax.random.split(key, (k, b))  # the (K, B) grid `rollout.sample` splits
    one_prompt = [(jnp.asarray(prompts_np[i:i + 1]), jnp.full((1,), spec["prompt_len"],
                                                              jnp.int32)) for i in range(b)]
    one_key = [[keys[j, i][None] for j in range(k)] for i in range(b)]

    def loop():
        return [[sampling.generate(policy, cfg, *one_prompt[i], one_key[i][j], n,
                                   rc.temperature, rc.top_k, rc.top_p, rc.eos_id)[0]
                 for j in range(k)] for i in range(b)]

    def vmapped():
        return sample_j(policy, prompts, lengths, key).tokens

    times: dict[str, Any] = {}
    first, outs = {}, {}
    for name, fn in (("one_jit", vmapped), ("loop", loop)):
        t = now()
        outs[name] = block(fn())
        first[name] = since(t)[0]
    for _ in range(spec["repeats"]):
        for name, fn in (("one_jit", vmapped), ("loop", loop)):
            t = now()
            outs[name] = block(fn())
            record(times, name, since(t))
    one = np.asarray(outs["one_jit"])[:, spec["prompt_len"]:]  # (B * K, N) prompt-major
    looped = np.stack([np.asarray(outs["loop"][i][j])[0] for i in range(b) for j in range(k)])
    return {**times, "first_s": first, "answers": b * k,
            "same_answers": int((one == looped).all(axis=1).sum()),
            "same_tokens": float((one == looped).mean())}


def main() -> int:
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    result = run_iterations(spec) if mode == "iteration" else run_loop(spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
