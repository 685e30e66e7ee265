"""Sharding layouts side by side: compile time, step time, memory and the collectives XLA inserts.

    python benchmarks/sharding_layouts.py --devices 8 [--config configs/gpt2_124m.py]
        [--config.train.batch_size=16 ...] [--layouts dp,fsdp,tp,fsdp_tp] [--mesh 2,2,2 ...]
        [--steps 3] [--out benchmarks/out/sharding_layouts]
    python benchmarks/sharding_layouts.py --aot --devices 64 --mesh 8,8,1 [--config ...]
    python benchmarks/sharding_layouts.py --aot --topology v5e:4x4 --mesh 1,16,1  # needs libtpu

Every layout compiles the real pretraining step (`gptjax.loops.pretrain.build`: AdamW, clipping,
donation, gradient accumulation) ahead of time from abstract arrays (`train_step.lower(
abstract state, ShapeDtypeStruct batch).compile()`), so memory and collectives come without
allocating a state; then, unless --steps 0 or the simulated devices would not fit in host RAM,
it runs --steps timed steps (median, after one warm-up) on random tokens. `--devices N`
simulates N CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, JAX_PLATFORMS=cpu);
without it the backend's real devices are used. `--aot` compiles only, with the config's own
shapes (no CPU-sized defaults), for a target mesh: what a pod needs per device before renting it.
`--topology NAME` compiles for TPU devices described by `jax.experimental.topologies` (needs the
libtpu package, no TPU hardware).

Defaults outside --aot: the config with train.batch_size=8, train.grad_accum=1, model.dtype=float32
and data.seq_len=min(128, block_size) (a step a CPU can run); `--config.a.b=v` overrides them.

Memory (per device, `compiled.memory_analysis()`): argument (state + batch), output, temp
(activations, gradients, workspace), generated code; `live peak` is `device.memory_stats()
['peak_bytes_in_use']` where the backend reports it (not on CPU).

Collectives: parsed from `compiled.as_text()` (benchmarks/hlo_collectives.py), per device and per
step; bytes = the whole buffer each works on (result of all-reduce / all-gather, operand of
reduce-scatter).

Analytic expectation, per device and step. P_p = bytes of parameter p in float32 (the position
table counts only its seq_len used rows: its gradient is zero elsewhere and XLA slices before
reducing), t_p = how many ways p is split over non-batch mesh axes (tensor), b_p = over batch axes
(batch = data x fsdp per the rules), n_b = data x fsdp devices, k = grad_accum, L layers, B global
batch, T = seq_len, C = n_embd, a = bytes of an activation all-reduce (compute dtype; XLA:CPU
promotes bf16 all-reduces to f32, so 4 there):

    all-gather      sum over p with b_p > 1 of P_p / t_p            (forward; a backward that
                                                                      re-gathers shows as x2)
    reduce-scatter  k * sum over p with b_p > 1 of P_p / t_p        (gradients of sharded params)
    all-reduce      k * sum over p with b_p = 1 of P_p / t_p         (if n_b > 1: replicated grads)
                    + k * sum over p with 1 < b_p < n_b of P_p / (t_p b_p)   (shards over data)
                    + (4L + 2) * (B / n_b) * T * C * a              (if tensor > 1: per block two
                       forward (attention and MLP output projections, contracting the split
                       heads / mlp) and two backward (their input projections), plus the
                       vocabulary-split embedding lookup forward and the tied head backward)

so DP = one all-reduce of all parameter bytes, FSDP = one all-gather + one reduce-scatter of
them, TP = (4L + 2) activation all-reduces of B*T*C, FSDP+TP = those of the tensor shards plus
the activation all-reduces of the local batch. Scalars (loss, norms) are left out. Known
deviations XLA:CPU shows (printed under the table): it has no reduce-scatter creator, so
sharded gradients are all-reduced whole and then sliced (same buffer bytes, so the comparison
is on reductions = all-reduce + reduce-scatter); it has no all-reduce reassociation, so the tied
embedding's two gradient contributions (input lookup, output head) are reduced separately in DP,
one extra V*C*4 bytes; and it may re-gather parameters in the backward (all-gather ratio ~2).
"""

