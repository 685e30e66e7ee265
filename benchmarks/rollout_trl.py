"""The TRL side of `benchmarks/rollout.py`: TRL's PPO and RLOO trainers, timed per iteration.

Run by `rollout.py` with a peer virtual environment's Python (it imports neither jax nor
gptjax): `python benchmarks/rollout_trl.py ppo|rloo SPEC_JSON`; prints one line
`RESULT {json}`.

- `ppo`: `trl.experimental.ppo.PPOTrainer` (TRL 1.12.0, the newest release that ships it):
  policy, reference, critic and reward model, the rollout of `per_device_train_batch_size`
  queries, then `num_ppo_epochs` x `num_mini_batches` clipped-PPO steps. It has no K answers per
  prompt, so each prompt is repeated K times in the data set: B * K queries an iteration.
- `rloo`: `trl.RLOOTrainer` (TRL 1.16.0): `num_generations` = K answers to each of B prompts,
  the reward model as a reward function (TRL decodes the answers to text and tokenizes them again
  for it), `num_iterations` = epochs over each generation batch; no critic.

Same shapes as the gptjax side: random-init `transformers` GPT-2 models (the policy, and
`GPT2ForSequenceClassification` with one label for critic and reward model; the reference is a
copy of the policy), prompts of P random tokens in [1, V), sampling at temperature 1 with no
top-k / top-p, every answer N tokens long (no stop token; RLOO's end token is suppressed with
`min_new_tokens`). The tokenizer is made in memory (a word-level vocabulary 't0' .. 't{V-1}';
't0' pads), so nothing is downloaded.

Timing: a callback stamps the end of each iteration (PPO: each `on_step_end`; RLOO: every
`epochs * minibatches` optimizer steps); wrappers around the trainers' own functions give the
split: rollout = generation (PPO `batch_generation`; RLOO `_generate`: tokenize, `generate`,
decode), scoring = the no-grad forwards of reference, critic and reward model (PPO `forward` /
`get_reward` outside autograd; RLOO the rest of `_generate_and_score_completions`), update = the
remainder of the iteration (GAE and whitening on PPO's side, the optimizer steps).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
import transformers

CORES = len(os.sched_getaffinity(0))


def prompt_tokens(spec: dict[str, Any], batch: int) -> np.ndarray:
    """The gptjax side's prompts (rollout_gptjax.prompt_tokens): seed 0, tokens in [1, V)."""
    rng = np.random.default_rng(0)
    return rng.integers(1, spec["model"]["vocab_size"], (batch, spec["prompt_len"]),
                        dtype=np.int32)


def tokenizer(vocab: int) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="t0",
                                               eos_token="t0", padding_side="left")
    return tok


