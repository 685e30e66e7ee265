"""A workdir's files, written and read back in one place: config.json, tokenizer.json, the
stage's small JSON reports, and the latest checkpoint's parameters.

Shared by every stage (which writes them) and every command that uses a trained model (sample,
chat, serve, eval, convert, and the stages that start from another stage's workdir). A LoRA
workdir (lora.rank > 0) reads back as its base with the adapters merged in (`restore_model`),
and `merge_lora` writes that model as a plain workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import lora, step as step_lib
from gptjax.checkpoint import Checkpointer, restore_params
from gptjax.data.tokenizer import Tokenizer, load_tokenizer, save_tokenizer
from gptjax.errors import GptjaxError
from gptjax.model import GPT, GPTConfig, RewardModel
from gptjax.optim import make_optimizer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
# A LoRA workdir's base: {"init_from": absolute path, "step": its checkpoint, "base_key": None
# (the base is a GPT tree) or the key it sits under ("trunk"), "full": keys trained in full}
LORA_BASE_FILE = "lora_base.json"


@dataclasses.dataclass
class TrainedModel:
    cfg: GPTConfig
    params: Any  # on the default device, placed once
    tokenizer: Tokenizer
    step: int


def write_run_files(config: Any, workdir: str, tokenizer: Tokenizer) -> None:
    """The workdir's tokenizer.json and resolved config.json (process 0), which every command
    that reads a workdir back (sample, chat, convert, init_from) relies on."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    save_tokenizer(tokenizer, os.path.join(workdir, TOKENIZER_FILE))
    write_config(config, workdir)


def write_config(config: Any, workdir: str) -> None:
    """The resolved config.json (process 0)."""
    if jax.process_index() == 0:
        _write_atomic(os.path.join(workdir, CONFIG_FILE), config_lib.to_json(config))


def write_json(workdir: str, name: str, obj: Any) -> None:
    """A small JSON report of the stage (data_stats.json, reward_eval.json, ...): process 0
    only, written atomically so a reader never sees half a file."""
    if jax.process_index() != 0:
        return
    _write_atomic(os.path.join(workdir, name), json.dumps(obj, indent=2, sort_keys=True))


def read_json(workdir: str, name: str) -> Any | None:
    """A report written by `write_json`, or None when the workdir has none."""
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise GptjaxError(f"{path} is not valid JSON ({e}); rerun the stage that wrote it") from None


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def read_tokenizer(workdir: str) -> Tokenizer:
    """The workdir's tokenizer.json."""
    return load_tokenizer(os.path.join(workdir, TOKENIZER_FILE))


def run_config(workdir: str) -> dict[str, Any]:
    """The resolved config.json of a workdir, as a dict."""
    if not os.path.isdir(workdir):
        raise GptjaxError(f"--workdir {workdir}: no such directory; pass the workdir of a "
                          "gptjax training run")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise GptjaxError(f"{workdir} has no config.json: is it a gptjax workdir?")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise GptjaxError(f"{path} is not valid JSON ({e}); restore it from the run") from None


def model_config(workdir: str) -> GPTConfig:
    """The model section of <workdir>/config.json (the resolved config every run writes)."""
    try:
        return GPTConfig(**run_config(workdir)["model"])
    except (KeyError, TypeError) as e:
        raise GptjaxError(f"{os.path.join(workdir, CONFIG_FILE)} has no valid 'model' section "
                          f"({e})") from None


def stage(workdir: str) -> str:
    """The stage that trained the workdir ('pretrain', 'sft', 'reward', ...)."""
    return run_config(workdir).get("stage", "pretrain")


def load_host(workdir: str, step: int | None = None) -> TrainedModel:
    """Config, tokenizer and the latest (or `step`'s) checkpoint's GPT parameters as host numpy
    arrays; a LoRA workdir's are its base with the adapters merged in."""
    cfg = model_config(workdir)
    tok = read_tokenizer(workdir)
    step, params = restore_model(workdir, GPT(cfg), (jnp.zeros((1, 1), jnp.int32),), step)
    return TrainedModel(cfg, params, tok, step)


def lora_spec(workdir: str) -> lora.LoraSpec | None:
    """The LoRA adapters a workdir trained (its config.json's lora section), or None."""
    return lora.spec_from(run_config(workdir).get("lora"))


