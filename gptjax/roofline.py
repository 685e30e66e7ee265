"""A roofline estimate of one compiled step per device: FLOPs, HBM bytes and ICI bytes, each over
the chip's public peak rate, read from the optimized HLO text (`compiled.as_text()`).

    t_compute = FLOPs / peak            FLOPs: 2 * m * n * k of every dot and convolution
    t_memory  = HBM bytes / bandwidth   HBM bytes: operands + results of every kernel
    t_network = wire bytes / ICI        wire bytes: all-gather, reduce-scatter, permute and
                                        all-to-all send their buffer once, an all-reduce twice;
                                        ICI: what a chip sends over all its links at once
    t_step >= max(t_compute, t_memory, t_network)   (a bound: perfect overlap, every link busy)
    MFU at the bound = model FLOPs per chip / (t_step * peak)

Counted per executed step, loops times their trip counts (`hlo_collectives.walk`): XLA's own
`compiled.cost_analysis()` counts a while body once, which undercounts a step with gradient
accumulation by the number of micro-steps (measured: 1/4 of the FLOPs at grad_accum 4).
A kernel is a top-level instruction (a fusion, an unfused op, a collective) outside fusion
bodies; its bytes are the arrays in device memory it reads and writes (an on-chip operand, `S(n)`
in a TPU layout, is not HBM traffic; a slice moves only its slice); elementwise FLOPs are left
out (the MXU's matmuls dominate a transformer). Convolutions (XLA:TPU lowers dots to them)
count only the window positions that hit real input, as XLA's HloCostAnalysis does.
"""

from __future__ import annotations

import dataclasses
import math
import re

from gptjax import hlo_collectives

# Per chip, from Google Cloud's TPU system-architecture pages (cloud.google.com/tpu/docs/v5e and
# /tpu/docs/v5p, key specifications tables): bf16 peak, HBM capacity and bandwidth, and the
# "Interchip Interconnect BW" (1,600 / 4,800 Gbps: half the bidirectional 400 / 1,200 GB/s), the
# rate at which a chip can send over all its links at once.


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_flops: float  # bf16, FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s a chip sends, all of its links together


CHIPS = {  # keyed by jax's device_kind
    "TPU v5 lite": Chip("v5e", 197e12, 16 * 2**30, 819e9, 200e9),
    "TPU v5": Chip("v5p", 459e12, 95 * 2**30, 2765e9, 600e9),
}
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
         "conditional", "after-all", "partition-id", "replica-id", "opt-barrier",
         "async-start", "async-update", "async-done", "add-dependency", "domain"}
_DIMS = re.compile(r"\b(lhs|rhs)_(contracting|batch)_dims=\{([0-9,]*)\}")
_CONV_ATTRS = re.compile(r"(window=\{[^}]*\}|dim_labels=\S+|\w+_group_count=[0-9]+)")
_SHAPE_DIMS = re.compile(r"\[([0-9,]*)\]")


@dataclasses.dataclass
class Cost:
    flops: float
    hbm_bytes: float
    wire_bytes: float
    all_bytes: float = 0.0  # every memory space (what XLA's cost_analysis counts)


