"""The layout benchmark's report: Markdown tables, the notes that explain a row, CSV and PNG."""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np

from gptjax import hlo_collectives

MIB = 2 ** 20
GIB = 2 ** 30


def _mib(x: Any) -> str:
    return "n/a" if x is None else f"{x / MIB:,.1f}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else ("–" if not a else "∞")


def reductions(r: dict[str, Any]) -> float:
    return r["all-reduce bytes"] + r["reduce-scatter bytes"]


def total(r: dict[str, Any]) -> float:
    return sum(r[f"{k} bytes"] for k in hlo_collectives.KINDS)


def analytic_total(r: dict[str, Any]) -> float:
    return r["all-reduce analytic"] + r["all-gather analytic"] + r["reduce-scatter analytic"]


def memory_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| layout | mesh d×f×t | gather | compile s | step s | argument MiB | output MiB |"
           " temp MiB | code MiB | peak MiB | fits HBM | live peak MiB | argument / dp |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    dp = next((r for r in rows if r["layout"] == "dp" and "error" not in r), None)
    for r in rows:
        if "error" in r:
            out.append(f"| {r['layout']} | {r.get('mesh', '')} | | not compiled: {r['error']} |"
                       + " |" * 9)
            continue
        step = "n/a" if r["step_s"] is None else f"{r['step_s']:.2f}"
        fits = "–" if r.get("hbm") is None else (
            f"{'yes' if r['peak'] <= r['hbm'] else 'no'} ({r['peak'] / r['hbm']:.0%})")
        out.append(f"| {r['layout']} | {r['mesh']} | {r['gather']} | {r['compile_s']:.1f} | "
                   f"{step} | {_mib(r['argument'])} | {_mib(r['output'])} | {_mib(r['temp'])} | "
                   f"{_mib(r['code'])} | {_mib(r['peak'])} | {fits} | {_mib(r['live_peak'])} | "
                   f"{_ratio(r['argument'], dp['argument']) if dp else '–'} |")
    return out


def collective_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| layout | all-reduce n / MiB | all-gather n / MiB | reduce-scatter n / MiB |"
           " permute n / MiB | all-to-all n / MiB | analytic AG / reductions MiB |"
           " all-gather measured / analytic | reductions measured / analytic |"
           " total measured / analytic |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            continue
        cells = []
        for k in hlo_collectives.KINDS:
            via = r.get(f"{k} permutes", 0)
            cells.append(f"{r[k + ' n']}{f' ({via} permutes)' if via else ''} / "
                         f"{_mib(r[k + ' bytes'])}")
        ag = r["all-gather analytic"]
        red = r["all-reduce analytic"] + r["reduce-scatter analytic"]
        out.append(f"| {r['layout']} | " + " | ".join(cells) +
                   f" | {_mib(ag)} / {_mib(red)} | {_ratio(r['all-gather bytes'], ag)} | "
                   f"{_ratio(reductions(r), red)} | {_ratio(total(r), analytic_total(r))} |")
    return out


def roofline_table(rows: list[dict[str, Any]]) -> list[str]:
    done = [r for r in rows if "error" not in r and r.get("t_bound") is not None]
    if not done:
        return []
    out = ["| layout | chip | TFLOP / chip | HBM GiB / chip | ICI GiB / chip | t compute s |"
           " t memory s | t network s | step s ≥ | MFU ≤ | tokens/s/chip ≤ |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in done:
        out.append(f"| {r['layout']} | {r['chip']} | {r['flops'] / 1e12:,.1f} | "
                   f"{r['hbm_bytes'] / GIB:,.1f} | {r['wire_bytes'] / GIB:,.2f} | "
                   f"{r['t_compute']:.3f} | {r['t_memory']:.3f} | {r['t_network']:.3f} | "
                   f"{r['t_bound']:.3f} | {r['mfu_bound']:.1%} | "
                   f"{r['tokens_per_chip'] / r['t_bound']:,.0f} |")
    return out


def tables(rows: list[dict[str, Any]]) -> str:
    out = memory_table(rows) + [""] + collective_table(rows)
    roof = roofline_table(rows)
    out += [""] + roof if roof else []
    out.append("")
    for r in rows:
        for note in notes(r):
            out.append(f"- {r['layout']}: {note}")
    return "\n".join(out)


def notes(r: dict[str, Any]) -> list[str]:
    """What explains a row's deviations from the analytic model, when the numbers show it."""
    out = [r["note"]] if r.get("note") else []
    if "error" in r:
        return out
    if r["unknown_trip_counts"]:
        out.append(f"{r['unknown_trip_counts']} while loops of unknown trip count counted once")
    red = reductions(r)
    expect = r["all-reduce analytic"] + r["reduce-scatter analytic"]
    tied = r["tied embedding analytic"]
    if tied and expect and abs(red - expect - tied) < 0.01 * expect:
        out.append(f"the reductions exceed the analytic value by the tied embedding's gradient "
                   f"({tied / MIB:,.1f} MiB): its input-lookup and output-head contributions "
                   f"are reduced separately; without it measured / analytic = "
                   f"{(red - tied) / expect:.3f}")
    ag = r["all-gather analytic"]
    if ag and r["all-gather bytes"] < 0.75 * ag:
        out.append(f"all-gathers {r['all-gather bytes'] / ag:.2f} x the float32 parameters: XLA "
                   "gathers the compute-dtype (bf16) copies of weights used only in bf16")
    if r["reduce-scatter analytic"] and not r["reduce-scatter n"]:
        out.append("the sharded gradients are all-reduced whole and then sliced, not reduce-"
                   "scattered (XLA:CPU has no reduce-scatter creator; XLA:TPU may rewrite one): "
                   "the same buffer bytes, counted with the reductions, twice the wire bytes")
    for kind in ("reduce-scatter", "all-gather"):
        if r.get(f"{kind} permutes"):
            out.append(f"{r[f'{kind} permutes']} collective-permutes of XLA's windowed einsums "
                       f"counted as {kind} (the bytes they move)")
    return out


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
        ("reductions (AR+RS)", reductions,
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
