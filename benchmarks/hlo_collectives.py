"""The collectives in a compiled XLA program, counted and sized per executed step from its HLO text.

`count_collectives(compiled.as_text())` -> {kind: Collective(count, bytes)} for the kinds
all-reduce, all-gather, reduce-scatter, collective-permute and all-to-all. The rules:

- bytes are per device and measure the whole buffer the collective works on: the result of an
  all-reduce, all-gather, collective-permute or all-to-all, and the *operand* of a
  reduce-scatter (its result is 1/n of that). So a gradient of S bytes costs S whether XLA
  all-reduces it or reduce-scatters it, and a parameter of S bytes gathered costs S.
- a tuple-shaped op (XLA's combiners merge many small all-reduces into one) counts once, with
  the bytes of all its elements;
- an async pair (`all-gather-start` / `all-gather-done`, ...) counts once, sized by the
  `-done` op's result; ops wrapped in `async-start` are counted inside the computation it calls;
- ops inside a `while` body (a lax.scan: gradient accumulation, scanned layers) count once per
  iteration (XLA's `known_trip_count`, else the `i < N` of the loop condition; 1 if neither is
  there, and `unknown_trip_counts` says so), and
  ops in called computations (call, conditional branches, fusions) once per call.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BITS = {"pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16,
               "u16": 16, "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64,
               "u64": 64, "f64": 64, "c64": 64, "c128": 128}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_CALLED = re.compile(r"\b(to_apply|calls|body|condition|true_computation|false_computation)="
                     r"%?([^\s,}]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?([0-9]+)')
_OPERAND = re.compile(r"%([^\s,)]+)")


@dataclasses.dataclass
class Collective:
    count: int = 0
    bytes: int = 0


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape, e.g. 'f32[8,64]{1,0}' or a tuple '(f32[2], bf16[3,4])'."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        bits = _DTYPE_BITS.get(dtype, 8 if dtype.startswith("f8") else None)
        if bits is None:  # token[], opaque: no payload
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * bits // 8
    return total


def _split(rest: str) -> tuple[str, str, str]:
    """'(f32[2], f32[3]) all-reduce(%a, %b), attrs' -> (shape, opcode, 'a, %b), attrs')."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
        shape, tail = rest[:i + 1], rest[i + 1:].lstrip()
    else:
        shape, _, tail = rest.partition(" ")
    opcode, _, args = tail.partition("(")
    return shape, opcode.strip(), args


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    args: str


def _computations(hlo: str) -> tuple[dict[str, list[_Instr]], str | None]:
    comps: dict[str, list[_Instr]] = {}
    entry, current = None, None
    for line in hlo.splitlines():
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        if current is None or not line[0].isspace():
            m = _HEADER.match(line)
            if m and "=" not in line.split("(", 1)[0]:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
                continue
            if line.strip() == "}":
                current = None
                continue
        m = _INSTR.match(line) if current is not None else None
        if m:
            shape, opcode, args = _split(m.group(2))
            comps[current].append(_Instr(m.group(1), shape, opcode, args))
    return comps, entry


def _bound(comps: dict[str, list[_Instr]], args: str) -> int | None:
    """A while loop's trip count from its condition when XLA left no known_trip_count: the
    `i < N` of a lax.scan / fori_loop (counter from 0 by 1), N an integer constant."""
    m = re.search(r"condition=%?([^\s,}]+)", args)
    cond = comps.get(m.group(1), []) if m else []
    consts = {i.name: i.args.split(")", 1)[0] for i in cond if i.opcode == "constant"}
    for i in cond:
        if i.opcode == "compare" and "direction=LT" in i.args:
            operands = _OPERAND.findall(i.args.split(")", 1)[0])
            if len(operands) == 2 and consts.get(operands[1], "").lstrip("-").isdigit():
                return int(consts[operands[1]])
    return None


def count_collectives(hlo: str) -> dict[str, Collective]:
    """{kind: Collective(count, bytes)} executed per run of the module's entry computation."""
    return _count(hlo)[0]


def unknown_trip_counts(hlo: str) -> int:
    """How many while loops had no known trip count (their bodies were counted once)."""
    return _count(hlo)[1]


def _count(hlo: str) -> tuple[dict[str, Collective], int]:
    comps, entry = _computations(hlo)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    calls: dict[str, int] = defaultdict(int)  # computation -> executions per step
    out = {k: Collective() for k in KINDS}
    unknown = 0

    def visit(name: str, times: int, depth: int = 0) -> None:
        nonlocal unknown
        if name not in comps or depth > 64 or times == 0:
            return
        calls[name] += times
        shapes = {i.name: i.shape for i in comps[name]}
        for ins in comps[name]:
            op = ins.opcode
            base = op[:-len("-done")] if op.endswith("-done") else op
            if base in KINDS and not op.endswith("-start"):
                size = shape_bytes(ins.shape)
                if base == "reduce-scatter":  # size by the operand(s): the whole buffer reduced
                    operands = _OPERAND.findall(ins.args.split(")", 1)[0])
                    size = sum(shape_bytes(shapes.get(o, "")) for o in operands) or size
                out[base].count += times
                out[base].bytes += times * size
            if op in ("async-done", "async-update"):
                continue  # the wrapped computation is visited once, from async-start
            trip = 1
            if op == "while":
                m = _TRIP.search(ins.args)
                trip = int(m.group(1)) if m else _bound(comps, ins.args)
                unknown += trip is None
                trip = trip or 1
            for key, callee in _CALLED.findall(ins.args):
                visit(callee, times * (trip if key == "body" else 1), depth + 1)
            for group in _BRANCHES.findall(ins.args):
                for callee in _OPERAND.findall(group):
                    visit(callee, times, depth + 1)

    visit(entry, 1)
    return out, unknown
