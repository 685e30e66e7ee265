"""The trained policy as the RL phases (GRPO, PPO) read it: a full GPT tree, or LoRA adapters on
the frozen SFT model.

    full   params = the GPT tree, trained; the reference (if any) is a frozen copy of the SFT model
    lora   params = {'lora': adapters, **the groups lora.train trains in full}; the frozen SFT
           model `ref` is at once the reference (the adapters off: no second copy of the
           weights, as PEFT / TRL do) and the policy's base (the adapters on, `lora.attached`)

Reading the policy (log-probs, value-and-grad of the loss) runs the base with the adapters
attached. Sampling decodes with the merged weights W + (alpha / r) A B, built inside the jitted
phase: the decoder is `sampling.generate`'s own jit, whose trace cache does not see a flax
method interceptor (an attached decode silently reuses the base's trace), and merged weights
decode faster anyway. Dropout is off in RL (lora.dropout must be 0): pi / pi_old compare the
same network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax

from gptjax import lora
from gptjax.model import GPTConfig
from gptjax.rl import rollout


class Policy:
    """How the phases read the state's policy parameters `params` given the frozen SFT model
    `ref` (unused in full fine-tuning)."""

    def __init__(self, cfg: GPTConfig, spec: lora.LoraSpec | None = None):
        self.cfg, self.spec = cfg, spec

    def model_params(self, params: Any, ref: Any) -> Any:
        """The GPT tree the module applies (adapters not merged: attach them)."""
        if self.spec is None:
            return params
        return lora.overlay(ref, {k: v for k, v in params.items() if k != "lora"})

    def attached(self, params: Any):
        """The context inside which the module computes with the adapters (no dropout)."""
        if self.spec is None:
            return contextlib.nullcontext()
        return lora.attached(params["lora"], self.spec)

    def logprobs(self, params: Any, ref: Any, tokens: jax.Array, plen: jax.Array, n: int,
                 with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """`rollout.policy_logprobs` of the policy."""
        with self.attached(params):
            return rollout.policy_logprobs(self.model_params(params, ref), self.cfg, tokens, plen,
                                           n, with_entropy)

    def sampling_params(self, params: Any, ref: Any) -> Any:
        """Plain GPT parameters to decode with: under LoRA the merged W + (alpha / r) A B."""
        if self.spec is None:
            return params
        return lora.merge(self.model_params(params, ref), params["lora"], self.spec)

    def reading(self, fn: Callable[..., Any], ref: Any, key: str | None = None
                ) -> Callable[..., Any]:
        """fn(tree, *args) of the GPT tree (or of a dict holding it under `key`, e.g. PPO's
        {'policy', 'value'}) as the same function of the state's policy parameters."""
        if self.spec is None:
            return fn

        def wrapped(tree, *args):
            params = tree if key is None else tree[key]
            with self.attached(params):
                model = self.model_params(params, ref)
                return fn(model if key is None else {**tree, key: model}, *args)
        return wrapped
