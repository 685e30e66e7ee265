"""Sharding layouts side by side: compile time, step time, memory, the collectives XLA inserts,
and a roofline estimate of the step on the target chip.

    python benchmarks/sharding_layouts.py --devices 8 [--config configs/gpt2_124m.py]
        [--config.train.batch_size=16 ...] [--layouts dp,fsdp,tp,fsdp_tp] [--mesh 2,2,2 ...]
        [--steps 3] [--out benchmarks/out/sharding_layouts]
    python benchmarks/sharding_layouts.py --aot --devices 64 --mesh 8,8,1 [--config ...]
    python benchmarks/sharding_layouts.py --aot --topology v5e:4x4 --mesh 1,16,1  # needs libtpu

Every layout compiles the real pretraining step (`gptjax.step.make_train_step` over the
pretraining loss, AdamW, clipping, donation, gradient accumulation, with the config's
`sharding.gather_weights`) ahead of time from abstract arrays (`train_step.lower(abstract state,
ShapeDtypeStruct batch).compile()`), so memory and collectives come without allocating a state;
then, unless --steps 0 or the simulated devices would not fit in host RAM, it runs --steps timed
steps (median, after one warm-up) on random tokens. `--devices N` simulates N CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, JAX_PLATFORMS=cpu); without it the
backend's real devices are used. `--aot` compiles only, with the config's own shapes (no
CPU-sized defaults), for a target mesh: what a pod needs per device before renting it.
`--topology NAME` compiles for TPU devices described by `jax.experimental.topologies` (XLA:TPU
from the libtpu package, no TPU hardware). Any jitted step can be measured the same way:
`measure_step(Target(...))` takes the step, its abstract arguments and the analytic counts.

Defaults outside --aot: the config with train.batch_size=8, train.grad_accum=1, model.dtype=float32
and data.seq_len=min(128, block_size) (a step a CPU can run); `--config.a.b=v` overrides them.

Memory (per device, `compiled.memory_analysis()`): argument (state + batch), output, temp
(activations, gradients, workspace), generated code; peak = argument + output - aliased + temp
+ code, compared with the chip's HBM; `live peak` is `device.memory_stats()['peak_bytes_in_use']`
where the backend reports it (not on CPU).

Collectives: parsed from `compiled.as_text()` (gptjax/hlo_collectives.py), per device and per
step; bytes = the whole buffer each works on (result of all-reduce / all-gather, operand of
reduce-scatter; what a decomposed one's permutes move). Roofline (gptjax/roofline.py): the
step's FLOPs, HBM bytes and ICI bytes over the chip's public peak rates.

Analytic expectation, per device and step. P_p = bytes of parameter p in float32, t_p = how many
ways p is split over non-batch mesh axes (tensor), b_p = over batch axes (batch = data x fsdp per
the rules), n_b = data x fsdp devices, k = grad_accum, L layers, B global batch, T = seq_len,
C = n_embd, a = bytes of an activation all-reduce (compute dtype; XLA:CPU promotes bf16
all-reduces to f32, so 4 there). With gather_weights = per_step and the LM loss (each device
accumulates its own rows' gradient; make_train_step's docstring):

    all-gather      sum over p with b_p > 1 of P_p / t_p            (once per step)
    reductions      sum over p of P_p / t_p                         (once per step: a reduce-
                                                                     scatter where b_p > 1, else
                                                                     an all-reduce)
With gather_weights = per_micro_step (or a loss reduced per micro-step), as XLA places them:

    all-gather      2k * sum over p with b_p > 1 of P_p / t_p       (at most: every micro-step's
                                                                      forward and backward)
    reduce-scatter  k * sum over p with b_p > 1 of P_p / t_p        (gradients of sharded params)
    all-reduce      k * sum over p with b_p = 1 of P_p / t_p        (if n_b > 1: replicated grads)
                    + k * sum over p with 1 < b_p < n_b of P_p / (t_p b_p)   (shards over data)
and in both, if tensor > 1:
                    + (4L + 2) * (B / n_b) * T * C * a   all-reduces of activations (per block two
                       forward (attention and MLP output projections, contracting the split
                       heads / mlp) and two backward (their input projections), plus the
                       vocabulary-split embedding lookup forward and the tied head backward)

The position table counts its T used rows in the second model (XLA slices before reducing).
Scalars (loss, norms) are left out. Known deviations (printed under the table): XLA:CPU has no
reduce-scatter creator, so sharded gradients are all-reduced whole and then sliced (same buffer
bytes, so the comparison is on reductions = all-reduce + reduce-scatter); where the gradient is
reduced per micro-step, the tied embedding's two contributions (input lookup, output head) may be
reduced separately; XLA:TPU gathers bf16 copies of weights it only uses in bf16 (half the bytes).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import math
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gptjax import hlo_collectives  # noqa: E402
import layout_report  # noqa: E402
from gptjax import roofline  # noqa: E402
from gptjax.cli import exit_on_user_error  # noqa: E402
from gptjax.errors import GptjaxError  # noqa: E402

LAYOUTS = {  # DESIGN.md's layout names -> mesh
    "dp": dict(data=-1, fsdp=1, tensor=1),
    "fsdp": dict(data=1, fsdp=-1, tensor=1),
    "tp": dict(data=1, fsdp=1, tensor=-1),
    "fsdp_tp": dict(data=1, fsdp=-1, tensor=2),
}
CPU_DEFAULTS = {"train.batch_size": 8, "train.grad_accum": 1, "model.dtype": "float32"}
CPU_SEQ_LEN = 128  # data.seq_len unless given (or the model's block_size if shorter)
MIB = 2 ** 20
LIBTPU_MISSING = ("--topology compiles with XLA:TPU, which the libtpu package provides and this "
                  "environment lacks: pip install libtpu (or pip install -e '.[bench]')")


def load_config(path: str, overrides: list[str], defaults: dict[str, Any]):
    """The config file's get_config() with `defaults`, then the user's --config.a.b=v."""
    from gptjax.cli import config_from_argv
    argv = [f"--config={path}"] + [f"--config.{k}={v}" for k, v in defaults.items()] + overrides
    saved = sys.argv  # ml_collections finds the override flags in sys.argv
    sys.argv = [saved[0]] + argv
    try:
        return config_from_argv(argv, "see benchmarks/sharding_layouts.py --help")[0]
    finally:
        sys.argv = saved


def mesh_of(spec: str) -> dict[str, int]:
    """'dp' or 'data,fsdp,tensor' sizes such as '2,2,2' -> config.mesh values."""
    if spec in LAYOUTS:
        return dict(LAYOUTS[spec])
    sizes = [int(s) for s in spec.split(",")]
    if len(sizes) != 3:
        raise SystemExit(f"--mesh {spec!r}: give data,fsdp,tensor sizes such as 2,2,2")
    return dict(zip(("data", "fsdp", "tensor"), sizes))


def _axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def expected_collectives(config, pieces, per_device: bool) -> dict[str, float]:
    """The analytic bytes per device and step of the module docstring, by kind."""
    import jax
    from gptjax import axes, sharding
    mesh, rules = pieces.mesh, dict(pieces.rules)
    batch_axes = set(_axes(sharding.batch_axes(pieces.rules)))
    n_b = sharding.batch_divisor(mesh, pieces.rules)
    k = config.train.grad_accum
    t_len = pieces.seq_len
    regather = 1 if per_device else 2 * k
    gather = scatter = reduce = tied = 0.0
    flat = jax.tree_util.tree_flatten_with_path(pieces.abstract.params)[0]
    for path, leaf in flat:
        shape, name = list(leaf.shape), jax.tree_util.keystr(path)
        if "wpe" in name and not per_device:
            shape[0] = min(shape[0], t_len)  # only the used positions get a gradient
        size = math.prod(shape) * leaf.dtype.itemsize
        split = [a for e in leaf.sharding.spec for a in _axes(e)]
        b_p = math.prod(mesh.shape[a] for a in split if a in batch_axes)
        t_p = math.prod(mesh.shape[a] for a in split if a not in batch_axes)
        if n_b == 1:
            continue
        if b_p > 1:
            gather += regather * size / t_p
        if per_device:  # one reduction of the accumulated gradient per step
            if b_p > 1:
                scatter += size / t_p
            else:
                reduce += size / t_p
            continue
        if "wte" in name:  # its two gradient contributions may be reduced separately
            tied = k * size / t_p
        if b_p > 1:
            scatter += k * size / t_p
            if n_b > b_p:  # the rest of the batch axes still hold partial sums of the shard
                reduce += k * size / t_p / b_p
        else:
            reduce += k * size / t_p
    tensor = math.prod(mesh.shape[a] for a in {a for logical in (axes.ACT_HEADS, axes.ACT_MLP)
                                               for a in _axes(rules.get(logical))})
    act = 0.0
    if tensor > 1:
        m = config.model
        dtype = np.dtype(jax.numpy.dtype(m.dtype))
        cpu = mesh.devices.flat[0].platform == "cpu"
        a = 4 if cpu and m.dtype == "bfloat16" else dtype.itemsize
        act = (4 * m.n_layer + 2) * config.train.batch_size / n_b * t_len * m.n_embd * a
    return {"all-gather": gather, "reduce-scatter": scatter, "all-reduce": reduce + act,
            "activations": act, "tied embedding": tied}


def _check_divisible(config, pieces) -> None:
    """A clear message instead of XLA's when a split axis does not divide the model's sizes."""
    from gptjax import axes
    from gptjax.config import gpt_config
    m = gpt_config(config)
    rules = dict(pieces.rules)
    sizes = {axes.HEADS: ("model.n_head", m.n_head), axes.MLP: ("4 * model.n_embd", 4 * m.n_embd),
             axes.VOCAB: ("the padded vocabulary", m.padded_vocab_size),
             axes.EMBED: ("model.n_embd", m.n_embd)}
    for name, (what, n) in sizes.items():
        ways = math.prod(pieces.mesh.shape[a] for a in _axes(rules.get(name)))
        if n % ways:
            raise ValueError(f"{what}={n} does not split {ways} ways (mesh "
                             f"{dict(pieces.mesh.shape)}, rule {name} -> {rules.get(name)})")


def _host_available() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


@dataclasses.dataclass
class Target:
    """One jitted step to measure: `step(*args)` with abstract `args` (ShapeDtypeStructs with
    shardings); `run_args(rng)` makes concrete ones for the timed steps (None: compile only).
    The pretraining step is `pretrain_target`; another stage (the PPO iteration) supplies its
    own step, arguments, analytic collective bytes and model FLOPs the same way."""
    step: Any
    args: tuple
    mesh: Any
    rules: Any
    param_bytes: int
    analytic: dict[str, float]
    model_flops: float  # per step, all devices (6N + 6LTC per token for the LM)
    tokens: int  # per step, all devices
    gather: str
    run_args: Any = None


def pretrain_target(config, mesh: dict[str, int], devices: Any = None) -> Target:
    """The real pretraining step for one mesh, jitted with the config's gather_weights."""
    import jax
    import jax.numpy as jnp
    from gptjax import step as step_lib
    from gptjax.loops import pretrain

    config = config.copy_and_resolve_references()
    config.mesh.update(mesh)
    pieces = pretrain.build(config, devices)
    _check_divisible(config, pieces)
    gather = config.sharding.gather_weights
    step = pieces.train_step  # the trainer's jit of the stage's step (gather_weights from config)
    b, t = config.train.batch_size, pieces.seq_len
    batch = jax.ShapeDtypeStruct((b, t + 1), jnp.int32, sharding=pieces.batch_sharding)
    per_device = gather == "per_step" and bool(step_lib.batch_mesh_axes(pieces.mesh,
                                                                        pieces.rules))

    def run_args(rng):
        tokens = [jax.device_put(rng.integers(0, config.model.vocab_size, (b, t + 1),
                                              dtype=np.int32), pieces.batch_sharding)
                  for _ in range(2)]
        return pieces.make_state(jax.random.key(0)), tokens

    params = jax.tree.leaves(pieces.abstract.params)
    return Target(step, (pieces.abstract, batch), pieces.mesh, pieces.rules,
                  sum(x.size * x.dtype.itemsize for x in params),
                  expected_collectives(config, pieces, per_device),
                  pieces.model.cfg.flops_per_token(t) * b * t, b * t, gather, run_args)