from __future__ import annotations

import argparse
import csv
import gc
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

import hlo_collectives  # noqa: E402

LAYOUTS = {  # DESIGN.md's layout names -> mesh
    "dp": dict(data=-1, fsdp=1, tensor=1),
    "fsdp": dict(data=1, fsdp=-1, tensor=1),
    "tp": dict(data=1, fsdp=1, tensor=-1),
    "fsdp_tp": dict(data=1, fsdp=-1, tensor=2),
}
CPU_DEFAULTS = {"train.batch_size": 8, "train.grad_accum": 1, "model.dtype": "float32"}
CPU_SEQ_LEN = 128  # data.seq_len unless given (or the model's block_size if shorter)
MIB = 2 ** 20


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


def expected_collectives(config, pieces) -> dict[str, float]:
    """The analytic bytes per device and step of the module docstring, by kind."""
    import jax
    from gptjax import axes, sharding
    mesh, rules = pieces.mesh, dict(pieces.rules)
    batch_axes = set(_axes(sharding.batch_axes(pieces.rules)))
    n_b = sharding.batch_divisor(mesh, pieces.rules)
    k = config.train.grad_accum
    t_len = pieces.seq_len
    gather = scatter = reduce = tied = 0.0
    flat = jax.tree_util.tree_flatten_with_path(pieces.abstract.params)[0]
    for path, leaf in flat:
        shape, name = list(leaf.shape), jax.tree_util.keystr(path)
        if "wpe" in name:
            shape[0] = min(shape[0], t_len)  # only the used positions get a gradient
        size = math.prod(shape) * leaf.dtype.itemsize
        split = [a for e in leaf.sharding.spec for a in _axes(e)]
        b_p = math.prod(mesh.shape[a] for a in split if a in batch_axes)
        t_p = math.prod(mesh.shape[a] for a in split if a not in batch_axes)
        if n_b == 1:
            continue
        if "wte" in name:  # XLA:CPU may reduce its two gradient contributions separately
            tied = k * size / t_p
        if b_p > 1:
            gather += size / t_p
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
        a = 4 if jax.devices()[0].platform == "cpu" and m.dtype == "bfloat16" else dtype.itemsize
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


