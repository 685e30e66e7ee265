"""Stage `sft`: fine-tune a pretrained workdir on the shipped dialogue sets.

    python -m gptjax.train --config configs/sft_dialogues.py --config.init_from=runs/PRETRAINED \
        --workdir runs/sft

The model shape and tokenizer come from --config.init_from (the chat special tokens are added
if it lacks them); the loss is on the assistant's tokens only. Conversations are packed into
rows of data.seq_len + 1 tokens (0 = the model's block size).
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "sft"
    # Not hh-rlhf by default: the shipped hh-rlhf is the reward model's data, and SFT on its
    # chosen answers would show the reward model its held-out answers (add "hh-rlhf:1" to use it).
    c.data.mixture = "topical-chat:1,self-instruct:0.5,gsm8k:0.5,kdconv:0.5"
    c.data.val_fraction = 0.05
    c.train.steps = 1000
    c.train.batch_size = 16
    c.train.eval_every = 250
    c.train.eval_batches = 8
    c.train.checkpoint_every = 250
    c.optim.lr = 3e-4
    c.optim.min_lr = 3e-5
    c.optim.warmup_steps = 50
    c.optim.decay_steps = 1000
    return c