def gpt2_config(spec: dict[str, Any], **kw) -> transformers.GPT2Config:
    m = spec["model"]
    return transformers.GPT2Config(
        vocab_size=m["vocab_size"], n_positions=m["block_size"], n_layer=m["n_layer"],
        n_head=m["n_head"], n_embd=m["n_embd"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, summary_first_dropout=0.0, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, **kw)


def models(spec: dict[str, Any]):
    torch.manual_seed(0)
    policy = transformers.GPT2LMHeadModel(gpt2_config(spec))
    ref = transformers.GPT2LMHeadModel(gpt2_config(spec))
    ref.load_state_dict(policy.state_dict())
    reward = transformers.GPT2ForSequenceClassification(gpt2_config(spec, num_labels=1))
    value = transformers.GPT2ForSequenceClassification(gpt2_config(spec, num_labels=1))
    value.load_state_dict(reward.state_dict())
    return policy, ref, value, reward


def now() -> tuple[float, float]:
    """(wall, CPU) clocks; CPU time is the process's, all threads (see rollout_gptjax.now)."""
    return time.perf_counter(), time.process_time()


class Clock:
    """Wall and CPU seconds spent inside wrapped functions, per phase, and iteration ends."""

    PHASES = ("rollout", "scoring")

    def __init__(self):
        self.phase = {k: [] for k in self.PHASES}
        self.current = {k: [0.0, 0.0] for k in self.PHASES}
        self.ends: list[tuple[float, float]] = []
        self.start = now()

    def add(self, phase: str, t: tuple[float, float], sign: float = 1.0) -> None:
        w, c = now()
        self.current[phase][0] += sign * (w - t[0])
        self.current[phase][1] += sign * (c - t[1])

    def wrap(self, fn, phase: str, only_no_grad: bool = False):
        @functools.wraps(fn)
        def timed(*a, **kw):
            if only_no_grad and torch.is_grad_enabled():
                return fn(*a, **kw)
            t = now()
            try:
                return fn(*a, **kw)
            finally:
                self.add(phase, t)
        return timed

    def end_iteration(self) -> None:
        self.ends.append(now())
        for k in self.current:
            self.phase[k].append(tuple(self.current[k]))
            self.current[k] = [0.0, 0.0]

    def result(self, warmup: int) -> dict[str, Any]:
        stamps = [self.start] + self.ends
        r: dict[str, Any] = {}
        for j, suffix in ((0, "_s"), (1, "_cpu_s")):
            total = [b[j] - a[j] for a, b in zip(stamps, stamps[1:])]
            if j == 0:
                r["first_s"] = total[:warmup]
            r["iteration" + suffix] = total[warmup:]
            for k, v in self.phase.items():
                r[k + suffix] = [x[j] for x in v[warmup:]]
            r["update" + suffix] = [t - a - b for t, a, b in zip(
                r["iteration" + suffix], r["rollout" + suffix], r["scoring" + suffix])]
        return r


def callback(clock: Clock, steps_per_iteration: int):
    class Stamp(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.start = now()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % steps_per_iteration == 0:
                clock.end_iteration()
    return Stamp()


def run_ppo(spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    import datasets
    from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer

    clock = Clock()
    ppo_trainer.batch_generation = clock.wrap(ppo_trainer.batch_generation, "rollout")
    ppo_trainer.forward = clock.wrap(ppo_trainer.forward, "scoring", only_no_grad=True)
    ppo_trainer.get_reward = clock.wrap(ppo_trainer.get_reward, "scoring", only_no_grad=True)
    b, k = spec["prompts"], spec["samples"]
    rows = b * k
    iters = spec["warmup"] + spec["iters"]
    queries = np.repeat(prompt_tokens(spec, b), k, axis=0)  # K copies of each prompt
    data = datasets.Dataset.from_dict({"input_ids": queries.tolist()})
    args = PPOConfig(
        # One micro-batch per minibatch (TRL's gradient accumulation would merge minibatches).
        output_dir=out_dir, per_device_train_batch_size=rows, gradient_accumulation_steps=1,
        num_mini_batches=spec["minibatches"],
        num_ppo_epochs=spec["epochs"], response_length=spec["new_tokens"],
        local_rollout_forward_batch_size=rows, total_episodes=iters * rows, temperature=1.0,
        stop_token=None, missing_eos_penalty=None, learning_rate=1e-5, kl_coef=0.2,
        num_sample_generations=0, report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=1, use_cpu=True, seed=0, bf16=False, fp16=False,
        gradient_checkpointing=False)
    policy, ref, value, reward = models(spec)
    tok = tokenizer(spec["model"]["vocab_size"])
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=data,
                         eval_dataset=data.select(range(rows)),
                         callbacks=[callback(clock, 1)])
    trainer.log = lambda logs, *a, **kw: None  # metrics are computed, not printed
    trainer.train()
    import trl
    return dict(clock.result(spec["warmup"]), trl=trl.__version__,
                iterations=len(clock.ends))


def run_rloo(spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    import datasets
    from trl import RLOOConfig, RLOOTrainer

    clock = Clock()
    RLOOTrainer._generate = clock.wrap(RLOOTrainer._generate, "rollout")
    inner = RLOOTrainer._generate_and_score_completions

    @functools.wraps(inner)
    def scored(self, *a, **kw):
        t, before = now(), list(clock.current["rollout"])
        try:
            return inner(self, *a, **kw)
        finally:  # minus the rollout it called
            clock.add("scoring", t)
            for j in (0, 1):
                clock.current["scoring"][j] -= clock.current["rollout"][j] - before[j]
    RLOOTrainer._generate_and_score_completions = scored

    b, k = spec["prompts"], spec["samples"]
    rows = b * k
    steps = spec["epochs"] * spec["minibatches"]
    iters = spec["warmup"] + spec["iters"]
    texts = [" ".join(f"t{t}" for t in row) for row in prompt_tokens(spec, b * iters)]
    data = datasets.Dataset.from_dict({"prompt": texts})
    n = spec["new_tokens"]
    args = RLOOConfig(
        output_dir=out_dir, per_device_train_batch_size=rows // spec["minibatches"],
        gradient_accumulation_steps=1, steps_per_generation=spec["minibatches"],
        num_iterations=spec["epochs"], num_generations=k, max_completion_length=n,
        generation_kwargs={"min_new_tokens": n}, temperature=1.0, top_p=1.0, top_k=0,
        max_steps=iters * steps, learning_rate=1e-5, beta=0.05, report_to="none",
        save_strategy="no", disable_tqdm=True, logging_steps=1, use_cpu=True, seed=0,
        bf16=False, fp16=False, shuffle_dataset=False, gradient_checkpointing=False)
    policy, _, _, reward = models(spec)
    # RLOO builds its reference model from the policy's name_or_path: a local folder here.
    policy_dir = os.path.join(out_dir, "policy")
    policy.save_pretrained(policy_dir)
    tok = tokenizer(spec["model"]["vocab_size"])
    trainer = RLOOTrainer(model=policy_dir, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tok, reward_processing_classes=tok,
                          callbacks=[callback(clock, steps)])
    trainer.train()
    import trl
    return dict(clock.result(spec["warmup"]), trl=trl.__version__,
                iterations=len(clock.ends))


def main() -> int:
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(spec.get("torch_threads") or CORES)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        r = run_ppo(spec, tmp) if mode == "ppo" else run_rloo(spec, tmp)
    r.update(torch=torch.__version__, transformers=transformers.__version__,
             threads=torch.get_num_threads())
    print("RESULT " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
