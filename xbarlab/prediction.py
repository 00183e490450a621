"""Does the Monte-Carlo prediction describe the chips? Statistics for the demo report.

Two checks per network, computed from the Monte-Carlo transfer accuracies (the prediction) and
the accuracies measured on n programmed chips:

- the measured mean against the distribution of the mean of n transfers drawn from the
  prediction: its central 95 % interval, by resampling the Monte-Carlo accuracies (seeded; no
  normality assumed, the accuracies are discrete and skewed);
- the two distributions against each other: two-sample Kolmogorov-Smirnov and Mann-Whitney U
  tests (scipy), p-values at the 5 % level.

The verdict is 'consistent' when the mean lies inside the interval and neither test rejects at
5 %, else it names what failed. It is reported whichever way it falls.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

LEVEL = 0.05


def compare(mc: np.ndarray, chips: np.ndarray, *, seed: int = 0,
            resamples: int = 20_000) -> dict:
    """Prediction (Monte-Carlo accuracies) vs measured chip accuracies; plain floats."""
    mc = np.asarray(mc, float)
    chips = np.asarray(chips, float)
    n = chips.size
    if n == 0 or mc.size == 0:
        raise ValueError("need at least one chip and one Monte-Carlo transfer")
    rng = np.random.default_rng(seed)
    means = mc[rng.integers(0, mc.size, size=(resamples, n))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * LEVEL / 2, 100 * (1 - LEVEL / 2)])
    mean = float(chips.mean())
    inside = bool(lo <= mean <= hi)
    ks = stats.ks_2samp(chips, mc)
    mw = stats.mannwhitneyu(chips, mc, alternative="two-sided")
    failed = []
    if not inside:
        failed.append("measured mean outside the 95 % interval")
    if ks.pvalue < LEVEL:
        failed.append(f"KS rejects (p = {ks.pvalue:.3g})")
    if mw.pvalue < LEVEL:
        failed.append(f"Mann-Whitney rejects (p = {mw.pvalue:.3g})")
    return {"chips": n, "transfers": int(mc.size), "measured_mean": mean,
            "predicted_mean": float(mc.mean()), "mean_interval": [float(lo), float(hi)],
            "mean_inside": inside, "ks_statistic": float(ks.statistic),
            "ks_pvalue": float(ks.pvalue), "mannwhitney_pvalue": float(mw.pvalue),
            "verdict": "consistent" if not failed else "not consistent: " + "; ".join(failed)}


def table_rows(results: dict[str, dict], labels: dict[str, str]) -> tuple[list[str],
                                                                        list[list[str]]]:
    """Header and rows (accuracies in %) for a report table."""
    head = ["network", "chips", "measured mean", "prediction: mean of that many transfers, "
            "95 % interval", "KS statistic (p)", "Mann-Whitney p", "verdict"]
    rows = []
    for name, r in results.items():
        lo, hi = r["mean_interval"]
        rows.append([labels.get(name, name), str(r["chips"]), f"{100 * r['measured_mean']:.1f} %",
                     f"{100 * r['predicted_mean']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] %",
                     f"{r['ks_statistic']:.2f} ({r['ks_pvalue']:.2g})",
                     f"{r['mannwhitney_pvalue']:.2g}", r["verdict"]])
    return head, rows
