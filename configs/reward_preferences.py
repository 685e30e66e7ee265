"""Stage `reward`: a reward model on human preferences, started from an SFT workdir.

    python -m gptjax.train --config configs/reward_preferences.py --config.init_from=runs/sft \
        --workdir runs/reward

All K answers of a prompt share a batch (train.batch_size counts prompts). After training:
held-out pairwise accuracy in reward_eval.json, and the SFT model's mean reward (the offset
later scores subtract) in reward_normalization.json.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "reward"
    c.data.mixture = "hh-rlhf,finegrained-rlhf"
    c.data.val_fraction = 0.1
    c.train.steps = 500
    c.train.batch_size = 8
    c.train.eval_every = 100
    c.train.eval_batches = 8
    c.train.checkpoint_every = 250
    c.optim.lr = 1e-4
    c.optim.min_lr = 1e-5
    c.optim.warmup_steps = 20
    c.optim.decay_steps = 500
    return c
