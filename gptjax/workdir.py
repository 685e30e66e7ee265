"""Reading a finished or running workdir back: its model config, tokenizer and parameters.

Shared by every command that uses a trained model (sample, chat, and later SFT's init-from).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.checkpoint import restore_params
from gptjax.data.tokenizer import Tokenizer, load_tokenizer
from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig


@dataclasses.dataclass
class TrainedModel:
    cfg: GPTConfig
    params: Any  # on the default device, placed once
    tokenizer: Tokenizer
    step: int


def model_config(workdir: str) -> GPTConfig:
    """The model section of <workdir>/config.json (the resolved config every run writes)."""
    if not os.path.isdir(workdir):
        raise GptjaxError(f"--workdir {workdir}: no such directory; pass the workdir of a "
                          "gptjax training run")
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise GptjaxError(f"{workdir} has no config.json: is it a gptjax workdir?")
    try:
        with open(path) as f:
            return GPTConfig(**json.load(f)["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise GptjaxError(f"{path} has no valid 'model' section ({e})") from None


def load(workdir: str) -> TrainedModel:
    """Config, tokenizer and the latest checkpoint's parameters (not the optimizer moments)."""
    cfg = model_config(workdir)
    tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer.json"))
    shapes = jax.eval_shape(lambda: nn.unbox(GPT(cfg).init(
        jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]))
    step, params = restore_params(workdir, shapes)
    # Place the weights once: handing host arrays to every generate call (each chat turn) would
    # copy all of them to the device again each time.
    return TrainedModel(cfg, jax.device_put(params), tokenizer, step)
