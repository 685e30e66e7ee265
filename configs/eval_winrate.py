"""Stage `eval`: the win rate of model A over model B, judged by a reward model.

    python -m gptjax.eval --config configs/eval_winrate.py --config.eval.a=runs/ppo \
        --config.eval.b=runs/sft --config.eval.judge=runs/reward_b \
        [--config.eval.base=runs/pretrain] --workdir runs/eval_ppo_vs_sft

A and B answer the 80 Vicuna questions twice each with the same sampling settings; the judge
scores every answer by its text. Beside the win rate: the judge's own accuracy on its held-out
hh-rlhf pairs (a judge at chance decides nothing), the answers' degeneration measures, and
their perplexity under eval.base when given.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "eval"
    c.eval.win_rate.enabled = True
    c.eval.win_rate.prompts = "vicuna"  # or mt-bench, hh-rlhf (held-out prompts), a .jsonl
    c.eval.win_rate.samples_per_prompt = 2
    c.eval.win_rate.max_new_tokens = 64
    c.eval.win_rate.temperature = 0.7
    c.eval.reward_accuracy.enabled = True  # of eval.judge
    c.eval.reward_accuracy.mixture = "hh-rlhf"
    return c
