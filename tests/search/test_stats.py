"""search/stats.py's study statistics on rows written by hand: intervals that use the pairing,
no interval from zero spread, and a ranking change claimed only on evidence (Holm's correction),
against scipy and against values worked out here."""
import math

import numpy as np
import pytest
from scipy import stats as sp

from search import report, stats


def _row(arm, base: dict, tuned: dict) -> dict:
    """A study row as stats.study_rows makes it, from {seed: score} of each stage."""
    b, t = list(base.values()), list(tuned.values())
    return {"arm": arm, "base": b, "tuned": t, "base_by_seed": base, "tuned_by_seed": tuned,
            "base_mean": float(np.mean(b)), "tuned_mean": float(np.mean(t)), "gain_method": "paired",
            "gain": float(np.mean(t) - np.mean(b)), "gain_lo": math.nan, "gain_hi": math.nan}


SEEDS = (1000, 1001, 1002, 1003)


def test_the_paired_interval_is_scipys_and_zero_spread_gives_none():
    a = dict(zip(SEEDS, (0.70, 0.74, 0.69, 0.75)))
    b = dict(zip(SEEDS, (0.50, 0.55, 0.52, 0.53)))
    d, lo, hi = stats.paired_interval(a, b)
    ci = sp.ttest_rel(list(a.values()), list(b.values())).confidence_interval(0.95)
    assert d == pytest.approx(0.195) and (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # Pairing removes the seed's own effect: the paired interval is narrower than Welch's here.
    _, wlo, whi = stats.welch_interval(list(a.values()), list(b.values()))
    assert hi - lo < whi - wlo
    same = {s: v + 0.2 for s, v in b.items()}  # every seed gained exactly 0.2
    assert math.isnan(stats.paired_interval(same, b)[1])
    # Welch with one side of a single distinct value: no interval either (it used to be (d, d, d)).
    assert stats.welch_interval([0.5, 0.5], [0.5, 0.5]) == (0.0, pytest.approx(math.nan, nan_ok=True),
                                                          pytest.approx(math.nan, nan_ok=True))
    assert math.isnan(stats.welch_interval([0.6, 0.6, 0.6], [0.5, 0.52])[1])
    assert stats.pairs_by_seed(a, b) and not stats.pairs_by_seed(a, {1000: 0.5, 1001: 0.5})


def test_holm_by_hand():
    # Sorted 0.001, 0.01, 0.03, 0.04 against 0.05/4, 0.05/3, 0.05/2, 0.05/1: the first two pass,
    # 0.03 > 0.025 stops it there. A nan (no test) is outside the family.
    assert stats.holm([0.04, 0.001, math.nan, 0.03, 0.01]) == [False, True, False, False, True]
    assert stats.holm([0.02, 0.04]) == [True, True]  # 0.02 <= 0.025, then 0.04 <= 0.05


def test_a_reversal_beyond_the_noise_is_found_and_named():
    """A is behind B under shared hyperparameters and ahead after tuning, each by far more than the
    spread between its 4 seeds; C stays last. The pair A-B is reversed; A-C and B-C keep their order."""
    rows = [_row("A", dict(zip(SEEDS, (0.50, 0.51, 0.49, 0.50))), dict(zip(SEEDS, (0.80, 0.81, 0.79, 0.80)))),
            _row("B", dict(zip(SEEDS, (0.60, 0.61, 0.59, 0.60))), dict(zip(SEEDS, (0.65, 0.66, 0.64, 0.65)))),
            _row("C", dict(zip(SEEDS, (0.30, 0.31, 0.29, 0.30))), dict(zip(SEEDS, (0.40, 0.41, 0.39, 0.40))))]
    pairs = {(p["a"], p["b"]): p for p in stats.pair_tests(rows)}
    assert set(pairs) == {("A", "B"), ("A", "C"), ("B", "C")}
    ab = pairs[("A", "B")]
    p_base = sp.ttest_ind([0.50, 0.51, 0.49, 0.50], [0.60, 0.61, 0.59, 0.60], equal_var=False).pvalue
    assert ab["base_p"] == pytest.approx(p_base) and p_base < 0.05 / 6  # passes even Bonferroni's bar
    assert ab["swapped"] and ab["reversed"] and ab["tuned_diff"] == pytest.approx(0.15)
    assert not pairs[("A", "C")]["reversed"] and not pairs[("B", "C")]["swapped"]
    tau, lo, hi = stats.tau_interval(rows)
    assert tau == pytest.approx(1 / 3)  # 2 concordant pairs, 1 discordant
    assert lo <= tau <= hi and stats.tau_interval(rows) == (tau, lo, hi)  # seeded: the same twice
    text = report.study_verdict(rows, list(pairs.values()), (tau, lo, hi), "map50")
    assert "It changed the ranking (Kendall's τ = 0.33" in text and "of 3 pair(s) of arms tested, 1 reversed" in text
    assert "A over B" in text


def test_seed_noise_that_swaps_pairs_is_not_called_a_change():
    """Eight arms whose true scores are all 0.5, each run 0.5 plus noise of sd 0.02 (3 seeds): their
    order under the two settings is a lottery, so pairs swap, but no reversal is significant."""
    rng = np.random.default_rng(0)
    seeds = (1000, 1001, 1002)
    rows = [_row(f"arm{i}", {s: 0.5 + rng.normal(0, 0.02) for s in seeds}, {s: 0.5 + rng.normal(0, 0.02) for s in seeds})
            for i in range(8)]
    pairs = stats.pair_tests(rows)
    assert len(pairs) == 28 and sum(p["swapped"] for p in pairs) >= 5
    assert not any(p["reversed"] for p in pairs)
    tau = stats.tau_interval(rows)
    assert tau[1] < 0 < tau[2]  # the interval says the rankings are unrelated, not changed
    text = report.study_verdict(rows, pairs, tau, "map50")
    assert "No change of the ranking is shown" in text and "of 28 pair(s) of arms tested, none reversed" in text
    assert "changed the ranking" not in text
