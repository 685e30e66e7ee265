"""The pipeline report's PNG figures, each made from the run's own files (see collect.py).

Every figure is written without a date or software version (metadata Software=None), so the
same run gives the same bytes.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from gptjax.report.collect import metrics


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    _plt().close(fig)
    return path


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def losses(workdir: str, stages: list[tuple[str, str]], path: str) -> str | None:
    """One panel per training stage but PPO: training and held-out loss (and accuracy for a
    reward model) against the step."""
    shown = [(n, k) for n, k in stages if k != "ppo" and metrics(os.path.join(workdir, n))]
    if not shown:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2), dpi=100,
                             squeeze=False)
    for ax, (name, kind) in zip(axes[0], shown):
        rows = metrics(os.path.join(workdir, name))
        for key, style in (("loss", "-"), ("val_loss", "o-")):
            x, y = _series(rows, key)
            if x:
                ax.plot(x, y, style, ms=3, label=key)
        if kind == "reward":
            acc = ax.twinx()
            for key, style in (("accuracy", ":"), ("val_accuracy", "s--")):
                x, y = _series(rows, key)
                if x:
                    acc.plot(x, y, style, ms=3, color="tab:green", label=key)
            acc.set_ylim(0, 1)
            acc.set_ylabel("pairwise accuracy", fontsize=8)
            acc.legend(loc="upper right", fontsize=7)
        ax.set_title(f"{name} ({kind})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(loc="upper left" if kind == "reward" else "best", fontsize=7)
    axes[0][0].set_ylabel("loss (nats/token; ranking loss for reward models)", fontsize=8)
    return _save(fig, path)


def prepare(rep: dict[str, Any], path: str) -> str | None:
    """Documents removed by each rule, and document lengths in and kept (log2 bins)."""
    if not rep:
        return None
    p = next(iter(rep.values()))
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=100)
    rules = sorted(p["removed"], key=lambda r: -p["removed"][r])
    a.barh(rules[::-1], [p["removed"][r] for r in rules[::-1]], color="tab:red")
    a.set_xlabel("documents removed", fontsize=8)
    a.tick_params(labelsize=7)
    a.set_title(f"prepare: {p['documents_in']} documents in, {p['documents_kept']} kept",
                fontsize=9)
    h = p["length_histogram"]
    used = [i for i, (x, y) in enumerate(zip(h["input"], h["kept"])) if x or y] or [0]
    x = np.arange(used[0], used[-1] + 1)
    b.bar(x - 0.2, [h["input"][i] for i in x], width=0.4, label="input")
    b.bar(x + 0.2, [h["kept"][i] for i in x], width=0.4, label="kept")
    b.set_xticks(x, [f"{2 ** int(k):,}" for k in x], rotation=45, fontsize=7)
    b.set_xlabel("document length (characters, bins double)", fontsize=8)
    b.set_title(f"{p['tokens']:,} tokens, {p['vocab_size']}-token {p['tokenizer']}, "
                f"{p['tokens_per_char']:.3f} tokens/char", fontsize=9)
    b.legend(fontsize=7)
    return _save(fig, path)


def reward_accuracy(models: dict[str, Any], path: str) -> str | None:
    """Held-out pairwise accuracy of each reward model with its 95% interval (1.96 s.e.)."""
    if not models:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 0.7 + 0.6 * len(models)), dpi=100)
    names = list(models)
    acc = [models[n]["accuracy"] for n in names]
    err = [1.96 * models[n]["stderr"] for n in names]
    labels = [f"{n} ({models[n]['pairs']} pairs)" for n in names]
    ax.barh(labels, acc, xerr=err, color="tab:blue", capsize=4)
    ax.axvline(0.5, color="k", ls="--", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_xlabel("held-out pairwise accuracy (95% interval)", fontsize=8)
    ax.legend(fontsize=7)
    return _save(fig, path)


PPO_PANELS = (("score", ("score", "rm_score"), "reward-model score minus offset"),
              ("KL to the SFT policy", ("kl",), "nats per answer"),
              ("beta (KL coefficient)", ("beta",), ""),
              ("response length", ("response_length", "response_length_max"), "tokens"),
              ("pretraining loss (ptx)", ("ptx_loss", "val_ptx_loss"), "nats/token"),
              ("held-out answers", ("eval_score_greedy", "eval_score_sampled"), "score"))


def ppo(workdir: str, name: str, path: str) -> str | None:
    """PPO per iteration: score, KL, beta, answer length, the pretraining loss, held-out score."""
    rows = metrics(os.path.join(workdir, name))
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.6), dpi=100)
    for ax, (title, keys, unit) in zip(axes.flat, PPO_PANELS):
        for key in keys:
            x, y = _series(rows, key)
            if x:
                ax.plot(x, y, "o-" if key.startswith(("eval", "val")) else "-", ms=3, label=key)
        ax.set_title(f"{name}: {title}", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        if unit:
            ax.set_ylabel(unit, fontsize=8)
        ax.legend(fontsize=7)
    return _save(fig, path)


def win_rates(rates: dict[str, Any], path: str) -> str | None:
    """Win rate of A over B with its 95% bootstrap interval, per eval stage."""
    if not rates:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.6 * len(rates)), dpi=100)
    labels = [f"{w['a']} over {w['b']} (judge {w['judge']})" for w in rates.values()]
    wr = [w["win_rate"] for w in rates.values()]
    lo = [w["win_rate"] - w["ci_low"] for w in rates.values()]
    hi = [w["ci_high"] - w["win_rate"] for w in rates.values()]
    ax.barh(labels, wr, xerr=[lo, hi], color="tab:purple", capsize=4)
    ax.axvline(0.5, color="k", ls="--", lw=1, label="no better, no worse")
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate (ties count half; 95% bootstrap interval over prompts)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7)
    return _save(fig, path)


def wall_time(stages: list[dict[str, Any]], path: str) -> str | None:
    """Wall seconds of each stage."""
    timed = [s for s in stages if s.get("seconds") is not None]
    if not timed:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.4 * len(timed)), dpi=100)
    ax.barh([s["name"] for s in timed][::-1], [s["seconds"] for s in timed][::-1],
            color="tab:gray")
    ax.set_xlabel("wall seconds", fontsize=8)
    ax.tick_params(labelsize=8)
    return _save(fig, path)
