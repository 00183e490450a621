"""How numbers are shown to people: the one home of display units and wording.

Code and files hold SI units (S, V, A, s) and fractions; whatever a person reads (the terminal,
report tables, figure labels) goes through these functions: conductances in uS, voltages in V,
currents in uA, times with the unit that suits them (ns .. h), accuracies and shares in %, counts
with thousands separators.

A summary number always names its metric. `Metric` pairs what a stored number is (its label)
with the unit it is stored in; `summary_lines` turns a stored summary (a dict of SI numbers, as
the campaigns write it into their HDF5 files) into "label: value" lines. A protocol describes its
summary keys with Metrics (its `SUMMARY`; a dict value is a breakdown, shown as its non-zero
'key value' parts in the metric's unit); a key it does not describe is read by its name:
``..._S`` a conductance, ``..._V`` a voltage, ``..._A`` a current, ``..._s`` a time, and
``..._rel``, ``...rate``, ``yield``, ``accuracy...``, ``share...`` a fraction.

This module sits at the bottom of the package graph (standard library only), so every package
can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: the units a stored value may have: conductance, voltage, current, time, fraction (shown as
#: %), and "" for counts and other plain numbers
UNITS = ("S", "V", "A", "s", "fraction", "")


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def _fixed(v: float, nd: int, signed: bool) -> str:
    return f"{v:{'+' if signed else ''}.{nd}f}"


def us(g_S: float, nd: int = 1, *, signed: bool = False) -> str:
    """A conductance [S] in uS: ``us(2.5e-5) == '25.0 uS'``."""
    return f"{_fixed(g_S * 1e6, nd, signed)} uS"


def volts(v: float, nd: int = 2, *, signed: bool = False) -> str:
    """A voltage [V]: ``volts(1.2) == '1.20 V'``."""
    return f"{_fixed(v, nd, signed)} V"


def ua(i_A: float, nd: int = 2, *, signed: bool = False) -> str:
    """A current [A] in uA."""
    return f"{_fixed(i_A * 1e6, nd, signed)} uA"


def pct(x: float, nd: int = 1, *, signed: bool = False) -> str:
    """A fraction as a percentage: ``pct(0.875) == '87.5 %'``."""
    return f"{_fixed(100 * x, nd, signed)} %"


def count(n: int) -> str:
    """A count with thousands separators: ``count(5000) == '5,000'``."""
    return f"{int(n):,}"


def duration(s: float | None) -> str:
    """A time [s] with the unit that suits it: '200 ns', '48 ms', '12.3 s', '4.2 min', '3.1 h',
    '6.5 d' ('-' for None)."""
    if s is None:
        return "-"
    a = abs(s)
    if a < 1e-12:  # below a picosecond: the rounding of a sum of times, not a time
        return "0 s"
    if not math.isfinite(a):
        return f"{s} s"
    for limit, scale, unit in ((1e-6, 1e9, "ns"), (1e-3, 1e6, "us"), (1.0, 1e3, "ms")):
        if a < limit:
            return f"{s * scale:.3g} {unit}"
    if a < 120:
        return f"{s:.1f} s"
    if a < 7200:
        return f"{s / 60:.1f} min"
    if a < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def quantity(value, unit: str, *, nd: int | None = None, signed: bool = False) -> str:
    """`value` stored in `unit` (one of UNITS) as people read it; a list (named items: lines
    found open) comma-separated, or 'none'; anything else not a number as it is."""
    if isinstance(value, list | tuple):
        return ", ".join(str(x) for x in value) or "none"
    if isinstance(value, bool) or _num(value) is None:
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "-"
    if unit == "S":
        return us(v, 1 if nd is None else nd, signed=signed)
    if unit == "V":
        return volts(v, 2 if nd is None else nd, signed=signed)
    if unit == "A":
        return ua(v, 2 if nd is None else nd, signed=signed)
    if unit == "s":
        return duration(v)
    if unit == "fraction":
        return pct(v, 1 if nd is None else nd, signed=signed)
    if float(v).is_integer():
        return f"{int(v):{'+' if signed else ''},}"
    return f"{v:{'+' if signed else ''}.{3 if nd is None else nd}g}"


@dataclass(frozen=True)
class Metric:
    """What a stored number is: its label ("mean change of earlier devices"), the unit it is
    stored in (one of UNITS), the decimals shown and whether its sign is always shown."""

    label: str
    unit: str = ""
    nd: int | None = None
    signed: bool = False

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; one of {UNITS}")

    def show(self, value) -> str:
        if isinstance(value, dict):  # a breakdown (time per category): its non-zero parts
            parts = [f"{k} {quantity(v, self.unit, nd=self.nd, signed=self.signed)}"
                     for k, v in value.items() if v]
            return ", ".join(parts) or "none"
        return quantity(value, self.unit, nd=self.nd, signed=self.signed)


_SUFFIX_UNITS = {"_S": "S", "_V": "V", "_A": "A", "_s": "s"}
_FRACTION_WORDS = ("rate", "yield", "accuracy", "share", "fraction")


def metric_for(key: str) -> Metric:
    """A metric read from a summary key's name (for keys a protocol does not describe)."""
    for suffix, unit in _SUFFIX_UNITS.items():
        if key.endswith(suffix):
            return Metric(key[: -len(suffix)].replace("_", " "), unit)
    words = key.replace("-", "_").split("_")
    if words[-1] == "rel" or any(w in _FRACTION_WORDS for w in words):
        return Metric(" ".join(w for w in words if w != "rel"), "fraction")
    return Metric(key.replace("_", " "))


def summary_lines(summary: dict, metrics: dict[str, Metric] | None = None) -> list[str]:
    """'label: value' for every entry of a stored summary, in its order."""
    metrics = metrics or {}
    return [f"{(metrics.get(k) or metric_for(k)).label}: "
            f"{(metrics.get(k) or metric_for(k)).show(v)}" for k, v in summary.items()]


def column_unit(units: str) -> str:
    """A table column's `units` attribute as shown beside its name ('' for plain numbers)."""
    return "" if units in ("", "1") else f" [{units}]"