def restore_model(workdir: str, module: nn.Module, init_args: tuple, step: int | None = None
                  ) -> tuple[int, Any]:
    """(step, host parameters of `module`) from the workdir's latest (or `step`'s) checkpoint.

    A LoRA workdir's checkpoint holds only its adapters (and the parts it trained in full);
    its base is read from the workdir named in lora_base.json, at the step recorded there, and
    the adapters are merged into it: W + (alpha / r) A B."""
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), *init_args)
                                             ["params"]))
    spec = lora_spec(workdir)
    if spec is None:
        return restore_params(workdir, shapes, step)
    info = read_json(workdir, LORA_BASE_FILE)
    if info is None:
        raise GptjaxError(f"{workdir} trained LoRA adapters but has no {LORA_BASE_FILE} naming "
                          "their base model; it cannot be rebuilt")
    where = info["init_from"]
    if not os.path.isdir(where):
        raise GptjaxError(
            f"{workdir} holds LoRA adapters on the model of {where} (step {info['step']}), which "
            "is gone. Restore that workdir, or merge the adapters while it exists: python -m "
            "gptjax.convert --workdir ADAPTERS --merge-lora OUT")
    base = load_host(where, info["step"])
    cfg = model_config(workdir)
    base_params, _ = grow_vocab(base.params, base.cfg, cfg.vocab_size)
    tree = base_params if info["base_key"] is None else {info["base_key"]: base_params}
    full = [tuple(p.split("/")) for p in info["full"]]  # trained in full beside the adapters
    adapters = jax.eval_shape(lambda: nn.unbox(lora.init(
        jax.random.key(0), spec, lora.sites(module, spec, *init_args))))
    step, saved = restore_params(workdir, {"lora": adapters, **lora.pick(shapes, full)}, step)
    trained = {k: v for k, v in saved.items() if k != "lora"}
    return step, lora.merge(lora.overlay(tree, trained), saved["lora"], spec)


def load(workdir: str) -> TrainedModel:
    """Config, tokenizer and the latest checkpoint's parameters (not the optimizer moments)."""
    m = load_host(workdir)
    # Place the weights once: handing host arrays to every generate call (each chat turn) would
    # copy all of them to the device again each time.
    return dataclasses.replace(m, params=jax.device_put(m.params))


def merge_lora(workdir: str, out_dir: str) -> int:
    """Write OUT_DIR, a plain workdir of DIR's LoRA-adapted model: its base (lora_base.json)
    with the adapters merged in, W + (alpha / r) A B, as a full train state (fresh optimizer
    moments) at DIR's latest step, with DIR's config (lora.rank 0), tokenizer and reports.
    Every command that reads a workdir (sample, chat, --to-hf, init_from) then needs neither
    the adapters nor the base. Returns the step."""
    if lora_spec(workdir) is None:
        raise GptjaxError(f"{workdir} trained no LoRA adapters (its config.json has lora.rank "
                          "0): it is a plain workdir already")
    if (os.path.isdir(os.path.join(out_dir, "checkpoints"))
            or os.path.abspath(out_dir) == os.path.abspath(workdir)):
        raise GptjaxError(f"--merge-lora {out_dir} already holds checkpoints (or is DIR); pass "
                          "a new folder")
    run = run_config(workdir)
    cfg = model_config(workdir)
    tokens = jnp.zeros((1, 1), jnp.int32)
    if run.get("stage") == "reward":
        module, args = RewardModel(cfg), (tokens, jnp.ones((1,), jnp.int32))
    else:
        module, args = GPT(cfg), (tokens,)
    step, params = restore_model(workdir, module, args)
    run = {**run, "lora": {**run["lora"], "rank": 0}}
    os.makedirs(out_dir, exist_ok=True)
    skip = {CONFIG_FILE, LORA_BASE_FILE}
    for name in sorted(os.listdir(workdir)):  # tokenizer.json and the stage's reports
        src = os.path.join(workdir, name)
        if os.path.isfile(src) and name.endswith((".json", ".jsonl")) and name not in skip:
            with open(src, "rb") as f, open(os.path.join(out_dir, name), "wb") as g:
                g.write(f.read())
    write_json(out_dir, CONFIG_FILE, run)
    params = jax.tree.map(jnp.asarray, params)
    tx = make_optimizer(ml_collections.ConfigDict(run["optim"]))
    state = step_lib.TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                                opt_state=tx.init(params))
    ckpt = Checkpointer(out_dir, async_save=False)
    try:
        ckpt.save(step, state)
        ckpt.wait()
    finally:
        ckpt.close()
    return step


def grow_vocab(params: Any, cfg: GPTConfig, vocab_size: int) -> tuple[Any, GPTConfig]:
    """Parameters and config for a vocabulary grown to `vocab_size` (new ids at the end).

    The new embedding rows start at the mean of the existing rows (so new tokens begin with
    ordinary logits instead of random ones); rows past the vocabulary (padding) stay zero.
    """
    if vocab_size < cfg.vocab_size:
        raise GptjaxError(f"cannot shrink the vocabulary from {cfg.vocab_size} to {vocab_size}")
    if vocab_size == cfg.vocab_size:
        return params, cfg
    new_cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    wte = np.asarray(params["wte"]["embedding"])
    grown = np.zeros((new_cfg.padded_vocab_size, wte.shape[1]), wte.dtype)
    grown[:cfg.vocab_size] = wte[:cfg.vocab_size]
    grown[cfg.vocab_size:vocab_size] = wte[:cfg.vocab_size].mean(0)
    params = {**params, "wte": {**params["wte"], "embedding": grown}}
    return params, new_cfg