def measure(config, mesh: dict[str, int], steps: int, devices: Any = None,
            dump_hlo: str | None = None) -> dict[str, Any]:
    """Compile the real train step for one mesh (abstract inputs), read memory and collectives
    from the executable, then (steps > 0) time `steps` steps after one warm-up."""
    import jax
    import jax.numpy as jnp
    from gptjax import sharding
    from gptjax.loops import pretrain

    config = config.copy_and_resolve_references()
    config.mesh.update(mesh)
    pieces = pretrain.build(config, devices)
    _check_divisible(config, pieces)
    b = config.train.batch_size
    batch = jax.ShapeDtypeStruct((b, pieces.seq_len + 1), jnp.int32,
                                 sharding=pieces.batch_sharding)
    with sharding.activated(pieces.mesh, pieces.rules):
        t0 = time.perf_counter()
        compiled = pieces.train_step.lower(pieces.abstract, batch).compile()
        compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    if dump_hlo:
        os.makedirs(dump_hlo, exist_ok=True)
        name = "x".join(str(pieces.mesh.shape[a]) for a in ("data", "fsdp", "tensor"))
        with open(os.path.join(dump_hlo, f"train_step_{name}.hlo.txt"), "w") as f:
            f.write(hlo)
    coll = hlo_collectives.count_collectives(hlo)
    params = jax.tree.leaves(pieces.abstract.params)
    r: dict[str, Any] = dict(
        mesh="x".join(str(pieces.mesh.shape[a]) for a in ("data", "fsdp", "tensor")),
        compile_s=compile_s, param_bytes=sum(x.size * x.dtype.itemsize for x in params),
        argument=mem.argument_size_in_bytes, output=mem.output_size_in_bytes,
        alias=mem.alias_size_in_bytes, temp=mem.temp_size_in_bytes,
        code=mem.generated_code_size_in_bytes,
        unknown_trip_counts=hlo_collectives.unknown_trip_counts(hlo),
        step_s=None, live_peak=None, note="")
    for kind, c in coll.items():
        r[f"{kind} n"], r[f"{kind} bytes"] = c.count, c.bytes
    for kind, v in expected_collectives(config, pieces).items():
        r[f"{kind} analytic"] = v
    r["total bytes"] = sum(c.bytes for c in coll.values())
    if steps <= 0:
        return r
    devs = pieces.mesh.devices.flat
    if devs[0].platform == "cpu":  # every simulated device lives in this process's RAM
        need = len(pieces.mesh.devices.flat) * (r["argument"] + r["temp"] + r["output"]
                                               - r["alias"])
        if need > 0.7 * _host_available():
            r["note"] = f"not run: needs ~{need / 2**30:.1f} GiB host RAM"
            return r
    state = pieces.make_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = [jax.device_put(rng.integers(0, config.model.vocab_size, (b, pieces.seq_len + 1),
                                          dtype=np.int32), pieces.batch_sharding)
              for _ in range(2)]
    times = []
    for i in range(steps + 1):  # the first one warms up
        t0 = time.perf_counter()
        state, metrics = compiled(state, tokens[i % 2])
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    r["step_s"] = statistics.median(times[1:])
    stats = [d.memory_stats() for d in devs]
    if all(stats) and all("peak_bytes_in_use" in s for s in stats):
        r["live_peak"] = max(s["peak_bytes_in_use"] for s in stats)
    del state, tokens, metrics
    return r


def _mib(x: Any) -> str:
    return "n/a" if x is None else f"{x / MIB:,.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else ("–" if not a else "∞")


