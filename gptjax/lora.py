"""LoRA (Hu et al. 2021): low-rank adapters on a frozen base, for every fine-tuning stage.

A targeted projection y = x W + b of the model (a `model.Linear`: attention c_attn / c_proj,
MLP c_fc / c_proj) becomes

    y = x W + b + (alpha / r) * dropout(x) A B,     A (in, r), B (r, out)

with A ~ U(-1/sqrt(in), 1/sqrt(in)) and B = 0 at the start (PEFT's initialisation), so the
adapted model starts as the base exactly. Merged, the same model is W' = W + (alpha / r) A B.

How (a parameter-tree partition plus a flax method interceptor, no change to the model): the
adapters are a tree of their own mirroring the kernels they adapt,

    adapters['h_0']['attn']['c_attn']['kernel'] = {'lora_a': (C, r), 'lora_b': (r, 3, H, D)}

with the kernel's logical axis names on their in / out axes (the rank axis unsharded), so the
trainer lays them out by the same rules. `attached(adapters, spec)` is an `nn.intercept_methods`
context: while it is active, every `Linear` whose kernel has adapters adds the low-rank term.
A stage differentiates the adapters only and passes the base to `model.apply` as a frozen
model, so the base has no gradient and no optimizer state; with the adapters off (outside the
context) the same base tree is the reference model of PPO / GRPO / DPO, with no second copy.
Use `attached` inside the traced function (a loss, a jitted phase): what it adds is traced
into the program. Not around `sampling.generate`: the decoder is a jit of its own whose trace
cache does not see the interceptor (a cached base trace is reused); decode with `merge`d
weights (gptjax/rl/policy.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.errors import GptjaxError
from gptjax.model import Linear

A, B = "lora_a", "lora_b"
DEFAULT_TARGETS = "attn/c_attn,attn/c_proj,mlp/c_fc,mlp/c_proj"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """The `lora` config section (rank 0 = off, no spec)."""

    rank: int
    alpha: float
    targets: tuple[str, ...]  # regular expressions searched in module paths (h_0/attn/c_attn)
    dropout: float = 0.0  # on the adapter's input only (the base path sees x unchanged)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def spec_from(section: Any) -> LoraSpec | None:
    """A LoraSpec from a config's `lora` section (ConfigDict or the dict of a config.json);
    None when LoRA is off (rank 0 or no section)."""
    if not section or not int(section["rank"]):
        return None
    targets = section["targets"]
    if isinstance(targets, str):
        targets = targets.split(",")
    return LoraSpec(int(section["rank"]), float(section["alpha"]),
                    tuple(t.strip() for t in targets if t.strip()), float(section["dropout"]))


@dataclasses.dataclass(frozen=True)
class Site:
    """One adapted projection: its module path and kernel shape (in_shape + out_shape)."""

    path: tuple[str, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_names: tuple[str | None, ...]
    out_names: tuple[str | None, ...]

    @property
    def name(self) -> str:
        return "/".join(self.path)


def sites(module: nn.Module, spec: LoraSpec, *init_args: Any) -> list[Site]:
    """The projections of `module` (applied to init_args) that spec.targets name, found by
    tracing it once (shapes only). Raises a GptjaxError when no projection matches or the rank
    exceeds a matched projection's dimension."""
    found: dict[tuple[str, ...], Site] = {}

    def record(next_fun, args, kwargs, context):
        mod = context.module
        if isinstance(mod, Linear) and context.method_name == "__call__":
            x = args[0]
            n = mod.n_in
            found.setdefault(mod.path, Site(
                tuple(mod.path), tuple(x.shape[x.ndim - n:]), tuple(mod.out_shape),
                tuple(mod.names[:n]), tuple(mod.names[n:])))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(module.init, jax.random.key(0), *init_args)
    for pattern in spec.targets:
        try:
            re.compile(pattern)
        except re.error as e:
            raise GptjaxError(f"lora.targets: {pattern!r} is not a regular expression ({e})"
                              ) from None
    chosen = [s for s in found.values() if any(re.search(p, s.name) for p in spec.targets)]
    if not chosen:
        kinds = sorted({"/".join(s.path[-2:]) for s in found.values()})
        raise GptjaxError(
            f"lora.targets={','.join(spec.targets)!r} match no projection of the model; its "
            f"projections are {kinds} (in every block, paths like h_0/attn/c_attn): name some "
            "of them, e.g. --config.lora.targets=attn/c_attn,mlp/c_fc")
    for s in chosen:
        dim = min(math.prod(s.in_shape), math.prod(s.out_shape))
        if spec.rank > dim:
            smallest = min(min(math.prod(c.in_shape), math.prod(c.out_shape)) for c in chosen)
            raise GptjaxError(
                f"lora.rank={spec.rank} exceeds the dimension {dim} of {s.name} "
                f"({math.prod(s.in_shape)} -> {math.prod(s.out_shape)}), so it is no low-rank "
                f"update; set lora.rank to at most {smallest} (typically 4..64)")
    return chosen


