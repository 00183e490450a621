"""Prediction vs chips: the statistics the demo report shows."""

import numpy as np
import pytest

from xbarlab.prediction import compare, table_rows


def _mc(rng, n):
    # accuracies on 200 test points: discrete, skewed (a tail of bad transfers)
    p = np.clip(rng.normal(0.86, 0.02, n) - rng.exponential(0.01, n), 0, 1)
    return rng.binomial(200, p) / 200


def test_chips_from_the_prediction_are_consistent():
    rng = np.random.default_rng(1)
    mc, chips = _mc(rng, 5000), _mc(rng, 24)
    r = compare(mc, chips, seed=0)
    lo, hi = r["mean_interval"]
    assert lo < r["predicted_mean"] < hi and r["mean_inside"]
    assert r["verdict"] == "consistent" and r["ks_pvalue"] > 0.05
    # the interval is that of a mean of 24: about 1.96 sd / sqrt(24) each side
    assert hi - lo == pytest.approx(2 * 1.96 * mc.std() / np.sqrt(24), rel=0.1)


def test_shifted_chips_are_not_consistent_and_say_why():
    rng = np.random.default_rng(2)
    mc, chips = _mc(rng, 5000), _mc(rng, 24) + 0.03
    r = compare(mc, chips, seed=0)
    assert not r["mean_inside"] and r["ks_pvalue"] < 0.05 and r["mannwhitney_pvalue"] < 0.05
    assert r["verdict"].startswith("not consistent") and "outside" in r["verdict"]
    head, rows = table_rows({"hardware_aware": r}, {"hardware_aware": "hardware-aware"})
    assert len(rows[0]) == len(head) and rows[0][0] == "hardware-aware"
    with pytest.raises(ValueError):
        compare(mc, np.array([]))
