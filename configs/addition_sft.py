"""The addition task's tiny model, step 2: SFT on the 400 worked examples as chat turns.

    python -m gptjax.train --config configs/addition_sft.py \
        --config.init_from=runs/addition_pretrain --workdir runs/addition_sft

Data set `addition` (gptjax/data/addition.py, generated, shipped with the package): the user
asks "47+586", the assistant answers "7+6=13 4+8+1=13 0+5+1=6 so 633". Then
configs/grpo_addition.py.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "sft"
    c.data.mixture = "addition"
    c.data.val_fraction = 0.05
    c.train.batch_size = 32
    c.train.steps = 300
    c.train.log_every = 50
    c.train.eval_every = 100
    c.train.eval_batches = 2
    c.train.checkpoint_every = 300
    c.optim.lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_steps = 20
    c.optim.decay_steps = 300
    return c