def measure(config, mesh: dict[str, int], steps: int, devices: Any = None,
            dump_hlo: str | None = None) -> dict[str, Any]:
    """Compile the real train step for one mesh (abstract inputs), read memory, collectives and
    the roofline from the executable, then (steps > 0) time `steps` steps after one warm-up."""
    return measure_step(pretrain_target(config, mesh, devices), steps, dump_hlo)


def measure_step(target: Target, steps: int = 0, dump_hlo: str | None = None) -> dict[str, Any]:
    import jax
    from gptjax import sharding

    name = "x".join(str(target.mesh.shape[a]) for a in ("data", "fsdp", "tensor"))
    with sharding.activated(target.mesh, target.rules):
        t0 = time.perf_counter()
        compiled = target.step.lower(*target.args).compile()
        compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    if dump_hlo:
        os.makedirs(dump_hlo, exist_ok=True)
        with open(os.path.join(dump_hlo, f"train_step_{name}_{target.gather}.hlo.txt"),
                  "w") as f:
            f.write(hlo)
    coll, unknown = hlo_collectives.count(hlo)
    devs = target.mesh.devices.flat
    r: dict[str, Any] = dict(
        mesh=name, gather=target.gather, compile_s=compile_s, param_bytes=target.param_bytes,
        argument=mem.argument_size_in_bytes, output=mem.output_size_in_bytes,
        alias=mem.alias_size_in_bytes, temp=mem.temp_size_in_bytes,
        code=mem.generated_code_size_in_bytes, unknown_trip_counts=unknown,
        step_s=None, live_peak=None, note="")
    r["peak"] = r["argument"] + r["output"] - r["alias"] + r["temp"] + r["code"]
    for kind, c in coll.items():
        r[f"{kind} n"], r[f"{kind} bytes"], r[f"{kind} permutes"] = c.count, c.bytes, c.permutes
    for kind, v in target.analytic.items():
        r[f"{kind} analytic"] = v
    cost = roofline.cost(hlo, coll)
    r.update(flops=cost.flops, hbm_bytes=cost.hbm_bytes, wire_bytes=cost.wire_bytes,
             tokens_per_chip=target.tokens / len(devs), hbm=None, t_bound=None)
    chip = roofline.CHIPS.get(devs[0].device_kind) if devs[0].platform != "cpu" else None
    if chip is not None:
        r.update(chip=chip.name, hbm=chip.hbm_bytes,
                 **roofline.estimate(cost, chip, target.model_flops / len(devs)))
    if steps <= 0 or target.run_args is None:
        return r
    if devs[0].platform == "cpu":  # every simulated device lives in this process's RAM
        need = len(devs) * (r["argument"] + r["temp"] + r["output"] - r["alias"])
        if need > 0.7 * _host_available():
            r["note"] = f"not run: needs ~{need / 2**30:.1f} GiB host RAM"
            return r
    state, batches = target.run_args(np.random.default_rng(0))
    times = []
    for i in range(steps + 1):  # the first one warms up
        t0 = time.perf_counter()
        state, metrics = compiled(state, batches[i % len(batches)])
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    r["step_s"] = statistics.median(times[1:])
    stats = [d.memory_stats() for d in devs]
    if all(stats) and all("peak_bytes_in_use" in s for s in stats):
        r["live_peak"] = max(s["peak_bytes_in_use"] for s in stats)
    del state, batches, metrics
    return r


