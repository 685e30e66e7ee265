"""The TRL side of `benchmarks/grpo_trl.py`: TRL's GRPOTrainer, timed per iteration.

Run by grpo_trl.py with the peer virtual environment's Python (it imports neither jax nor
gptjax): `python benchmarks/grpo_trl_peer.py SPEC_JSON`; prints one line `RESULT {json}`.

`trl.GRPOTrainer` (TRL 1.16.0) on a random-init `transformers` GPT2LMHeadModel of the spec's
shape: B prompts of P random tokens, K = num_generations answers each, every answer N tokens long
(`min_new_tokens` = N, sampling at temperature 1, no top-k / top-p), beta as the spec says (the
reference model is then a copy of the policy), one optimizer step per generation batch
(num_iterations = 1, steps_per_generation = 1: on-policy, as gptjax's side runs). The reward is a
Python function of the decoded completions (the same check on both sides: does the text
contain the token "t1"). The tokenizer is made in memory (a word-level vocabulary 't0' ..
't{V-1}', 't0' pads), so nothing is downloaded. A callback stamps the end of every step.
"""

from __future__ import annotations

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


def tokenizer(vocab: int) -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="t0",
                                                eos_token="t0", padding_side="left")


def reward(completions, **kw) -> list[float]:
    return [1.0 if "t1" in c.split() else 0.0 for c in completions]


def run(spec: dict[str, Any], out_dir: str) -> dict[str, Any]:
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    m, b, k = spec["model"], spec["prompts"], spec["samples"]
    iters = spec["warmup"] + spec["iters"]
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, m["vocab_size"], (b * iters, spec["prompt_len"]))
    data = datasets.Dataset.from_dict({"prompt": [" ".join(f"t{t}" for t in row)
                                                  for row in prompts]})
    torch.manual_seed(0)
    policy = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=m["vocab_size"], n_positions=m["block_size"], n_layer=m["n_layer"],
        n_head=m["n_head"], n_embd=m["n_embd"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0))
    policy_dir = os.path.join(out_dir, "policy")
    policy.save_pretrained(policy_dir)  # the reference model is loaded from the same folder
    n = spec["new_tokens"]
    args = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=b * k, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, num_generations=k, max_completion_length=n,
        generation_kwargs={"min_new_tokens": n}, temperature=1.0, top_p=1.0, top_k=0,
        beta=spec["beta"], max_steps=iters, learning_rate=1e-5, report_to="none",
        save_strategy="no", disable_tqdm=True, logging_steps=1, use_cpu=True, seed=0,
        bf16=False, fp16=False, shuffle_dataset=False, gradient_checkpointing=False)
    ends: list[float] = []

    class Stamp(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    trainer = GRPOTrainer(model=policy_dir, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=tokenizer(m["vocab_size"]), callbacks=[Stamp()])
    t0 = time.perf_counter()
    trainer.train()
    stamps = [t0] + ends
    times = [y - x for x, y in zip(stamps, stamps[1:])]
    import trl
    return {"iteration_s": times[spec["warmup"]:], "first_s": times[:spec["warmup"]],
            "trl": trl.__version__, "iterations": len(ends)}


def main() -> int:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec.get("threads") or CORES)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(spec, tmp)
    r.update(torch=torch.__version__, transformers=transformers.__version__,
             threads=torch.get_num_threads())
    print("RESULT " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
