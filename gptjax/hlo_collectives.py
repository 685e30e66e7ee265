"""The collectives in a compiled XLA program, counted and sized per executed step from its HLO text.

`count_collectives(compiled.as_text())` -> {kind: Collective(count, bytes, permutes)} for the
kinds all-reduce, all-gather, reduce-scatter, collective-permute and all-to-all. The rules:

- bytes are per device and measure the whole buffer the collective works on: the result of an
  all-reduce, all-gather, collective-permute or all-to-all, and the *operand* of a
  reduce-scatter (its result is 1/n of that). So a gradient of S bytes costs S whether XLA
  all-reduces it or reduce-scatters it, and a parameter of S bytes gathered costs S.
- a tuple-shaped op (XLA's combiners merge many small all-reduces into one) counts once, with
  the bytes of all its elements;
- an async pair (`all-gather-start` / `all-gather-done`, ...) counts once, sized by the
  `-done` op's result; ops wrapped in `async-start` are counted inside the computation it calls;
- one collective that XLA:TPU splits over several fusions (its async collective fusions: a
  start, then continuations and a done that each hold a copy of the op, marked by a
  `flag_start` other than -1 in their `async_collective_fusion_config`) counts once, at its
  start;
- collective-permutes inside XLA's windowed-einsum loops (`windowed_dot_general_body_rs` /
  `_ag`, the SPMD partitioner's names for a reduce-scatter or all-gather decomposed into a ring
  of permutes overlapped with the matmul) count as the reduce-scatter / all-gather they are
  (their `permutes` field says how many came that way), sized by the bytes they move;
- ops inside a `while` body (a lax.scan: gradient accumulation, scanned layers) count once per
  iteration (XLA's `known_trip_count`, else the `i < N` of the loop condition; 1 if neither is
  there, and `unknown_trip_counts` says so), and
  ops in called computations (call, conditional branches, fusions) once per call.

`walk(hlo)` gives every instruction with how many times it runs per step, for other counters
(gptjax/roofline.py sizes FLOPs and HBM traffic with it).
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_WINDOWED = {"windowed_dot_general_body_rs": "reduce-scatter",
             "windowed_dot_general_body_ag": "all-gather"}
_DTYPE_BITS = {"pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16,
               "u16": 16, "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64,
               "u64": 64, "f64": 64, "c64": 64, "c128": 128}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*)$")
_CALLED = re.compile(r"\b(to_apply|calls|body|condition|true_computation|false_computation)="
                     r"%?([^\s,}]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?([0-9]+)')
_OPERAND = re.compile(r"%([^\s,)]+)")
_CLONE = re.compile(r'"async_collective_fusion_config":\{"flag_start":"(?!-1")')
_MEMORY_SPACE = re.compile(r"S\(([0-9]+)\)")


@dataclasses.dataclass
class Collective:
    count: int = 0
    bytes: int = 0
    permutes: int = 0  # of `count`: collective-permutes of a decomposed collective


def arrays(shape: str) -> list[tuple[int, int]]:
    """(bytes, memory space) of each array in an HLO shape; the space is the layout's S(n), 0
    (device memory, HBM on a TPU) when the layout names none."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        bits = _DTYPE_BITS.get(dtype, 8 if dtype.startswith("f8") else None)
        if bits is None:  # token[], opaque: no payload
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        space = _MEMORY_SPACE.search(layout.split(":", 1)[1]) if ":" in layout else None
        out.append((n * bits // 8, int(space.group(1)) if space else 0))
    return out


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape, e.g. 'f32[8,64]{1,0}' or a tuple '(f32[2], bf16[3,4])'."""
    return sum(b for b, _ in arrays(shape))


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
class Instr:
    name: str
    shape: str
    opcode: str
    args: str  # operands, then attributes, as printed

    def operands(self) -> list[str]:
        return _OPERAND.findall(_operand_text(self.args))


def _operand_text(args: str) -> str:
    depth = 1
    for i, ch in enumerate(args):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return args[:i]
    return args


def computations(hlo: str) -> tuple[dict[str, list[Instr]], str | None]:
    """{computation name: its instructions} and the entry computation's name."""
    comps: dict[str, list[Instr]] = {}
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
            comps[current].append(Instr(m.group(1), shape, opcode, args))
    return comps, entry


def _bound(comps: dict[str, list[Instr]], args: str) -> int | None:
    """A while loop's trip count from its condition when XLA left no known_trip_count: the
    `i < N` of a lax.scan / fori_loop (counter from 0 by 1), N an integer constant."""
    m = re.search(r"condition=%?([^\s,}]+)", args)
    cond = comps.get(m.group(1), []) if m else []
    consts = {i.name: i.args.split(")", 1)[0] for i in cond if i.opcode == "constant"}
    for i in cond:
        if i.opcode == "compare" and "direction=LT" in i.args:
            operands = i.operands()
            if len(operands) == 2 and consts.get(operands[1], "").lstrip("-").isdigit():
                return int(consts[operands[1]])
    return None


@dataclasses.dataclass
class Visit:
    """One instruction as executed: `times` per run of the entry computation; `fused` when it
    sits inside a fusion (its bytes never leave the kernel); `windowed` the collective kind of
    the windowed-einsum loop around it, if any."""
    instr: Instr
    computation: str
    times: int
    fused: bool
    windowed: str | None
    named: dict[str, Instr]  # the instructions of its computation, by name

    def shape_of(self, name: str) -> str:
        return self.named[name].shape if name in self.named else ""


def walk(hlo: str) -> tuple[list[Visit], int]:
    """Every instruction reachable from the entry computation, with its executions per step, and
    how many while loops had no known trip count (their bodies were counted once)."""
    comps, entry = computations(hlo)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    out: list[Visit] = []
    unknown = 0

    def visit(name: str, times: int, fused: bool, windowed: str | None, depth: int) -> None:
        nonlocal unknown
        if name not in comps or depth > 64 or times == 0:
            return
        windowed = next((k for tag, k in _WINDOWED.items() if tag in name), windowed)
        named = {i.name: i for i in comps[name]}
        for ins in comps[name]:
            out.append(Visit(ins, name, times, fused, windowed, named))
            op = ins.opcode
            if op in ("async-done", "async-update"):
                continue  # the wrapped computation is visited once, from async-start
            trip = 1
            if op == "while":
                m = _TRIP.search(ins.args)
                trip = int(m.group(1)) if m else _bound(comps, ins.args)
                unknown += trip is None
                trip = trip or 1
            for key, callee in _CALLED.findall(ins.args):
                # a fusion's body, a reducer: parts of one kernel, not kernels of their own
                inner = fused or op == "fusion" or key == "to_apply"
                visit(callee, times * (trip if key == "body" else 1), inner, windowed, depth + 1)
            for group in _BRANCHES.findall(ins.args):
                for callee in _OPERAND.findall(group):
                    visit(callee, times, fused, windowed, depth + 1)

    visit(entry, 1, False, None, 0)
    return out, unknown


def count_collectives(hlo: str) -> dict[str, Collective]:
    """{kind: Collective(count, bytes, permutes)} executed per run of the module's entry."""
    return count(hlo)[0]


def unknown_trip_counts(hlo: str) -> int:
    """How many while loops had no known trip count (their bodies were counted once)."""
    return walk(hlo)[1]


def count(hlo: str) -> tuple[dict[str, Collective], int]:
    """(`count_collectives`, `unknown_trip_counts`) from one walk of the HLO."""
    visits, unknown = walk(hlo)
    out = {k: Collective() for k in KINDS}
    for v in visits:
        op = v.instr.opcode
        base = op[:-len("-done")] if op.endswith("-done") else op
        if base not in KINDS or op.endswith("-start") or _CLONE.search(v.instr.args):
            continue
        size = shape_bytes(v.instr.shape)
        if base == "reduce-scatter":  # size by the operand(s): the whole buffer reduced
            size = sum(shape_bytes(v.shape_of(o)) for o in v.instr.operands()) or size
        permute = base == "collective-permute" and v.windowed is not None
        _add(out[v.windowed if permute else base], v.times, v.times * size, permute)
    return out, unknown


def _add(c: Collective, count: int, size: int, permute: bool) -> None:
    c.count += count
    c.bytes += size
    c.permutes += count if permute else 0
