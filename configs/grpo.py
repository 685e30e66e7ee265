"""Stage `grpo`: GRPO / RLOO on GSM8K (final-number exact match), from an SFT workdir.

    python -m gptjax.train --config configs/grpo.py --config.init_from=runs/sft \
        --workdir runs/grpo

GSM8K's train split (data.root/gsm8k) gives the prompts, its test split the held-out ones. The
reward is 1 for the right final number plus 0.1 for ending in "#### N". RLOO instead:
--config.grpo.advantage=rloo --config.grpo.scale=none --config.grpo.kl_in=reward
--config.grpo.kl_kind=k1. Dr. GRPO: --config.grpo.scale=none
--config.grpo.aggregation=fixed_length. Another task: --config.grpo.task=addition or a .jsonl
of {"prompt", "answer"} records.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "grpo"
    c.grpo.task = "gsm8k"
    c.grpo.rewards = "exact_match:1,format:0.1"
    c.grpo.batch_prompts = 16
    c.grpo.samples_per_prompt = 8
    c.grpo.max_new_tokens = 256
    c.grpo.eval_prompts = 200
    c.train.steps = 500  # iterations
    c.train.log_every = 1
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    c.optim.lr = 1e-6  # DeepSeekMath's GRPO rate
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.decay_steps = 500
    c.optim.weight_decay = 0.0
    return c
