"""Stage `grpo` on the shipped addition task (gptjax/data/addition.py), from the tiny SFT model.

    python -m gptjax.train --config configs/grpo_addition.py \
        --config.init_from=runs/addition_sft --workdir runs/addition_grpo

16 training problems x 8 sampled answers an iteration, the reward 1 when the final number is
the sum; held-out exact match (greedy) on 200 test problems every 10 iterations and at step 0.
benchmarks/grpo_addition.py runs the whole chain (pretrain -> SFT -> GRPO) and prints the curve.
"""

from gptjax.config import base_config


def get_config():
    c = base_config()
    c.stage = "grpo"
    c.grpo.task = "addition"
    c.grpo.rewards = "exact_match:1"
    c.grpo.batch_prompts = 16
    c.grpo.samples_per_prompt = 8
    c.grpo.max_new_tokens = 40  # the longest worked answer is 34 tokens with its <|end|>
    c.grpo.max_prompt_tokens = 12  # "<|user|>999+999<|end|><|assistant|>" is 10
    c.grpo.eval_prompts = 200
    # No reference model (TRL's and DAPO's default): one forward less per iteration
    c.grpo.beta = 0.0
    c.grpo.clip_high = 0.28  # DAPO's clip-higher (bites when epochs or num_minibatches > 1)
    c.grpo.epochs = 1  # on-policy: one AdamW step on fresh answers per iteration
    c.grpo.num_minibatches = 1
    c.train.steps = 300  # iterations
    c.train.log_every = 1
    c.train.eval_every = 20
    c.train.checkpoint_every = 100
    c.optim.lr = 5e-5
    c.optim.min_lr = 5e-5
    c.optim.warmup_steps = 10
    c.optim.decay_steps = 1200
    c.optim.weight_decay = 0.0
    return c
