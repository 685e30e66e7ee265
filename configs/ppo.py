"""Stage `ppo`: RL from the reward model (InstructGPT), started from an SFT workdir.

    python -m gptjax.train --config configs/ppo.py --config.init_from=runs/sft \
        --config.ppo.reward_from=runs/reward --workdir runs/ppo

The policy and the frozen reference are the SFT model; the critic starts from the reward model.
Prompts are those of the reward model's preference data (data.mixture). train.steps counts PPO
iterations: one rollout of batch_prompts x samples_per_prompt answers, then epochs x
num_minibatches optimizer steps. The sampled policy is in the checkpoint's `params`, so
`python -m gptjax.sample --workdir runs/ppo` and `gptjax.chat` read it like any workdir.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "ppo"
    c.data.mixture = "hh-rlhf"
    c.data.val_fraction = 0.1  # the same held-out prompts the reward model was evaluated on
    c.ppo.batch_prompts = 16
    c.ppo.samples_per_prompt = 4
    c.ppo.max_new_tokens = 64
    c.ppo.epochs = 4
    c.ppo.num_minibatches = 4
    c.train.steps = 200  # PPO iterations
    c.train.log_every = 1
    c.train.checkpoint_every = 50
    # A small constant rate (InstructGPT's PPO used ~1e-5), no weight decay (TRL's default).
    c.optim.lr = 1e-5
    c.optim.min_lr = 1e-5
    c.optim.warmup_steps = 10
    c.optim.decay_steps = 3200
    c.optim.weight_decay = 0.0
    return c
