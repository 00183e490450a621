"""Statistics over independently seeded networks, for tables and plots (numpy and scipy only)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def mean_interval(values: Iterable[float | None], level: float = 0.95
                  ) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its two-sided Student-t interval over the values.

    None and NaN values are left out; one value gives a zero-width interval, none gives NaNs.
    """
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if v.size < 2:
        return (m, m, m)
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return (m, m - half, m + half)
