"""The base ml_collections config every file in configs/ starts from, and its validation.

The returned config is locked: a config file or a `--config.x.y=v` flag that names a key which
does not exist is an error instead of a silently ignored typo.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_collections

from gptjax import axes
from gptjax.errors import GptjaxError
from gptjax.model import GPTConfig

STAGES = ("pretrain", "sft", "reward")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "pretrain"
    c.seed = 0
    # sft / reward: the workdir whose latest parameters start this stage (its model shape and
    # tokenizer are used; its optimizer state is not). Runtime model options (dropout, dtype,
    # remat, attention) still come from this config's `model` section.
    c.init_from = ""

    c.model = ml_collections.ConfigDict(dataclasses.asdict(GPTConfig()))

    c.data = ml_collections.ConfigDict()
    c.data.text_path = ""  # raw UTF-8 text; "" = Tiny Shakespeare shipped inside the package
    c.data.tokenizer = "char"
    c.data.val_fraction = 0.1  # the last 10% of the tokens are the validation split (nanoGPT)
    c.data.seq_len = 0  # training window; 0 = model.block_size
    # sft / reward: the folder holding the data sets, and which of them to use with what weight
    c.data.root = "../shared/data"
    c.data.mixture = ""  # sft: e.g. "topical-chat:1,gsm8k:0.5"; reward: e.g. "hh-rlhf"
    c.data.max_examples = 0  # reward: cap on records per data set (0 = all)

    c.reward = ml_collections.ConfigDict()
    # After training, subtract the mean reward of the init model's own answers to this many
    # training prompts (InstructGPT's normalisation before PPO); 0 = no normalisation.
    c.reward.normalize_prompts = 64
    c.reward.normalize_max_new_tokens = 64

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000
    c.train.batch_size = 12  # global batch (sequences per optimizer step, all devices)
    c.train.grad_accum = 1  # micro-batches per step; batch_size must divide by it
    c.train.log_every = 10
    c.train.eval_every = 250
    c.train.eval_batches = 20  # fixed validation windows: eval_batches * batch_size of them
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 3
    c.train.async_checkpoint = True
    c.train.progress = True  # progress bar on stderr

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 6e-4
    c.optim.min_lr = 6e-5
    c.optim.warmup_steps = 2000
    c.optim.decay_steps = 600000
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    c.optim.weight_decay_mask = "matrices"
    c.optim.grad_clip = 1.0

    c.runtime = ml_collections.ConfigDict()
    # CPU only: 0 = XLA's single host device; -1 = one device per core (fitted to the batch),
    # which makes small models ~1.5x faster when run data-parallel; n = exactly n devices.
    c.runtime.cpu_devices = 0

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = axes.DEFAULT_RULES  # tuple of (logical name, mesh axes)
    c.lock()
    return c


def model_config(config: ml_collections.ConfigDict) -> GPTConfig:
    return GPTConfig(**config.model.to_dict())


def seq_len(config: ml_collections.ConfigDict) -> int:
    return int(config.data.seq_len) or int(config.model.block_size)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks that need no devices or data; raises GptjaxError naming the key and the fix."""
    if config.stage not in STAGES:
        raise GptjaxError(f"stage={config.stage!r} is unknown; stages are {STAGES}")
    m = config.model
    if m.n_embd % m.n_head:
        raise GptjaxError(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
    if m.activation not in ("gelu_tanh", "gelu"):
        raise GptjaxError(f"model.activation={m.activation!r}: use gelu_tanh (GPT-2) or gelu")
    if m.dtype not in ("float32", "bfloat16", "float16"):
        raise GptjaxError(f"model.dtype={m.dtype!r}: use float32, bfloat16 or float16")
    if seq_len(config) > m.block_size:
        raise GptjaxError(
            f"data.seq_len={config.data.seq_len} is longer than model.block_size={m.block_size}: "
            "the position embedding has no rows past block_size. Lower data.seq_len or raise "
            "model.block_size.")
    t = config.train
    if t.batch_size <= 0 or t.batch_size % t.grad_accum:
        raise GptjaxError(f"train.batch_size={t.batch_size} must be a positive multiple of "
                          f"train.grad_accum={t.grad_accum}")
    if not 0.0 < config.data.val_fraction < 1.0:
        raise GptjaxError(f"data.val_fraction={config.data.val_fraction} must be in (0, 1)")


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def overrides_from_dict(config: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    """Apply {'a.b': v} overrides (for Colab / tests), rejecting unknown keys like the CLI does."""
    for dotted, value in values.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            if p not in node:
                raise GptjaxError(f"unknown config key {dotted!r}")
            node = node[p]
        if leaf not in node:
            raise GptjaxError(f"unknown config key {dotted!r}")
        node[leaf] = value
