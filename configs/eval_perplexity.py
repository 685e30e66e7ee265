"""Stage `eval`: perplexity on the SFT data's held-out conversations (assistant tokens only).

    python -m gptjax.eval --config configs/eval_perplexity.py \
        --config.eval.models=runs/sft,runs/ppo --workdir runs/eval_ppl

Or on a text file (`--config.eval.perplexity.sft_mixture= --config.eval.perplexity.text_path=F`)
or on a prepare run's validation shards (`...prepared_dir=runs/prepare`).
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "eval"
    c.data.val_fraction = 0.05  # configs/sft_dialogues.py: its held-out split
    c.eval.perplexity.enabled = True
    c.eval.perplexity.sft_mixture = "topical-chat:1,self-instruct:0.5,gsm8k:0.5,kdconv:0.5"
    return c