def _dims(shape: str) -> list[int]:
    m = _SHAPE_DIMS.search(shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def dot_flops(v: hlo_collectives.Visit) -> float:
    """2 x (result elements) x (contracted elements) of a dot."""
    ops = v.instr.operands()
    lhs = _dims(v.shape_of(ops[0])) if ops else []
    contracting = [int(d) for side, kind, ds in _DIMS.findall(v.instr.args)
                   if side == "lhs" and kind == "contracting" for d in ds.split(",") if d]
    k = math.prod(lhs[d] for d in contracting if d < len(lhs))
    return 2.0 * math.prod(_dims(v.instr.shape)) * k


def _window(args: str) -> dict[str, list]:
    m = re.search(r"window=\{([^}]*)\}", args)
    out: dict[str, list] = {}
    for item in (m.group(1).split() if m else []):
        key, _, value = item.partition("=")
        if key == "pad":
            out[key] = [tuple(int(x) for x in p.split("_")) for p in value.split("x")]
        else:
            out[key] = [int(x) for x in value.split("x")]
    return out


def conv_flops(v: hlo_collectives.Visit) -> float:
    """XLA's HloCostAnalysis count for a convolution: 2 x (input features / groups) x output
    features x (batch / batch groups) x, per spatial dim, the (output, kernel) position pairs
    that land on a real (undilated, unpadded) input element."""
    ops = v.instr.operands()
    labels = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", v.instr.args)
    if len(ops) < 2 or not labels:
        return 0.0
    lhs, rhs, out = _dims(v.shape_of(ops[0])), _dims(v.shape_of(ops[1])), _dims(v.instr.shape)
    ll, rl, ol = labels.groups()
    win = _window(v.instr.args)
    groups = re.search(r"feature_group_count=([0-9]+)", v.instr.args)
    bgroups = re.search(r"batch_group_count=([0-9]+)", v.instr.args)
    positions = 1
    for i in range(len(ll) - 2):  # spatial dims are named by their index
        c = str(i)
        n_in, n_k, n_out = lhs[ll.index(c)], rhs[rl.index(c)], out[ol.index(c)]
        stride = win.get("stride", [1] * 8)[i]
        low = win.get("pad", [(0, 0)] * 8)[i][0]
        base = win.get("lhs_dilate", [1] * 8)[i]
        wdil = win.get("rhs_dilate", [1] * 8)[i]
        count = 0
        for o in range(n_out):
            for k in range(n_k):
                u = o * stride - low + k * wdil
                if u >= 0 and u % base == 0 and u // base < n_in:
                    count += 1
        positions *= count
    fma = (lhs[ll.index("f")] // (int(groups.group(1)) if groups else 1) * rhs[rl.index("o")]
           * lhs[ll.index("b")] // (int(bgroups.group(1)) if bgroups else 1) * positions)
    return 2.0 * fma


def _memory(v: hlo_collectives.Visit) -> tuple[int, int]:
    """(bytes in device memory, bytes in any memory) that one kernel reads and writes."""
    op = v.instr.opcode
    if v.fused or op in _FREE or (op == "custom-call" and "AllocateBuffer" in v.instr.args):
        return 0, 0
    if op in ("slice", "dynamic-slice", "slice-done"):  # reads and writes the slice only
        return tuple(2 * sum(b for b, sp in hlo_collectives.arrays(v.instr.shape) if keep(sp))
                     for keep in (lambda sp: sp == 0, lambda sp: True))
    if op == "slice-start":
        return 0, 0
    if op == "dynamic-update-slice":  # in place: reads and writes the update only
        ops = v.instr.operands()
        upd = hlo_collectives.arrays(v.shape_of(ops[1])) if len(ops) > 1 else []
        return 2 * sum(b for b, sp in upd if sp == 0), 2 * sum(b for b, _ in upd)
    arrays = []
    if not op.endswith("-done"):  # a -start reads its operands, its -done writes the result
        for o in v.instr.operands():
            arrays += hlo_collectives.arrays(v.shape_of(o))
    if not op.endswith("-start"):
        arrays += hlo_collectives.arrays(v.instr.shape)
    return sum(b for b, space in arrays if space == 0), sum(b for b, _ in arrays)


def cost(hlo: str, collectives: dict[str, hlo_collectives.Collective] | None = None) -> Cost:
    """FLOPs, HBM bytes and ICI wire bytes per device and step of an optimized HLO module."""
    visits, _ = hlo_collectives.walk(hlo)
    flops = hbm = every = 0.0
    convs: dict[tuple, float] = {}  # one count per distinct convolution
    for v in visits:
        op = v.instr.opcode
        if op == "dot":
            flops += v.times * dot_flops(v)
        elif op == "convolution":
            key = (v.instr.shape, tuple(v.shape_of(o) for o in v.instr.operands()),
                   tuple(_CONV_ATTRS.findall(v.instr.args)))
            if key not in convs:
                convs[key] = conv_flops(v)
            flops += v.times * convs[key]
        device, anywhere = _memory(v)
        hbm += v.times * device
        every += v.times * anywhere
    coll = collectives if collectives is not None else hlo_collectives.count_collectives(hlo)
    wire = sum(c.bytes * (2 if kind == "all-reduce" else 1) for kind, c in coll.items())
    return Cost(flops, hbm, wire, every)


def estimate(c: Cost, chip: Chip, model_flops: float) -> dict[str, float]:
    """The three times (s), their max (the bound) and the MFU at that bound."""
    t = {"t_compute": c.flops / chip.peak_flops, "t_memory": c.hbm_bytes / chip.hbm_bandwidth,
         "t_network": c.wire_bytes / chip.ici_bandwidth}
    t["t_bound"] = max(t.values())
    t["mfu_bound"] = model_flops / (t["t_bound"] * chip.peak_flops) if t["t_bound"] else 0.0
    return t


def main(argv: list[str] | None = None) -> int:
    """Re-read HLO files that `sharding_layouts.py --dump_hlo` kept, without compiling again."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("hlo", nargs="+", help="optimized HLO text files (compiled.as_text())")
    ap.add_argument("--chip", default="v5e", choices=[c.name for c in CHIPS.values()])
    ap.add_argument("--model_flops", type=float, default=0.0,
                    help="model FLOPs per chip and step (6N + 6LTC per token x tokens), for MFU")
    args = ap.parse_args(argv)
    chip = next(c for c in CHIPS.values() if c.name == args.chip)
    print("| HLO | " + " | ".join(f"{k} n / MiB" for k in hlo_collectives.KINDS) +
          " | TFLOP | HBM GiB | ICI GiB | t compute s | t memory s | t network s | step s ≥ |"
          " MFU ≤ |")
    print("|---|" + "---:|" * (len(hlo_collectives.KINDS) + 8))
    for path in args.hlo:
        with open(path) as f:
            hlo = f.read()
        coll = hlo_collectives.count_collectives(hlo)
        c = cost(hlo, coll)
        t = estimate(c, chip, args.model_flops)
        cells = [f"{x.count} / {x.bytes / 2**20:,.1f}" for x in coll.values()]
        print(f"| {path.rsplit('/', 1)[-1]} | " + " | ".join(cells) +
              f" | {c.flops / 1e12:,.1f} | {c.hbm_bytes / 2**30:,.1f} | "
              f"{c.wire_bytes / 2**30:,.2f} | {t['t_compute']:.3f} | {t['t_memory']:.3f} | "
              f"{t['t_network']:.3f} | {t['t_bound']:.3f} | {t['mfu_bound']:.1%} |")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
