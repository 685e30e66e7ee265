"""The optax chain: global-norm clipping, then AdamW under linear warmup + cosine decay."""

from __future__ import annotations

from typing import Any

import jax
import optax

from gptjax.errors import GptjaxError

DECAY_MASKS = ("matrices", "matrices_no_embeddings", "all", "none")


def lr_schedule(cfg: Any) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, cosine down to `min_lr` at `decay_steps`.

    After `decay_steps` the rate stays at `min_lr` (as nanoGPT's `lr_decay_iters`).
    """
    decay_steps = max(int(cfg.decay_steps), int(cfg.warmup_steps) + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=int(cfg.warmup_steps),
        decay_steps=decay_steps, end_value=cfg.min_lr)


def decay_mask(kind: str):
    """Which parameters get weight decay. nanoGPT's rule ('matrices'): the weight matrices and
    embeddings, never biases or LayerNorm gains. Decided by the leaf's name (kernel / embedding),
    not its rank, since gptjax keeps some biases multi-dimensional (c_attn's is (3, H, D))."""
    if kind not in DECAY_MASKS:
        raise GptjaxError(f"optim.weight_decay_mask={kind!r} is unknown; use one of {DECAY_MASKS}")

    def mask(params):
        def leaf_mask(path, x):
            names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
            if kind in ("all", "none"):
                return kind == "all"
            is_embedding = "embedding" in names
            return ("kernel" in names or is_embedding) and not (
                kind == "matrices_no_embeddings" and is_embedding)
        return jax.tree_util.tree_map_with_path(leaf_mask, params)
    return mask


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW(b1, b2, eps, weight_decay on the masked params).

    Gradient accumulation is done inside the train step (a scan over micro-batches), so one call of
    this transformation is one optimizer step and the schedule counts optimizer steps.
    """
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(
        lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
        mask=decay_mask(cfg.weight_decay_mask)))
    return optax.chain(*parts)
