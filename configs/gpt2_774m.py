"""GPT-2 774m shape (36 layers, 20 heads, 1280 dims, context 1024, BPE vocabulary 50257).

For accelerators: bfloat16 compute with float32 master weights. On a CPU add
--config.model.dtype=float32.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.model.n_layer = 36
    c.model.n_head = 20
    c.model.n_embd = 1280
    c.model.block_size = 1024
    c.model.vocab_size = 50257
    c.model.dtype = "bfloat16"
    c.train.batch_size = 480  # with grad_accum, ~0.5M tokens per step as in GPT-2/GPT-3
    c.train.grad_accum = 8
    c.train.steps = 600000
    return c
