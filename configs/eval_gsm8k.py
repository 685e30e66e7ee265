"""Stage `eval`: GSM8K exact match of the final number, greedy, on the first test questions.

    python -m gptjax.eval --config configs/eval_gsm8k.py --config.eval.models=runs/sft,runs/ppo \
        --workdir runs/eval_gsm8k
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "eval"
    c.eval.gsm8k.enabled = True
    c.eval.gsm8k.max_questions = 100
    c.eval.gsm8k.max_new_tokens = 192
    return c
