"""The addition task's tiny model, step 1: learn the characters from the worked examples.

    python -m gptjax.data.addition --text runs/addition.txt --examples 400
    python -m gptjax.train --config configs/addition_pretrain.py \
        --config.data.text_path=runs/addition.txt --workdir runs/addition_pretrain

A 2-layer, 128-wide char GPT on the same 400 worked examples that SFT then trains on
(gptjax/data/addition.py): the whole run sees no other data. benchmarks/grpo_addition.py runs
this, then configs/addition_sft.py, then configs/grpo_addition.py.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.model.vocab_size = 22  # the examples' 17 characters (digits, "+=: so", newline) + 5 specials
    c.model.vocab_multiple = 8
    c.model.block_size = 64
    c.model.n_layer = 2
    c.model.n_head = 4
    c.model.n_embd = 128
    c.model.bias = False
    c.data.val_fraction = 0.1
    c.train.batch_size = 32
    c.train.steps = 600
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.eval_batches = 4
    c.train.checkpoint_every = 600
    c.optim.lr = 2e-3
    c.optim.min_lr = 2e-4
    c.optim.warmup_steps = 50
    c.optim.decay_steps = 600
    c.optim.weight_decay = 0.1
    return c
