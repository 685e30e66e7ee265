"""Pretrain a small GPT on the classical Chinese corpus of configs/prepare_chinese_classics.py.

Reads the token shards and the sentencepiece tokenizer that the prepare run wrote (run it first,
with the same workdir as data.prepared_dir):

    python -m gptjax.train --config configs/prepare_chinese_classics.py \\
        --workdir runs/prepare_chinese_classics
    python -m gptjax.train --config configs/pretrain_chinese_classics.py \\
        --workdir runs/chinese_classics
    python -m gptjax.sample --workdir runs/chinese_classics --prompt "春风"
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.data.prepared_dir = "runs/prepare_chinese_classics"
    c.model.vocab_size = 12000  # = prepare.tokenizer.vocab_size of the prepare config
    c.model.block_size = 128
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.n_embd = 256
    c.model.dropout = 0.0
    c.model.bias = False
    c.train.batch_size = 16
    c.train.steps = 3000
    c.train.eval_every = 250
    c.train.checkpoint_every = 500
    c.optim.lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_steps = 100
    c.optim.decay_steps = 3000
    c.optim.b2 = 0.99
    c.runtime.cpu_devices = -1
    return c
