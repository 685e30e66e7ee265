"""The tiny-ChatGPT pipeline at GPT-2 124M for one accelerator (a GPU or a TPU chip), started
from OpenAI's GPT-2 weights and vocabulary instead of pretraining:

    python -m gptjax.convert --from-hf HF_GPT2_DIR --workdir runs/gpt2  # save_pretrained's folder
    python -m gptjax.train --config configs/chatgpt_gpt2_124m.py --workdir runs/chatgpt_gpt2

(HF_GPT2_DIR: what `GPT2LMHeadModel.from_pretrained("gpt2").save_pretrained(DIR)` and its
tokenizer's `save_pretrained(DIR)` write; convert reads the weights and, with Hugging Face
`tokenizers`, the vocabulary from it.) sft -> reward -> judge -> ppo (with the pretraining mix
on the shipped Wikipedia sample) -> eval_ppo (PPO over SFT; GPT-2 itself has no chat tokens, so
there is no SFT-over-base comparison in the chat format); context 1024, bfloat16 compute with
float32 master weights and optimizer state. The data are the shipped subsets; for the full sets
add --config.stages.<stage>.data.root=../shared/data. Check that every step compiles and fits
a TPU slice before paying for it:

    python -m gptjax.aot --config configs/chatgpt_gpt2_124m.py --topology v5e:2x2
"""

import copy
import os

from gptjax.data.lm import embedded_path
from gptjax.pipeline import config_file, pipeline_config

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2 = "runs/gpt2"  # the workdir `python -m gptjax.convert --from-hf` wrote
HH_HALF = 1156  # reward: hh-rlhf pairs [0, 1156); judge: the rest
# GPT-2 124M, with the 4 chat tokens SFT appends to its 50,257 (the run takes the shape from
# runs/gpt2; this is what `python -m gptjax.aot` compiles).
SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50261, bias=True,
             dropout=0.0, dtype="bfloat16")


def stage(name):
    c = config_file(os.path.join(HERE, f"{name}.py"))
    c.model.update(SHAPE)
    return c


def get_config():
    c = pipeline_config()
    c.name = "chatgpt_gpt2_124m"
    c.order = ("sft", "reward", "judge", "ppo", "eval_ppo")
    s = c.stages

    s.sft = stage("sft_dialogues")
    p = s.sft
    p.init_from = GPT2
    p.data.mixture = "topical-chat:1,self-instruct:1,gsm8k:1"
    p.train.update(batch_size=32, steps=200, eval_every=50, eval_batches=4,
                   checkpoint_every=50)  # ~3 passes over the shipped conversations
    p.optim.update(lr=3e-5, min_lr=3e-6, warmup_steps=20, decay_steps=200)

    s.reward = stage("reward_preferences")
    p = s.reward
    p.init_from = "@sft"
    p.data.update(mixture="hh-rlhf", max_examples=HH_HALF)
    p.reward.normalize_prompts = 0  # PPO measures its own offset
    p.train.update(batch_size=16, steps=300, eval_every=100, eval_batches=4,
                   checkpoint_every=100)
    p.optim.update(lr=1e-5, min_lr=1e-6, warmup_steps=20, decay_steps=300)
    s.judge = copy.deepcopy(p)
    s.judge.data.update(skip_examples=HH_HALF, max_examples=0)

    s.ppo = stage("ppo")
    p = s.ppo
    p.init_from = "@sft"
    # Sized to fit 16 GiB a chip (v5e): at 64 prompts, prompts up to 896 tokens and 4
    # minibatches, `python -m gptjax.aot --topology v5e:2x2` found scoring needing 17.4 GiB and
    # the update 33.3 GiB of temporaries a chip. Longer prompts keep their most recent whole
    # turns that fit 384 tokens.
    p.ppo.update(reward_from="@reward", batch_prompts=32, samples_per_prompt=4,
                 max_new_tokens=128, max_prompt_tokens=384, epochs=4, num_minibatches=8,
                 ptx_coef=1.0, ptx_batch=16, ptx_data=embedded_path("wiki_demo.txt.gz"),
                 offset_prompts=64, eval_prompts=16)
    p.train.update(steps=100, log_every=1, eval_every=25, checkpoint_every=25)
    p.optim.update(lr=1e-6, min_lr=1e-6, warmup_steps=10, decay_steps=1600)

    s.eval_ppo = stage("eval_winrate")
    e = s.eval_ppo.eval
    e.update(a="@ppo", b="@sft", judge="@judge", batch_size=64)
    e.win_rate.update(prompts="hh-rlhf", max_prompts=200, samples_per_prompt=2,
                      max_new_tokens=128, table_rows=4)
    e.reward_accuracy.enabled = False
    return c
