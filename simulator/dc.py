"""DC on a crossbar: operating points with source-measure units (compliance included) and the
stress of DC levels held over time.

A `Source` is one output (an SMU, ground, a divider tap) and the crossbar lines it reaches.
`operating_point` solves the array (the crossbar's nodal solver: line resistance, sinh I-V,
sneak paths, line faults) with every source at its level. An SMU forcing a voltage with a
current compliance whose current would exceed it becomes a current source at the compliance:
its output voltage is then found (a root of its current against its voltage, with every other
source as it is) so that the current equals the compliance; several sources in compliance are
settled in turn until none moves (the array is passive and its currents rise with each source's
level, so this converges). Lines no source reaches float.

`hold` applies the stress of levels held for a time with the same per-pulse physics as any
pulse (`Crossbar.hold_devices`: a DC level held for t is a pulse of an equivalent width,
`physics.dc_width`, that continues the device's DC stress history), in steps
short enough that no device changes by more than `MAX_STEP_CHANGE` of its conductance in one
step (predicted with the median cycle-to-cycle factor, `Crossbar.predict_change`), with the
operating point re-solved between steps: a device switching under compliance therefore sees
its voltage fall as its current reaches the compliance, as on a real SMU. A hold that changes
nothing noticeably is one step. Each step draws the C2C factors of one pulse.

`sweep_stress` applies the stress of a list sweep's patterns in one step each, at the levels
of the lines: for a read-out whose operating points were solved in one batch because no device
is predicted to move noticeably (the emulated SMU list sweep and the simulator's array tester
share it, so both read-outs disturb the chip alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from simulator.errors import SimulatorError

#: largest predicted relative change of any device per hold step
MAX_STEP_CHANGE = 0.05
#: shortest hold step [s] (the pulse grid of the instruments)
MIN_STEP = 10e-9
#: settling rounds of sources in compliance, and the tolerance on a compliance current
_ROUNDS = 30
_RTOL = 1e-5


@dataclass
class Source:
    """One output and the crossbar lines it reaches.

    `volts`: its level [V]. `compliance`: the current limit [A] of an SMU forcing `volts`
    (None: an ideal source, such as ground or a divider tap). `amps`: set for an SMU forcing
    a current (then `volts` is its voltage compliance)."""

    rows: np.ndarray
    cols: np.ndarray
    volts: float
    compliance: float | None = None
    amps: float | None = None
    name: str = ""


@dataclass
class OperatingPoint:
    volts: np.ndarray            # output voltage of each source [V]
    current: np.ndarray          # current of each source into the array [A]
    limited: np.ndarray          # bool: the source is at its compliance
    device_voltages: np.ndarray  # [V], rows x cols
    solution: object = None      # the nodal solution (a warm start for a nearby point)


def _levels(shape, sources: list[Source], volts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    row_v = np.full(shape[0], np.nan)
    col_v = np.full(shape[1], np.nan)
    for s, v in zip(sources, volts, strict=True):
        for arr, idx in ((row_v, s.rows), (col_v, s.cols)):
            if len(idx) and not np.all(np.isnan(arr[idx])):
                raise SimulatorError(f"short: source {s.name or '?'} drives a line another "
                                     "source drives too")
            arr[idx] = v
    return row_v, col_v


def operating_point(xb, sources: list[Source],
                    guess: OperatingPoint | None = None) -> OperatingPoint:
    """Solve the array with every source at its level (compliance applied). No noise, no
    change to the devices. `guess`: a nearby operating point of the same sources (the previous
    one of a hold) to start the compliance search from."""
    solver, G = xb.solver, xb.conductance()
    n = len(sources)
    volts = np.array([s.volts if s.amps is None else 0.0 for s in sources], dtype=float)
    limited = np.zeros(n, dtype=bool)
    if guess is not None and len(guess.volts) == n:
        limited = guess.limited.copy()
        volts = np.where(limited, guess.volts, volts)

    memo: dict[bytes, tuple] = {}
    warm = [guess.solution if guess is not None else None]

    def solve(v: np.ndarray):
        key = v.tobytes()
        hit = memo.get(key)
        if hit is not None:
            return hit
        row_v, col_v = _levels(xb.shape, sources, v)
        if np.isnan(row_v).all() and np.isnan(col_v).all():
            return None, np.zeros(n)
        res = solver.solve(G, row_v, col_v, warm[0])
        warm[0] = res
        cur = np.array([res.row_currents[s.rows].sum() + res.col_currents[s.cols].sum()
                        for s in sources])
        memo[key] = res, cur
        return res, cur

    res, cur = solve(volts)
    if res is None:
        return OperatingPoint(volts, cur, limited, np.zeros(xb.shape))
    active = [k for k, s in enumerate(sources) if s.amps is not None or s.compliance is not None]
    settled_at: dict[int, np.ndarray] = {}  # the levels at which a source was last settled
    for _ in range(_ROUNDS):
        moved = False
        for k in active:
            if k in settled_at and np.array_equal(settled_at[k], volts):
                continue  # nothing moved since: it stays where it is
            v_new, lim = _settle_source(sources, k, volts, cur, limited[k], solve)
            if v_new is not None and (abs(v_new - volts[k]) > 1e-9 or lim != limited[k]):
                moved = True
                volts[k], limited[k] = v_new, lim
                res, cur = solve(volts)
            settled_at[k] = volts.copy()
        if not moved:
            break
    else:
        raise SimulatorError("DC operating point: sources in compliance did not settle")
    return OperatingPoint(volts, cur, limited, res.device_voltages, res)


def _settle_source(sources, k, volts, cur, limited, solve):
    """(voltage, in compliance) source k takes with every other source as it is now; (None, _)
    when it stays as it is. A source's current rises with its own voltage (passive array)."""
    s = sources[k]

    def current_at(v):
        trial = volts.copy()
        trial[k] = v
        return solve(trial)[1][k]

    if s.amps is not None:  # forcing a current, its voltage limited to +-|volts|
        lo, hi = -abs(s.volts), abs(s.volts)
        f_lo, f_hi = current_at(lo) - s.amps, current_at(hi) - s.amps
        if f_lo > 0 or f_hi < 0:  # voltage compliance
            return (lo if f_lo > 0 else hi), True
        return _root(current_at, s.amps, lo, hi, volts[k]), False
    comp = s.compliance
    if not limited and abs(cur[k]) <= comp * (1 + _RTOL):
        return None, False
    at_set = current_at(s.volts) if limited else cur[k]
    if abs(at_set) <= comp * (1 + _RTOL):
        return s.volts, False
    # a current source at the compliance: between its set level and the lowest (highest)
    # level in the array, where its current is <= 0 (>= 0)
    others = np.delete(volts, k)
    if at_set > 0:
        target, lo, hi = comp, min(others.min(initial=0.0), s.volts), s.volts
    else:
        target, lo, hi = -comp, s.volts, max(others.max(initial=0.0), s.volts)
    if lo == hi:
        return s.volts, True
    start = volts[k] if limited and lo <= volts[k] <= hi else s.volts
    return _root(current_at, target, lo, hi, start), True