def run(config, layouts: list[str], meshes: list[str], steps: int, devices: Any = None,
        dump_hlo: str | None = None) -> list[dict[str, Any]]:
    """One row per layout name and per explicit mesh; a layout that cannot be built for this
    model and device count (e.g. 12 heads over 8 tensor devices) gets its error instead."""
    rows = []
    for name in layouts + meshes:
        print(f"[sharding_layouts] {name} ...", file=sys.stderr, flush=True)
        try:
            r = measure(config, mesh_of(name), steps, devices, dump_hlo)
        except Exception as e:  # report and go on with the other layouts
            msg = " ".join(str(e).split())
            r = {"error": msg[:160]}
        rows.append({"layout": name, **r})
        gc.collect()
    return rows


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "gpt2_124m.py"))
    ap.add_argument("--devices", type=int, default=0,
                    help="simulate this many CPU devices (0: the backend's real devices)")
    ap.add_argument("--layouts", default="dp,fsdp,tp,fsdp_tp",
                    help="named layouts (comma list, '' for none): " + ", ".join(LAYOUTS))
    ap.add_argument("--mesh", action="append", default=[],
                    help="data,fsdp,tensor sizes, e.g. 2,2,2 (repeatable)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per layout (0: compile only)")
    ap.add_argument("--aot", action="store_true",
                    help="compile only, with the config's own shapes (no CPU-sized defaults)")
    ap.add_argument("--topology", help="TPU topology for --aot, e.g. v5e:4x4 (needs libtpu)")
    ap.add_argument("--dump_hlo", help="also write each compiled step's HLO text here")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "sharding_layouts"))
    args, rest = ap.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    if len(overrides) != len(rest):
        ap.error(f"unrecognised arguments: {[a for a in rest if a not in overrides]}")
    if args.devices:  # before JAX starts its backends
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}")
        os.environ["JAX_PLATFORMS"] = "cpu"
    if args.topology:  # compile for TPU devices described by libtpu; run nothing on them
        if importlib.util.find_spec("libtpu") is None:
            raise GptjaxError(LIBTPU_MISSING)
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        # compile only, no chip is opened: let parallel compiles share libtpu
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import jax

    devices = None
    if args.topology:
        from jax.experimental import topologies
        devices = topologies.get_topology_desc(args.topology, "tpu").devices
    config = load_config(args.config, overrides, {} if args.aot else CPU_DEFAULTS)
    if not args.aot and not any(o.startswith("--config.data.seq_len") for o in overrides):
        config.data.seq_len = min(CPU_SEQ_LEN, config.model.block_size)
    layouts = [s for s in args.layouts.split(",") if s] if not (args.aot and args.mesh) else []
    rows = run(config, layouts, args.mesh, 0 if args.aot else args.steps, devices,
               args.dump_hlo)
    m = config.model
    dev = devices or jax.devices()
    title = (f"{os.path.basename(args.config)}: {m.n_layer}L {m.n_head}H {m.n_embd}C vocab "
             f"{m.vocab_size}, B={config.train.batch_size} T={config.data.seq_len or m.block_size}"
             f" accum={config.train.grad_accum} {m.dtype}, gather_weights "
             f"{config.sharding.gather_weights}; {len(dev)} x {dev[0].device_kind}")
    print(f"## Sharding layouts: {title}\n")
    print(layout_report.tables(rows))
    paths = layout_report.write_outputs(rows, args.out, title)
    print(f"\nwrote {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
