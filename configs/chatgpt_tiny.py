"""A tiny ChatGPT from raw text, in one command, on a laptop CPU (InstructGPT's recipe):

    python -m gptjax.train --config configs/chatgpt_tiny.py --workdir runs/chatgpt

prepare (clean, filter, dedup the shipped C4 + Wikipedia samples; a 4,000-token BPE) ->
pretrain (a 4-layer, 128-wide GPT, context 128) -> sft (Topical-Chat, Self-Instruct, GSM8K) ->
reward (the first half of the hh-rlhf pairs) -> judge (a second reward model on the other half,
never optimised against) -> ppo (against `reward`, with the pretraining mix) -> eval (win rates of
PPO over SFT and SFT over the base model, judged by `judge`), then runs/chatgpt/report.md and
report.html. Every stage's config is its own configs/ file with the overrides below; change
any of them on the command line, e.g. --config.stages.pretrain.train.steps=1000.
"""

import copy
import os

from gptjax.pipeline import config_file, pipeline_config

HERE = os.path.dirname(os.path.abspath(__file__))
HH_HALF = 1156  # hh-rlhf harmless-base has 2,312 pairs: reward gets the first half, judge the rest


def stage(name):
    return config_file(os.path.join(HERE, f"{name}.py"))


def get_config():
    c = pipeline_config()
    c.name = "chatgpt_tiny"
    c.order = ("prepare", "pretrain", "sft", "reward", "judge", "ppo", "eval_sft", "eval_ppo")
    s = c.stages

    s.prepare = stage("prepare_english")

    s.pretrain = stage("base")
    p = s.pretrain
    p.data.prepared_dir = "@prepare"
    p.model.update(vocab_size=0, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                   bias=False)
    p.train.update(batch_size=16, steps=300, log_every=10, eval_every=100, eval_batches=4,
                   checkpoint_every=100)
    p.optim.update(lr=2e-3, min_lr=2e-4, warmup_steps=30, decay_steps=300, b2=0.99)

    s.sft = stage("sft_dialogues")
    p = s.sft
    p.init_from = "@pretrain"
    p.data.mixture = "topical-chat:1,self-instruct:1,gsm8k:0.5"  # (no Chinese: an English BPE)
    p.train.update(batch_size=16, steps=150, log_every=10, eval_every=50, eval_batches=4,
                   checkpoint_every=50)
    p.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=15, decay_steps=150)

    s.reward = stage("reward_preferences")
    p = s.reward
    p.init_from = "@sft"
    p.data.update(mixture="hh-rlhf", max_examples=HH_HALF)
    p.reward.normalize_prompts = 0  # PPO measures its own offset (ppo.offset_prompts)
    p.train.update(batch_size=8, steps=100, log_every=10, eval_every=50, eval_batches=4,
                   checkpoint_every=50)
    p.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=10, decay_steps=100)

    s.judge = copy.deepcopy(s.reward)  # the same reward stage on the other half of the pairs
    s.judge.data.update(skip_examples=HH_HALF, max_examples=0)

    s.ppo = stage("ppo")
    p = s.ppo
    p.init_from = "@sft"
    p.ppo.update(reward_from="@reward", batch_prompts=8, samples_per_prompt=4, max_new_tokens=32,
                 epochs=2, num_minibatches=2, ptx_coef=1.0, offset_prompts=16, eval_prompts=8)
    p.train.update(steps=20, log_every=1, eval_every=10, checkpoint_every=10)
    p.optim.update(lr=5e-5, min_lr=5e-5, warmup_steps=5, decay_steps=120)

    # Win rates on hh-rlhf prompts PPO held out, judged by `judge` (not the reward model PPO
    # optimised), each answer sampled twice at temperature 0.7 by both models.
    s.eval_sft = stage("eval_winrate")
    e = s.eval_sft.eval
    e.update(a="@sft", b="@pretrain", judge="@judge")
    e.win_rate.update(prompts="hh-rlhf", max_prompts=48, samples_per_prompt=2, max_new_tokens=32,
                      table_rows=4)
    e.reward_accuracy.enabled = False  # (the judge stage measured it: judge/reward_eval.json)
    s.eval_ppo = copy.deepcopy(s.eval_sft)
    s.eval_ppo.eval.update(a="@ppo", b="@sft")
    return c
