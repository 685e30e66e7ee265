"""Win rates with confidence intervals: outcomes, a bootstrap over prompts, length matching.

A comparison pairs answer i of model A to prompt p with answer i of model B to the same prompt
(both sampled with the same settings); the judge's scores decide it:

    outcome = +1 (A wins) if s_A − s_B > margin,  −1 (B wins) if s_B − s_A > margin,  0 (tie)
    win rate = (wins + ties / 2) / comparisons

Comparisons of one prompt are not independent (the same question is easy or hard for both), so
the interval resamples whole prompts (a cluster bootstrap, Efron & Tibshirani 1993 ch. 8): draw
G prompts with replacement, pool their comparisons, recompute the statistic; the 95% interval
is the 2.5 / 97.5 percentiles of `n_boot` such draws. The same grouped statistics give the
reward model's pairwise accuracy with pairs grouped by the prompt they share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def outcomes(scores_a: np.ndarray, scores_b: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """+1 / 0 / −1 per comparison (A wins / tie / B wins) from the judge's scores of each."""
    d = np.asarray(scores_a, np.float64) - np.asarray(scores_b, np.float64)
    return np.where(d > margin, 1, np.where(d < -margin, -1, 0)).astype(np.int8)


def credit(out: np.ndarray) -> np.ndarray:
    """A's credit per comparison: 1 for a win, 1/2 for a tie, 0 for a loss."""
    return (np.asarray(out, np.float64) + 1.0) / 2.0


def grouped_mean(values: np.ndarray, groups: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(pooled mean, per-group sums s_g, per-group counts n_g) of values grouped by label."""
    values = np.asarray(values, np.float64)
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    return float(values.mean()) if len(values) else math.nan, sums, counts


def cluster_bootstrap(values: np.ndarray, groups: np.ndarray, n_boot: int = 2000,
                      level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the pooled mean Σ s_g / Σ n_g over `n_boot` resamplings of the
    groups with replacement. (nan, nan) for no values; a single group gives a zero-width
    interval (there is nothing to resample: report the group count beside it)."""
    if len(values) == 0:
        return math.nan, math.nan
    _, sums, counts = grouped_mean(values, groups)
    g = len(sums)
    idx = np.random.default_rng(seed).integers(0, g, size=(n_boot, g))  # (n_boot, G)
    stats = sums[idx].sum(1) / counts[idx].sum(1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def cluster_stderr(values: np.ndarray, groups: np.ndarray) -> float:
    """Cluster-robust standard error of the pooled mean a = Σ s_g / N (N = Σ n_g):

        se = sqrt(G / (G − 1) · Σ_g (s_g − a · n_g)²) / N

    (the sandwich estimator of a ratio). With one 0/1 value per group it is
    sqrt(a(1−a)/(N−1)), the usual binomial error; groups of correlated values make it larger.
    nan for fewer than two groups."""
    a, sums, counts = grouped_mean(values, groups)
    g, n = len(sums), counts.sum()
    if g < 2:
        return math.nan
    return float(math.sqrt(g / (g - 1) * ((sums - a * counts) ** 2).sum()) / n)


def length_matched(len_a: np.ndarray, len_b: np.ndarray, tolerance: float) -> np.ndarray:
    """Comparisons whose answers are about as long: |len_A − len_B| <= tolerance · max(len_A,
    len_B) (two empty answers match). A reward model's taste for length is the commonest way
    RL fools it; the win rate among these pairs shows what remains without it."""
    la, lb = np.asarray(len_a, np.float64), np.asarray(len_b, np.float64)
    return np.abs(la - lb) <= tolerance * np.maximum(la, lb)


def summarize(out: np.ndarray, groups: np.ndarray, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0) -> dict[str, float | int]:
    """Wins, ties, losses, win rate, its cluster-bootstrap interval and the number of prompts."""
    out, groups = np.asarray(out), np.asarray(groups)
    n = len(out)
    c = credit(out)
    lo, hi = cluster_bootstrap(c, groups, n_boot, level, seed)
    return {"comparisons": n, "prompts": int(len(np.unique(groups))),
            "wins": int((out > 0).sum()), "ties": int((out == 0).sum()),
            "losses": int((out < 0).sum()),
            "win_rate": float(c.mean()) if n else math.nan, "ci_low": lo, "ci_high": hi,
            "ci_level": level}


def compare(scores_a: Sequence[float], scores_b: Sequence[float], groups: Sequence[int],
            len_a: Sequence[float], len_b: Sequence[float], *, margin: float = 0.0,
            length_tolerance: float = 0.1, n_boot: int = 2000, level: float = 0.95,
            seed: int = 0) -> dict:
    """The whole win-rate report of A over B: `summarize` of all comparisons, the mean answer
    lengths of A and B, and `summarize` of the length-matched comparisons alone."""
    out = outcomes(np.asarray(scores_a), np.asarray(scores_b), margin)
    groups = np.asarray(groups)
    la, lb = np.asarray(len_a, np.float64), np.asarray(len_b, np.float64)
    matched = length_matched(la, lb, length_tolerance)
    report = summarize(out, groups, n_boot, level, seed)
    report.update(margin=margin, mean_length_a=float(la.mean()) if len(la) else math.nan,
                  mean_length_b=float(lb.mean()) if len(lb) else math.nan,
                  mean_score_a=float(np.mean(scores_a)) if len(la) else math.nan,
                  mean_score_b=float(np.mean(scores_b)) if len(lb) else math.nan,
                  length_tolerance=length_tolerance,
                  length_matched=summarize(out[matched], groups[matched], n_boot, level, seed))
    return report
