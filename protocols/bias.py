"""Device-level DC on top of the rig's line-level request (`CrossbarRig.dc`).

`device_request` biases one device (row, col) of a crossbar: its word line at the given
voltages, its bit line at 0 V and sensed (the device current flows out of it into the SMU), and
every other line as the scheme says:

| scheme | other word lines | other bit lines |
|---|---|---|
| `grounded` | 0 V | 0 V |
| `v2` | V/2 | V/2 |
| `v3` | V/3 | 2V/3 |
| `floating` | open | open |

Only the grounded scheme keeps sneak currents out of the sensed bit line: with V/2 or V/3 the
half-selected devices on the selected bit line add their currents (V/2 or V/3 across each), and
with floating lines the sneak paths do. The sensing SMU carries `compliance`; the SMUs holding
the other levels (the selected word line among them) carry the station's compliance limit, so a
word line feeding many devices is not clipped by the device's compliance. When one of those is
in compliance anyway, the point says so (`DeviceIV.other_compliance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError
from protocols.rig import CrossbarRig, DcRequest

SCHEMES = ("grounded", "v2", "v3", "floating")


@dataclass
class DeviceIV:
    """One device's DC points: `volts` the word-line level [V], `current` the device current
    [A] (positive from word line to bit line), its SMU's compliance and overflow flags, another
    SMU in compliance, and the instrument time [s] of each point."""

    volts: np.ndarray
    current: np.ndarray
    compliance: np.ndarray
    overflow: np.ndarray
    other_compliance: np.ndarray
    t: np.ndarray


def device_request(shape: tuple[int, int], row: int, col: int, volts, *, scheme: str = "grounded",
                   compliance: float, source_compliance: float | None = None,
                   hold: float = 1e-3, nplc: float = 1.0,
                   i_range: float | None = None, fixed_range: bool = False) -> DcRequest:
    """The line-level request biasing device (row, col) at `volts` (one value per point)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown bias scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    v = np.atleast_1d(np.asarray(volts, dtype=float))
    rows, cols = shape
    levels = {("row", row): v, ("col", col): np.zeros_like(v)}
    if scheme in ("v2", "v3"):
        other_row, other_col = (v / 2, v / 2) if scheme == "v2" else (v / 3, 2 * v / 3)
        levels.update({("row", i): other_row for i in range(rows) if i != row})
        levels.update({("col", j): other_col for j in range(cols) if j != col})
    return DcRequest(levels, [("col", col)], compliance,
                     others="float" if scheme == "floating" else "ground",
                     source_compliance=source_compliance, hold=hold, nplc=nplc,
                     i_range=i_range, fixed_range=fixed_range)


def device_iv(rig: CrossbarRig, row: int, col: int, volts, *, scheme: str = "grounded",
              compliance: float, hold: float = 1e-3, nplc: float = 1.0,
              i_range: float | None = None, fixed_range: bool = False) -> DeviceIV:
    """Bias device (row, col) at each of `volts` in turn and measure its current."""
    req = device_request(rig.shape, row, col, volts, scheme=scheme, compliance=compliance,
                         source_compliance=rig.limits.i_compliance, hold=hold, nplc=nplc,
                         i_range=i_range, fixed_range=fixed_range)
    res = rig.dc(req)
    v = np.atleast_1d(np.asarray(volts, dtype=float))
    # the bit line's SMU takes in what the device delivers: the device current is its negative
    return DeviceIV(v, -res.current[:, 0], res.compliance[:, 0], res.overflow[:, 0],
                    res.other_compliance[:, 0], res.t[:, 0])
