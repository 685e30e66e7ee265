"""A tiny model for tests and smoke runs: seconds on one CPU core, shards 8 ways in every layout."""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.model.vocab_size = 70  # Tiny Shakespeare's 65 characters + 5 special tokens
    c.model.block_size = 32
    c.model.n_layer = 2
    c.model.n_head = 8
    c.model.n_embd = 64
    c.train.batch_size = 8
    c.train.steps = 20
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
    c.optim.lr = 1e-3
    c.optim.min_lr = 1e-4
    c.optim.warmup_steps = 5
    c.optim.decay_steps = 20
    return c