def _root(current_at, target: float, lo: float, hi: float, start: float) -> float:
    """The voltage in [lo, hi] where `current_at` equals `target` (secant steps from `start`,
    which is usually close: the previous operating point; bisection if they stray)."""
    tol = abs(target) * _RTOL + 1e-15
    x0, f0 = start, current_at(start) - target
    if abs(f0) <= tol:
        return x0
    # second point: the current scaled as if it were proportional to the voltage
    i0 = f0 + target
    x1 = x0 * target / i0 if i0 != 0 and x0 != 0 else (lo + hi) / 2
    if not lo < x1 < hi:
        x1 = lo if f0 > 0 else hi
    f1 = current_at(x1) - target
    for _ in range(40):
        if abs(f1) <= tol:
            return x1
        if f0 * f1 < 0:  # keep a bracket
            lo, hi = min(x0, x1), max(x0, x1)
        x2 = x1 - f1 * (x1 - x0) / (f1 - f0) if f1 != f0 else (lo + hi) / 2
        if not lo < x2 < hi:
            x2 = (lo + hi) / 2
        x0, f0, x1 = x1, f1, x2
        f1 = current_at(x1) - target
    return optimize.brentq(lambda v: current_at(v) - target, lo, hi, xtol=1e-12)


def hold(xb, sources: list[Source], seconds: float,
         guess: OperatingPoint | None = None) -> OperatingPoint | None:
    """Apply the stress of `sources` held for `seconds` (see the module docstring); returns
    the operating point at the end (None when nothing was held). `guess`: the operating point
    of the previous levels of the same sources (a sweep), to start from. Each device's stress
    continues its DC stress history (`Crossbar.start_dc_hold`, `hold_devices`), so a level
    held on from the previous call goes on as one hold."""
    if not seconds > 0 or not sources:
        return None
    done = 0.0
    xb.start_dc_hold()
    op = operating_point(xb, sources, guess)
    while seconds - done > MIN_STEP / 2:
        rest = seconds - done
        step = rest
        g = xb.conductance()
        scale = np.maximum(g, 1e-9)
        v = op.device_voltages
        while step > MIN_STEP:
            change = np.abs(xb.predict_change(v, xb.dc_widths(v, step)[0])) / scale
            if float(change.max(initial=0.0)) <= MAX_STEP_CHANGE:
                break
            step = max(step / 4, MIN_STEP)
        xb.hold_devices(v, step)
        done += step
        op = operating_point(xb, sources, op)
    return op


def sweep_stress(xb, v_dev: np.ndarray, phases: Sequence[tuple[float, str]]) -> None:
    """The DC stress of k drive patterns held one after the other (an SMU list sweep): pattern
    a puts ``v_dev[a]`` (rows x cols) on the devices for the `phases` (seconds, clock category:
    settling, integration...), each charged to the crossbar's clock, then stresses them as a
    hold that continues each device's DC stress history (`Crossbar.start_dc_hold`)."""
    held = sum(seconds for seconds, _ in phases)
    for v in v_dev:
        for seconds, what in phases:
            xb.clock.advance(seconds, what)
        xb.start_dc_hold()
        xb.hold_devices(v, held)
