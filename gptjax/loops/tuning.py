"""What a fine-tuning stage trains: the whole init model, or LoRA adapters on it (frozen).

    full   params = the init model's parameters; the optimizer holds moments for all of them
    lora   params = {'lora': adapters, **the parts trained in full (the reward model's new
           head; `lora.train`, e.g. the token embedding)}, nested as in the model's tree; the
           rest of the init model is a `trainer.Frozen` model {'base': ...}: placed on the
           devices once, never differentiated, no optimizer state. The checkpoint holds the
           trainable tree alone; lora_base.json names the base (init_from and its step), from
           which `workdir.restore_model` rebuilds the adapted model and
           `python -m gptjax.convert --merge-lora` writes a plain workdir.

The parameter tree is partitioned rather than masked (optax.masked / multi_transform would keep
a frozen leaf in the optimized tree): the optimizer and the gradient see the trainable part
only, so neither gradient buffers nor Adam moments exist for the base. SFT, the reward model,
DPO, GRPO and PPO build their stage from a Tuning (the RL stages read it through
`gptjax.rl.policy.Policy`, their frozen SFT model being both the base and the reference).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from gptjax import lora
from gptjax import workdir as workdir_lib
from gptjax.errors import GptjaxError
from gptjax.loops import trainer

LORA_SALT = 0x10A  # the adapters' dropout key: fold_in(step key, LORA_SALT)


@dataclasses.dataclass
class Tuning:
    spec: lora.LoraSpec | None  # None: full fine-tuning
    init: Callable[[jax.Array], Any]  # rng -> the trainable tree, boxed (layout; LoRA's start)
    initial: Callable[[], Any] | None  # full: host parameters to start from
    frozen: trainer.Frozen | None  # lora: {'base': the init model (less the full parts)}
    full: tuple[lora.Path, ...] = ()  # parameter paths trained in full beside the adapters
    trainable: int = 0  # trainable parameters
    total: int = 0  # parameters of the model

    def model_params(self, params: Any, frozen: Any = None) -> Any:
        """The module's parameter tree (adapters not merged): the base with the fully trained
        parts in place."""
        if self.spec is None:
            return params
        return lora.overlay(frozen["base"], _trained_in_full(params))

    def adapters(self, params: Any, rng: jax.Array | None = None):
        """The context inside which the module computes with the adapters (dropout from rng)."""
        if self.spec is None:
            return contextlib.nullcontext()
        key = None if rng is None else jax.random.fold_in(rng, LORA_SALT)
        return lora.attached(params["lora"], self.spec, key)

    def wrap(self, loss_fn: Callable[..., Any]) -> Callable[..., Any]:
        """A loss of the module's parameters, loss_fn(model_params, batch, rng), as the stage's
        loss of its trainable ones: (params, batch, rng) or, under LoRA, (params, batch, rng,
        frozen)."""
        if self.spec is None:
            return loss_fn

        def wrapped(params, batch, rng, frozen):
            with self.adapters(params, rng):
                return loss_fn(self.model_params(params, frozen), batch, rng)
        return wrapped

    def merged(self, params: Any, base: Any) -> Any:
        """Host parameters of the trained module, adapters merged: base (the init model's
        tree), params (the state's)."""
        if self.spec is None:
            return params
        return lora.merge(lora.overlay(base, _trained_in_full(params)), params["lora"],
                          self.spec)

    def flops_per_token(self, full: float) -> float:
        """Training FLOPs per token from the full-fine-tuning count 6N + ...: LoRA skips the
        weight gradients of the base (a third of the matmul work; the adapters' own is
        negligible)."""
        return full if self.spec is None else full * 2.0 / 3.0

    def describe(self) -> str:
        if self.spec is None:
            return f"full fine-tuning of {self.total:,} parameters"
        return (f"LoRA rank {self.spec.rank}, alpha {self.spec.alpha:g} on "
                f"{','.join(self.spec.targets)}: {self.trainable:,} of {self.total:,} "
                f"parameters train ({self.trainable / self.total:.2%})")


def _trained_in_full(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "lora"}


def make(config: ml_collections.ConfigDict, workdir: str, module: nn.Module, init_args: tuple,
         base: Any, initial: Callable[[], Any], init_step: int, full_keys: tuple[str, ...] = (),
         base_key: str | None = None) -> Tuning:
    """The Tuning of config.lora for `module` (applied to init_args).

    base: host parameters of the init model as the module's tree (a GPT tree, or {'trunk': GPT
    tree} for the reward model, `base_key` naming that key); full_keys: top-level parts the
    stage always trains in full (the reward head), to which `lora.train` adds GPT parameter
    groups (under base_key); initial(): the full-fine-tuning start (the module's whole tree).
    Under LoRA writes lora_base.json."""
    spec = lora.spec_from(config.lora)

    def module_init(rng):
        return module.init(rng, *init_args)["params"]

    shapes = nn.unbox(jax.eval_shape(module_init, jax.random.key(0)))
    total = lora.num_params(shapes)
    if spec is None:
        return Tuning(None, module_init, initial, None, (), total, total)
    targets = lora.sites(module, spec, *init_args)
    prefix = (base_key,) if base_key else ()
    full = [(k,) for k in full_keys]
    for name in filter(None, (n.strip() for n in str(config.lora.train).split(","))):
        path = prefix + tuple(name.split("/"))
        if lora.pick(shapes, [path]) == {}:
            groups = sorted(lora.pick(shapes, [prefix])[base_key] if base_key else shapes)
            raise GptjaxError(f"lora.train names {name!r}, which the model lacks; its parameter "
                              f"groups are {groups} (e.g. wte, the token embedding)")
        full.append(path)

    def init(rng):
        return {"lora": lora.init(jax.random.fold_in(rng, LORA_SALT), spec, targets),
                **(lora.pick(module_init(rng), full) if full else {})}

    def frozen_init(rng):
        return {"base": lora.drop(module_init(rng), full)}

    trainable = lora.num_params(nn.unbox(jax.eval_shape(init, jax.random.key(0))))
    workdir_lib.write_json(workdir, workdir_lib.LORA_BASE_FILE, {
        "init_from": os.path.abspath(config.init_from), "step": int(init_step),
        "base_key": base_key, "full": ["/".join(p) for p in full]})
    return Tuning(spec, init, None, trainer.Frozen(frozen_init, lambda: {
        "base": lora.drop(base, full)}), tuple(full), trainable, total)