def init(rng: jax.Array, spec: LoraSpec, targets: Sequence[Site]) -> dict[str, Any]:
    """Fresh adapters, boxed with logical names: A uniform in +-1/sqrt(fan_in), B zero."""
    tree: dict[str, Any] = {}
    for i, s in enumerate(targets):
        bound = 1.0 / math.sqrt(math.prod(s.in_shape))
        a = jax.random.uniform(jax.random.fold_in(rng, i), s.in_shape + (spec.rank,),
                               jnp.float32, -bound, bound)
        b = jnp.zeros((spec.rank,) + s.out_shape, jnp.float32)
        _set(tree, s.path + ("kernel",), {
            A: nn.LogicallyPartitioned(a, s.in_names + (None,)),
            B: nn.LogicallyPartitioned(b, (None,) + s.out_names)})
    return tree


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: Any, path: Sequence[str]) -> Any:
    for k in path:
        if not isinstance(tree, dict) or k not in tree:
            return None
        tree = tree[k]
    return tree


def adapted_paths(adapters: Any) -> list[tuple[str, ...]]:
    """The kernel paths (('h_0', 'attn', 'c_attn', 'kernel'), ...) that have adapters."""
    out = []

    def walk(node, path):
        if isinstance(node, dict) and A in node:
            out.append(path)
        elif isinstance(node, dict):
            for k in sorted(node):
                walk(node[k], path + (k,))
    walk(adapters, ())
    return out


def _dropout_key(rng: jax.Array, path: Sequence[str]) -> jax.Array:
    return jax.random.fold_in(rng, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)


@contextlib.contextmanager
def attached(adapters: Any, spec: LoraSpec, rng: jax.Array | None = None) -> Iterator[None]:
    """While active, every adapted `Linear` returns x W + b + scale * dropout(x) A B.

    rng None: no dropout (evaluation, reference-free uses). The dropout mask of a projection is
    drawn from fold_in(rng, its path)."""

    def intercept(next_fun, args, kwargs, context):
        mod = context.module
        y = next_fun(*args, **kwargs)
        if not isinstance(mod, Linear) or context.method_name != "__call__":
            return y
        site = _get(adapters, tuple(mod.path) + ("kernel",))
        if site is None:
            return y
        x, n, dt = args[0], mod.n_in, mod.dtype
        if rng is not None and spec.dropout > 0:
            keep = jax.random.bernoulli(_dropout_key(rng, mod.path), 1.0 - spec.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - spec.dropout), 0.0)
        xa = jax.lax.dot_general(  # (..., r): contract x's last n dims with A's first n
            x.astype(dt), site[A].astype(dt),
            ((tuple(range(x.ndim - n, x.ndim)), tuple(range(n))), ((), ())))
        delta = jax.lax.dot_general(xa, site[B].astype(dt), (((xa.ndim - 1,), (0,)), ((), ())))
        return y + (spec.scale * delta).astype(y.dtype)

    with nn.intercept_methods(intercept):
        yield


def merge(params: Any, adapters: Any, spec: LoraSpec) -> Any:
    """The plain parameters of the adapted model: W' = W + (alpha / r) A B for every adapted
    kernel (numpy in, numpy out; jax arrays otherwise). Other leaves are shared, not copied."""
    out = _copy_dicts(params)
    for path in adapted_paths(adapters):
        site = _get(adapters, path)
        w = _get(params, path)
        if w is None:
            raise GptjaxError(f"the adapters hold {'/'.join(path)}, which the base model lacks: "
                              "they belong to another model")
        xp = np if isinstance(w, np.ndarray) else jnp
        delta = xp.tensordot(xp.asarray(site[A], xp.float32), xp.asarray(site[B], xp.float32),
                             axes=1)
        _set(out, path, (w + spec.scale * delta).astype(w.dtype))
    return out


def _copy_dicts(tree: Any) -> Any:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _copy_dicts(v) for k, v in tree.items()}
    return tree


Path = tuple[str, ...]


def pick(tree: dict[str, Any], paths: Sequence[Path]) -> dict[str, Any]:
    """The subtree holding only `paths` (nested dicts), e.g. {'trunk': {'wte': ...}}."""
    out: dict[str, Any] = {}
    for path in paths:
        value = _get(tree, path)
        if value is not None:
            _set(out, path, value)
    return out


def drop(tree: dict[str, Any], paths: Sequence[Path]) -> dict[str, Any]:
    """The tree without `paths` (the dicts along them copied, everything else shared)."""
    out = dict(tree)
    for path in paths:
        node = out
        for k in path[:-1]:
            if k not in node:
                break
            node[k] = dict(node[k])
            node = node[k]
        else:
            node.pop(path[-1], None)
    return out


def overlay(tree: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """`tree` with the leaves of `part` put in (nested dicts merged, `part` winning)."""
    out = dict(tree)
    for k, v in part.items():
        out[k] = overlay(out[k], v) if isinstance(v, dict) and isinstance(
            out.get(k), dict) else v
    return out


def num_params(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def num_bytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
