"""The README's first pipeline (configs/chatgpt_tiny.py), made small enough for the test suite:
the same stages, data and code, with a 1-layer model, a 512-token BPE and a few steps each.

SFT runs 40 steps with a checkpoint every 10, so a test can kill the pipeline during SFT after a
checkpoint and before SFT ends.
"""

from __future__ import annotations

CONFIG = "configs/chatgpt_tiny.py"

_MODEL = dict(block_size=64, n_layer=1, n_head=2, n_embd=32)
_STAGES = {
    "prepare": {"prepare.tokenizer.vocab_size": 512},
    "pretrain": {"train.steps": 20, "train.batch_size": 8, "train.eval_every": 10,
                 "train.eval_batches": 1, "train.checkpoint_every": 20, "train.log_every": 5,
                 "optim.warmup_steps": 2, "optim.decay_steps": 20,
                 **{f"model.{k}": v for k, v in _MODEL.items()}},
    "sft": {"train.steps": 40, "train.batch_size": 8, "train.eval_every": 20,
            "train.eval_batches": 1, "train.checkpoint_every": 10, "train.log_every": 5,
            "optim.warmup_steps": 2, "optim.decay_steps": 40},
    "reward": {"train.steps": 8, "train.batch_size": 8, "train.eval_every": 8,
               "train.eval_batches": 1, "train.checkpoint_every": 8, "train.log_every": 4,
               "optim.warmup_steps": 2, "optim.decay_steps": 8, "data.max_examples": 200},
    "judge": {"train.steps": 8, "train.batch_size": 8, "train.eval_every": 8,
              "train.eval_batches": 1, "train.checkpoint_every": 8, "train.log_every": 4,
              "optim.warmup_steps": 2, "optim.decay_steps": 8, "data.skip_examples": 200,
              "data.max_examples": 200},
    "ppo": {"train.steps": 3, "train.eval_every": 3, "train.checkpoint_every": 3,
            "ppo.batch_prompts": 8, "ppo.samples_per_prompt": 2, "ppo.max_new_tokens": 8,
            "ppo.epochs": 1, "ppo.num_minibatches": 1, "ppo.offset_prompts": 8,
            "ppo.eval_prompts": 4, "optim.decay_steps": 3},
    "eval_sft": {"eval.win_rate.max_prompts": 8, "eval.win_rate.samples_per_prompt": 1,
                 "eval.win_rate.max_new_tokens": 8, "eval.win_rate.bootstrap": 200,
                 "eval.batch_size": 8},
    "eval_ppo": {"eval.win_rate.max_prompts": 8, "eval.win_rate.samples_per_prompt": 1,
                 "eval.win_rate.max_new_tokens": 8, "eval.win_rate.bootstrap": 200,
                 "eval.batch_size": 8},
}
OVERRIDES = {f"stages.{stage}.{k}": v for stage, kv in _STAGES.items() for k, v in kv.items()}


def flags(progress: bool = False, compile_cache: str = "") -> list[str]:
    """The overrides as command-line flags (`--config.stages.sft.train.steps=40`, ...);
    compile_cache: a folder shared by several runs (JAX's persistent cache)."""
    out = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    if compile_cache:
        out.append(f"--config.compile_cache={compile_cache}")
    if not progress:
        out += [f"--config.stages.{s}.train.progress=False" for s in _STAGES]
    return out