def tables(rows: list[dict[str, Any]]) -> str:
    out = ["| layout | mesh d×f×t | compile s | step s | argument MiB | output MiB | temp MiB |"
           " code MiB | live peak MiB | argument / dp |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dp = next((r for r in rows if r["layout"] == "dp" and "error" not in r), None)
    for r in rows:
        if "error" in r:
            out.append(f"| {r['layout']} | {r.get('mesh', '')} | not compiled: {r['error']} |"
                       + " |" * 7)
            continue
        step = "n/a" if r["step_s"] is None else f"{r['step_s']:.2f}"
        out.append(f"| {r['layout']} | {r['mesh']} | {r['compile_s']:.1f} | {step} | "
                   f"{_mib(r['argument'])} | {_mib(r['output'])} | {_mib(r['temp'])} | "
                   f"{_mib(r['code'])} | {_mib(r['live_peak'])} | "
                   f"{_ratio(r['argument'], dp['argument']) if dp else '–'} |")
    out += ["", "| layout | all-reduce n / MiB | all-gather n / MiB | reduce-scatter n / MiB |"
            " permute n / MiB | all-to-all n / MiB | analytic AR / AG / RS MiB |"
            " reductions (AR+RS) measured / analytic | all-gather measured / analytic |"
            " total measured / analytic |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            continue
        cells = [f"{r[k + ' n']} / {_mib(r[k + ' bytes'])}" for k in hlo_collectives.KINDS]
        ar, ag, rs = (r[f"{k} analytic"] for k in ("all-reduce", "all-gather", "reduce-scatter"))
        red = r["all-reduce bytes"] + r["reduce-scatter bytes"]
        out.append(f"| {r['layout']} | " + " | ".join(cells) +
                   f" | {_mib(ar)} / {_mib(ag)} / {_mib(rs)} | {_ratio(red, ar + rs)} | "
                   f"{_ratio(r['all-gather bytes'], ag)} | "
                   f"{_ratio(r['total bytes'], ar + ag + rs)} |")
    out.append("")
    for r in rows:
        for note in _notes(r):
            out.append(f"- {r['layout']}: {note}")
    return "\n".join(out)


def _notes(r: dict[str, Any]) -> list[str]:
    """What explains a row's deviations from the analytic model, when the numbers show it."""
    notes = [r["note"]] if r.get("note") else []
    if "error" in r:
        return notes
    if r["unknown_trip_counts"]:
        notes.append(f"{r['unknown_trip_counts']} while loops of unknown trip count counted once")
    red = r["all-reduce bytes"] + r["reduce-scatter bytes"]
    expect = r["all-reduce analytic"] + r["reduce-scatter analytic"]
    tied = r["tied embedding analytic"]
    if tied and expect and abs(red - expect - tied) < 0.01 * expect:
        notes.append(f"the reductions exceed the analytic value by the tied embedding's "
                     f"gradient ({tied / MIB:,.1f} MiB): its input-lookup and output-head "
                     f"contributions are all-reduced separately, before XLA adds them "
                     f"(XLA:CPU has no all-reduce reassociation); without it measured / analytic = "
                     f"{(red - tied) / expect:.3f}")
    if r["all-gather analytic"] and r["all-gather bytes"] > 1.5 * r["all-gather analytic"]:
        notes.append(f"{r['all-gather bytes'] / r['all-gather analytic']:.2f} x the forward's "
                     "parameter all-gathers: XLA gathers again for the backward pass (and, with "
                     "gradient accumulation, may do so in every micro-step)")
    if r["reduce-scatter analytic"] and not r["reduce-scatter n"]:
        notes.append("sharded gradients are all-reduced whole and then sliced (no reduce-scatter"
                     " on this backend): counted with the reductions")
    return notes


def write_outputs(rows: list[dict[str, Any]], out_dir: str, title: str) -> list[str]:
    """rows -> DIR/sharding_layouts.csv and DIR/sharding_layouts.png; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    csv_path = os.path.join(out_dir, "sharding_layouts.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if "error" not in r]
    x = np.arange(len(ok))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = [  # (label, measured, analytic, colour)
        ("reductions (AR+RS)", lambda r: r["all-reduce bytes"] + r["reduce-scatter bytes"],
         lambda r: r["all-reduce analytic"] + r["reduce-scatter analytic"], "tab:blue"),
        ("all-gather", lambda r: r["all-gather bytes"], lambda r: r["all-gather analytic"],
         "tab:green"),
        ("permute + all-to-all", lambda r: r["collective-permute bytes"]
         + r["all-to-all bytes"], lambda r: 0.0, "tab:gray")]
    width = 0.13
    for i, (label, measured, analytic, colour) in enumerate(series):
        ax1.bar(x + (2 * i - 2.5) * width, [measured(r) / MIB for r in ok], width,
                color=colour, label=f"{label} measured")
        ax1.bar(x + (2 * i - 1.5) * width, [analytic(r) / MIB for r in ok], width,
                color=colour, alpha=0.45, hatch="//", label=f"{label} analytic")
    ax1.set_title("collective bytes per device and step")
    ax1.set_ylabel("MiB")
    for ax in (ax1, ax2):
        ax.set_xticks(x, [f"{r['layout']}\n{r['mesh']}" for r in ok])
    ax1.legend(fontsize=7, ncol=2)
    bottom = np.zeros(len(ok))
    for key in ("argument", "temp", "code"):
        vals = np.array([r[key] / MIB for r in ok])
        ax2.bar(x, vals, 0.5, bottom=bottom, label=key)
        bottom += vals
    ax2.set_title("memory per device (compiled.memory_analysis)")
    ax2.set_ylabel("MiB")
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png_path = os.path.join(out_dir, "sharding_layouts.png")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return [csv_path, png_path]


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
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
             f" accum={config.train.grad_accum} {m.dtype}; {len(dev)} x {dev[0].device_kind}")
    print(f"## Sharding layouts: {title}\n")
    print(tables(rows))
    paths = write_outputs(rows, args.out, title)
    print(f"\nwrote {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
