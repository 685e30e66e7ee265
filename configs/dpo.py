"""Stage `dpo`: direct preference optimisation of an SFT workdir on human preference pairs.

    python -m gptjax.train --config configs/dpo.py --config.init_from=runs/sft --workdir runs/dpo

The policy and the frozen reference start from --config.init_from (the SFT workdir). The loss
is DPO's (dpo.loss=sigmoid, beta 0.1 as TRL); dpo.loss=ipo or hinge for IPO / SLiC. Add
--config.lora.rank=16 to train LoRA adapters on the frozen SFT model instead of every weight.
train.batch_size counts preference records (all answers of a record share a batch).
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "dpo"
    c.data.mixture = "hh-rlhf"
    c.data.val_fraction = 0.1
    c.train.steps = 500
    c.train.batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.eval_batches = 8
    c.train.checkpoint_every = 250
    c.optim.lr = 1e-5
    c.optim.min_lr = 1e-6
    c.optim.warmup_steps = 20
    c.optim.decay_steps = 500
    c.optim.weight_decay = 0.0
    return c
