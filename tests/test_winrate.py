"""Win-rate arithmetic against hand-computed cases: outcomes, ties, clustered intervals."""

import math

import numpy as np
import pytest

from gptjax.evals import winrate as wr


def test_outcomes_ties_and_margin():
    assert wr.outcomes([1, 2, 3], [1, 1, 4]).tolist() == [0, 1, -1]
    # margin 0.5: d = -0.4 is a tie, 0.6 a win, -0.6 a loss
    assert wr.outcomes([1.0, 1.6, 0.0], [1.4, 1.0, 0.6], margin=0.5).tolist() == [0, 1, -1]


def test_summary_counts_a_tie_as_half():
    s = wr.summarize(np.array([1, 1, 0, -1]), np.array([0, 1, 2, 3]), n_boot=200)
    assert (s["wins"], s["ties"], s["losses"], s["prompts"]) == (2, 1, 1, 4)
    assert s["win_rate"] == pytest.approx(2.5 / 4)
    assert s["ci_low"] <= s["win_rate"] <= s["ci_high"]


def test_bootstrap_resamples_whole_prompts():
    # prompt 0: two wins (credit 2 of 2), prompt 1: one loss (0 of 1). Resampling 2 prompts
    # gives 4/4, 2/3, 2/3 or 0/2 with probabilities 1/4, 1/4, 1/4, 1/4 x2 -> interval [0, 1].
    lo, hi = wr.cluster_bootstrap(np.array([1.0, 1.0, 0.0]), np.array([0, 0, 1]), n_boot=4000)
    assert (lo, hi) == (0.0, 1.0)
    # every prompt alike: nothing varies, a zero-width interval at the value
    lo, hi = wr.cluster_bootstrap(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0, 0, 1, 1]))
    assert lo == hi == 0.5
    assert all(math.isnan(x) for x in wr.cluster_bootstrap(np.array([]), np.array([])))


def test_clustered_interval_is_wider_than_independent():
    rng = np.random.default_rng(0)
    per_prompt = rng.random(40) < 0.6  # each prompt: all 8 samples win or all lose
    values = np.repeat(per_prompt.astype(float), 8)
    clustered = wr.cluster_bootstrap(values, np.repeat(np.arange(40), 8))
    independent = wr.cluster_bootstrap(values, np.arange(320))
    assert clustered[1] - clustered[0] > 2 * (independent[1] - independent[0])
    lo, hi = clustered
    assert lo < values.mean() < hi


def test_cluster_stderr_by_hand():
    # one value per group: sqrt(a(1-a)/(N-1)) = sqrt(0.75 * 0.25 / 3) = 0.25
    assert wr.cluster_stderr(np.array([1.0, 0, 1, 1]), np.arange(4)) == pytest.approx(0.25)
    # groups {1,1}, {0,1}: a = 3/4, s - a n = 0.5, -0.5 -> sqrt(2 * 0.5) / 4 = 0.25
    assert wr.cluster_stderr(np.array([1.0, 1, 0, 1]), np.array([0, 0, 1, 1])) == pytest.approx(
        0.25)
    assert math.isnan(wr.cluster_stderr(np.array([1.0, 0.0]), np.array([0, 0])))


def test_length_matching_and_compare():
    m = wr.length_matched([10, 10, 0, 100], [11, 20, 0, 89], 0.1)
    assert m.tolist() == [True, False, True, False]
    r = wr.compare([2, 2, 0, 5], [1, 1, 0, 9], groups=[0, 1, 2, 3], len_a=[10, 10, 0, 100],
                   len_b=[11, 20, 0, 89], n_boot=100)
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    assert r["mean_length_a"] == 30 and r["mean_length_b"] == 30
    lm = r["length_matched"]  # comparisons 0 (win) and 2 (tie)
    assert (lm["comparisons"], lm["wins"], lm["ties"]) == (2, 1, 1)
    assert lm["win_rate"] == pytest.approx(0.75)
