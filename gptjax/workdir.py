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
import sys
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
PIPELINE_STAGE_FILE = "pipeline_stage.json"  # a pipeline stage's marker: its config, done, times
# A LoRA workdir's base: {"init_from": absolute path, "step": its checkpoint, "base_key": None
# (the base is a GPT tree) or the key it sits under ("trunk"), "full": keys trained in full}
LORA_BASE_FILE = "lora_base.json"


@dataclasses.dataclass
class TrainedModel:
    cfg: GPTConfig
    params: Any  # on the default device, placed once
    tokenizer: Tokenizer
    step: int


# workdirs whose `params` are a GPT
LANGUAGE_MODEL_STAGES = ("pretrain", "sft", "ppo", "grpo", "dpo")
CHAT_STAGES = ("sft", "ppo", "grpo", "dpo")  # ... trained to answer in turns
# Model options that change how a model runs, not its parameters (a run may change them).
RUNTIME_FIELDS = ("dropout", "dtype", "remat", "attention")


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
        raise GptjaxError(f"{path} is not valid JSON ({e}); rerun the stage that wrote "
                          "it") from None


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
        what = "is a file, not a directory" if os.path.exists(workdir) else "no such directory"
        raise GptjaxError(f"--workdir {workdir}: {what}; pass the workdir of a gptjax training "
                          "run")
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


def pipeline_stages(workdir: str) -> list[tuple[str, str, bool]]:
    """(name, stage kind, finished) of each stage of a pipeline workdir, in its order."""
    cfg = run_config(workdir)
    out = []
    for name in cfg.get("order", []):
        mark = read_json(os.path.join(workdir, name), PIPELINE_STAGE_FILE) or {}
        out.append((name, cfg["stages"][name]["stage"], bool(mark.get("done"))))
    return out


def model_workdir(workdir: str) -> str:
    """The workdir holding the model a command should use: `workdir` itself, or for a pipeline
    workdir the folder of its last finished chat stage (a language model if it has none)."""
    if stage(workdir) != "pipeline":
        return workdir
    stages = pipeline_stages(workdir)
    for kinds in (CHAT_STAGES, LANGUAGE_MODEL_STAGES):
        done = [name for name, kind, finished in stages if finished and kind in kinds]
        if done:
            chosen = os.path.join(workdir, done[-1])
            print(f"gptjax: {workdir} is a pipeline: using its stage {done[-1]} ({chosen})",
                  file=sys.stderr)
            return chosen
    raise GptjaxError(f"{workdir} is a pipeline none of whose language-model stages has "
                      "finished yet; rerun the pipeline, then try again")


def check_stage(workdir: str, stage_name: str) -> None:
    """Refuse to run stage `stage_name` in a workdir another stage wrote (its config.json says
    which): it would resume, or overwrite, that stage's checkpoints."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return
    try:
        saved = stage(workdir)
    except (OSError, ValueError, AttributeError) as e:
        raise GptjaxError(f"{path} is not a readable gptjax config ({type(e).__name__}); use a new "
                          "--workdir or restore that file") from None
    if saved != stage_name:
        raise GptjaxError(f"--workdir {workdir} holds a {saved!r} run (its config.json), not a "
                          f"{stage_name!r} one; give the {stage_name} run a workdir of its own")


def check_same_model(workdir: str, model: dict[str, Any]) -> None:
    """Refuse, before a run rewrites its config.json, a workdir holding checkpoints of another
    model shape than `model` (a model section; vocab_size 0 = "the tokenizer's", not checked).
    The restore would refuse them too, but only after config.json was overwritten."""
    path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    if not (os.path.isfile(path) and os.path.isdir(checkpoints)
            and any(n.isdigit() for n in os.listdir(checkpoints))):
        return
    try:
        with open(path) as f:
            saved = json.load(f)["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # (not readable: check_stage has spoken; the restore checks the arrays)
    for key, value in model.items():
        if key in RUNTIME_FIELDS or key not in saved or (key == "vocab_size" and not value):
            continue
        if saved[key] != value:
            raise GptjaxError(
                f"--workdir {workdir} holds checkpoints of a different model shape: model.{key}="
                f"{saved[key]} there (its config.json) but {value} in this config. Use a new "
                "--workdir or the config this workdir was trained with (its config.json).")


def check_language_model(workdir: str) -> None:
    """Refuse a workdir whose checkpoint is no GPT language model (a reward model, a prepare
    run) before reading its parameters as one."""
    kind = stage(workdir)
    if kind not in LANGUAGE_MODEL_STAGES:
        stages = ", ".join(LANGUAGE_MODEL_STAGES)
        raise GptjaxError(f"{workdir} is a {kind!r} workdir (its config.json), which holds no "
                          f"language model; pass the workdir of a {stages} run")


def load_host(workdir: str, step: int | None = None) -> TrainedModel:
    """Config, tokenizer and the latest (or `step`'s) checkpoint's GPT parameters as host numpy
    arrays; a LoRA workdir's are its base with the adapters merged in."""
    cfg = model_config(workdir)
    check_language_model(workdir)
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
