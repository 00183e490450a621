"""The shared simulated "lab world": one crossbar, its wiring, and the instrument terminals.

Terminals are named instrument outputs (`pmu1`, `pmu2`, `div_v3`, `div_2v3`, `gnd`, `smu2`,
`wgfmu101`, ...). Each crossbar line reaches terminals as `instruments.wiring.Wiring` (the
description the rigs use too) says: through fixed wiring (a probe card on a single crosspoint)
or through closed 707B crosspoints (matrix row letter = terminal, matrix column = line).
Emulated instruments hand the world their waveforms; the world resolves which potential every
line sees and drives the physics:

- a *write* excursion (a run of segments with some nonzero level and no measurement) becomes one
  `Crossbar.apply_line_pulse` with the levels at the peak, lasting the time spent at the peak
  (the plateau; edges are not counted, like `SimulatedRig`);
- a measurement returns the current flowing out of a terminal into the array. The grounded-read
  case (one row at Vr, every other line at 0 V, the sensing terminal on the selected column) uses
  `Crossbar.read`; any other configuration the nodal `Crossbar.measure`, with the same read
  noise added to the sensed current;
- DC levels held by SMUs stress the routed devices for the time they are held (`settle_dc`,
  `simulator.dc.hold`: the operating point with every SMU's compliance, re-solved while devices
  switch), and an SMU measurement is the operating point's current of its terminal plus read
  noise (`smu_reading`).

SMU terminals carry a current compliance (`compliance`, set by the SMU emulators). A *link*
(`links`: terminal -> terminal) is a switch that puts another output on a terminal's cable: the
4225-RPM passing an SMU through to the PMU channel's cable, the WGFMU's RSU passing a B1500 SMU
through in SMU mode; the linked terminal then carries the source's level and its current is the
source's.

Lines with no terminal float (NaN). A line tied to two terminals at different levels is a short:
it raises SimulatorError.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from instruments.wiring import Line, Wiring
from simulator import dc
from simulator.config import LatencyConfig
from simulator.errors import SimulatorError


@dataclass
class Segment:
    """One stretch of a waveform: levels go linearly from v0 to v1 on each terminal."""

    seconds: float
    v0: dict[str, float]
    v1: dict[str, float]
    #: measurements in this segment: (terminal, t_from, t_to) relative to the segment start
    measures: list[tuple[str, float, float]] = field(default_factory=list)


#: largest summed relative change of any device a list sweep may predict for its batched solve
SWEEP_CHANGE = 1e-3


class LabWorld:
    def __init__(self, crossbar, wiring: Wiring, latency: LatencyConfig | None = None):
        self.crossbar = crossbar
        self.clock = crossbar.clock
        self.latency = latency or LatencyConfig()
        self.wiring = wiring
        self.rows, self.cols = crossbar.shape
        #: providers of the physically closed 707B channels (set by the 707B emulator)
        self.closed_channels: Callable[[], frozenset[str]] = frozenset
        #: terminal -> static level [V] (NaN = output off / floating); instruments update it
        self.static: dict[str, float] = {"gnd": 0.0}
        #: terminal -> current compliance [A] of the SMU behind it
        self.compliance: dict[str, float] = {}
        #: terminal -> the terminal whose output a switch (RPM, RSU) puts on its cable
        self.links: dict[str, str] = {}
        self._map_version = -1
        self._version = 0
        self._term_lines: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._shared = False
        self._gather: tuple[list[str], np.ndarray, np.ndarray] = ([], np.zeros(0, int),
                                                                 np.zeros(0, int))
        self._route_cache: dict[frozenset[str], tuple] = {}
        self._dc_since = self.clock.now
        self._dc_op: dc.OperatingPoint | None = None
        self.pulses_applied = 0
        self.reads_taken = 0

    # -- routing -------------------------------------------------------------------------------
    def routing_changed(self) -> None:
        self._version += 1

    def _routing(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self._map_version == self._version:
            return self._term_lines
        closed = self.closed_channels() if self.wiring.matrix_lines else frozenset()
        # a protocol alternates between a few selections (write / read routing): keep each
        # resolved map (the wiring itself is fixed once the world is built)
        hit = self._route_cache.get(closed)
        if hit is None:
            hit = self._resolve(closed)
            if len(self._route_cache) > 256:
                self._route_cache.clear()
            self._route_cache[closed] = hit
        self._term_lines, self._shared, self._gather = hit
        self._map_version = self._version
        return self._term_lines

    def _resolve(self, closed: frozenset[str]):
        w = self.wiring
        per_line: dict[Line, set[str]] = {}
        for line, term in w.fixed.items():
            per_line.setdefault(line, set()).add(term)
        if w.matrix_lines:
            by_col = {f"{s}{{}}{c:02d}": line for line, (s, c) in w.matrix_lines.items()}
            for name in closed:
                key = f"{name[0]}{{}}{name[2:]}"
                line = by_col.get(key)
                term = w.matrix_rows.get(name[1])
                if line is not None and term is not None:
                    per_line.setdefault(line, set()).add(term)
        out: dict[str, tuple[list[int], list[int]]] = {}
        for (kind, idx), terms in per_line.items():
            for t in terms:
                r, c = out.setdefault(t, ([], []))
                (r if kind == "row" else c).append(idx)
        term_lines = {t: (np.array(r, dtype=int), np.array(c, dtype=int))
                      for t, (r, c) in out.items()}
        # only a line on two terminals can be a short: check levels only then
        shared = any(len(t) > 1 for t in per_line.values())
        # for the unshared case: terminal index of every line (len(terms) = not connected)
        terms = list(term_lines)
        row_t = np.full(self.rows, len(terms))
        col_t = np.full(self.cols, len(terms))
        for k, t in enumerate(terms):
            ri, ci = term_lines[t]
            row_t[ri] = k
            col_t[ci] = k
        return term_lines, shared, (terms, row_t, col_t)

    def lines_of(self, terminal: str) -> tuple[list[int], list[int]]:
        r, c = self._routing().get(terminal, (np.zeros(0, int), np.zeros(0, int)))
        return list(r), list(c)

    def line_levels(self, levels: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Potential of every row and column for the given terminal levels (NaN = floating)."""
        lv = dict(self.static)
        lv.update(levels)
        for term, src in self.links.items():
            lv[term] = lv.get(src, math.nan)
        for name, (src, k) in self.wiring.dividers.items():
            lv[name] = lv.get(src, np.nan) * k
        routing = self._routing()
        nan = math.nan
        if not self._shared:
            # every line on at most one terminal: gather the levels by index, no short possible
            terms, row_t, col_t = self._gather
            vals = np.array([lv.get(t, nan) for t in terms] + [nan])
            return vals[row_t], vals[col_t]
        row_v = np.full(self.rows, np.nan)
        col_v = np.full(self.cols, np.nan)
        for term, (ri, ci) in routing.items():
            v = lv.get(term, nan)
            for arr, idx in ((row_v, ri), (col_v, ci)):
                if idx.size == 0:
                    continue
                prev = arr[idx]
                clash = ~np.isnan(prev) & (prev != v)
                if clash.any():
                    raise SimulatorError(f"short: terminal {term} and another source drive "
                                         "the same crossbar line")
                arr[idx] = v
        return row_v, col_v

    # -- physics -------------------------------------------------------------------------------
    def dc_sources(self) -> list[dc.Source]:
        """The static outputs driving the array now, one per source terminal (a linked
        terminal's lines belong to its source), with their lines, levels and compliance."""
        self.line_levels({})  # raises on a short between two terminals
        lv = dict(self.static)
        for name, (src, k) in self.wiring.dividers.items():
            lv[name] = lv.get(self.links.get(src, src), math.nan) * k
        acc: dict[str, tuple[list[int], list[int]]] = {}
        taken: set[Line] = set()  # a line on two outputs at one level belongs to the first
        for term, (ri, ci) in self._routing().items():
            src = self.links.get(term, term)
            if lv.get(src, math.nan) != lv.get(src, math.nan):
                continue  # output off: its lines float
            r, c = acc.setdefault(src, ([], []))
            for kind, idx, out in (("row", ri, r), ("col", ci, c)):
                for i in idx.tolist():
                    if (kind, i) not in taken:
                        taken.add((kind, i))
                        out.append(i)
        return [dc.Source(np.unique(np.asarray(r, int)), np.unique(np.asarray(c, int)),
                          float(lv[src]), self.compliance.get(src),
                          name=src) for src, (r, c) in acc.items()]

    def settle_dc(self) -> dc.OperatingPoint | None:
        """Apply the stress of the DC levels held since the last change (SMU bias lines);
        returns the operating point at the end of it (None when nothing was held)."""
        now = self.clock.now
        dt = now - self._dc_since
        self._dc_since = now
        if dt <= 0 or not any(v for k, v in self.static.items() if v == v and k != "gnd"):
            return None
        sources = self.dc_sources()
        if all(s.volts == 0 for s in sources):
            return None
        # the previous operating point of the same outputs starts the solves (a sweep)
        guess = self._dc_op if self._dc_op is not None and \
            len(self._dc_op.volts) == len(sources) else None
        self._dc_op = dc.hold(self.crossbar, sources, dt, guess)
        return self._dc_op

    def smu_reading(self, terminal: str, siblings=(), integration: float = 0.0
                    ) -> tuple[float, float, bool, bool]:
        """An SMU measurement at `terminal` now, integrated over `integration` seconds: (its
        output voltage [V], its current into the array [A] with read noise, itself in
        compliance, one of `siblings` (the same instrument's other SMU terminals) in
        compliance). The stress up to now is applied first."""
        avg = integration / self.latency.read_time if self.latency.read_time > 0 else 1.0
        held = self.settle_dc()
        sources = self.dc_sources()
        self.reads_taken += 1
        names = [s.name for s in sources]
        if terminal not in names:  # output off, or reaching no line
            level = self.static.get(terminal, math.nan)
            return (0.0 if level != level else level), float(self.crossbar.noisy(0.0, avg)), \
                False, False
        op = held if held is not None else dc.operating_point(self.crossbar, sources)
        k = names.index(terminal)
        other = any(op.limited[j] for j, n in enumerate(names) if n in siblings and j != k)
        return (float(op.volts[k]), float(self.crossbar.noisy(op.current[k], avg)),
                bool(op.limited[k]), bool(other))

    def dc_sweep(self, levels: dict[str, np.ndarray], held: float, integration: float
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """A list sweep of SMU terminals: at point a every terminal of `levels` is at
        levels[t][a] (the others as `static` says) for `held` seconds (settling, delay and
        integration, charged to the clock point by point as "dc"), then measured, integrated
        over `integration` seconds. Returns, per terminal of `levels`: (output voltage [V],
        current into the array with read noise [A], in compliance), k values each.

        The DC stress of each point is applied for its hold, as a spot measurement's is
        (continuing each device's DC stress history, `Crossbar.start_dc_hold`). When
        every line is driven, every bit line is at 0 V at every point (the analog read-out),
        no source would exceed its compliance and the whole sweep is predicted to move no
        device by more than SWEEP_CHANGE of its conductance, the k points are solved in one
        batched nodal solve (`Crossbar.column_currents`, the conductances of the sweep's
        start) and each point's stress is applied at the lines' levels (the device voltages
        less the line drops: an upper bound on the stress). Otherwise every point is a
        `simulator.dc.hold` and its operating point, like the spot path."""
        self.settle_dc()  # what was held before the sweep
        xb = self.crossbar
        names = list(levels)
        lv = {t: np.asarray(levels[t], dtype=float) for t in names}
        k = len(lv[names[0]])
        saved = {t: self.static.get(t, math.nan) for t in names}
        avg = integration / self.latency.read_time if self.latency.read_time > 0 else 1.0
        row_v, col_v = np.empty((k, self.rows)), np.empty((k, self.cols))
        for a in range(k):
            row_v[a], col_v[a] = self.line_levels({t: float(lv[t][a]) for t in names})
        self.reads_taken += k
        out = self._sweep_batched(names, lv, row_v, col_v, held)
        if out is None:
            out = self._sweep_points(names, lv, held)
        else:
            dc.sweep_stress(xb, row_v[:, :, None] - col_v[:, None, :], [(held, "dc")])
        self.static.update(saved)
        self._dc_since, self._dc_op = self.clock.now, None
        return {t: (v, xb.noisy(i, avg), lim) for t, (v, i, lim) in out.items()}

    def _sweep_batched(self, names, lv, row_v, col_v, held):
        """The batched read-out case of `dc_sweep` (noise-free), or None when it does not apply."""
        xb = self.crossbar
        if not (np.isfinite(row_v).all() and np.isfinite(col_v).all()) or col_v.any():
            return None
        routing = self._routing()
        v_dev = row_v[:, :, None] - col_v[:, None, :]
        scale = np.maximum(xb.conductance(), 1e-9)
        change = np.zeros(xb.shape)
        for v, widths in zip(v_dev, xb.dc_widths(v_dev, held), strict=True):
            change += np.abs(xb.predict_change(v, widths)) / scale
        if float(change.max(initial=0.0)) > SWEEP_CHANGE:
            return None
        rc, cc = xb.column_currents(row_v, noise=False)
        out = {}
        for t in names:
            ri = [r for u, (rr, _) in routing.items() if self.links.get(u, u) == t for r in rr]
            ci = [c for u, (_, cc_) in routing.items() if self.links.get(u, u) == t for c in cc_]
            cur = rc[:, ri].sum(axis=1) - cc[:, ci].sum(axis=1)
            if (np.abs(cur) > self.compliance.get(t, math.inf)).any():
                return None
            out[t] = (lv[t].copy(), cur, np.zeros(len(cur), bool))
        return out

    def _sweep_points(self, names, lv, held):
        """`dc_sweep` point by point: each a DC hold and its operating point (noise-free)."""
        k = len(lv[names[0]])
        out = {t: (lv[t].copy(), np.zeros(k), np.zeros(k, bool)) for t in names}
        op = None
        for a in range(k):
            for t in names:
                self.static[t] = float(lv[t][a])
            self.clock.advance(held, "dc")
            sources = self.dc_sources()
            guess = op if op is not None and len(op.volts) == len(sources) else None
            op = dc.hold(self.crossbar, sources, held, guess) if held > 0 else None
            if op is None:
                op = dc.operating_point(self.crossbar, sources, guess)
            found = {s.name: j for j, s in enumerate(sources)}
            for t in names:
                j = found.get(t)
                if j is not None:
                    out[t][0][a], out[t][1][a] = op.volts[j], op.current[j]
                    out[t][2][a] = op.limited[j]
        return out

    def sensed_current(self, levels: dict[str, float], terminal: str) -> float:
        """Current [A] flowing out of `terminal` into the array at these levels."""
        row_v, col_v = self.line_levels(levels)
        ri, ci = self._routing().get(terminal, (np.zeros(0, int), np.zeros(0, int)))
        self.reads_taken += 1
        if ri.size == 0 and ci.size == 0:
            return 0.0
        # grounded read: one row at Vr, every other line at 0, the sensor on one column
        # (plain-float checks: these arrays hold a handful of lines)
        if ri.size == 0 and ci.size == 1:
            rv, cv = row_v.tolist(), col_v.tolist()
            if all(c == 0.0 for c in cv) and not any(r != r for r in rv):
                nz = [i for i, r in enumerate(rv) if r != 0.0]
                if len(nz) == 1:
                    vr = rv[nz[0]]
                    return -self.crossbar.read(nz[0], int(ci[0]), vr, "grounded") * vr
                if not nz:
                    return 0.0
        if np.isnan(row_v).all() and np.isnan(col_v).all():
            return 0.0
        rc, cc = self.crossbar.measure(row_v, col_v)
        # a sensing channel has the same read noise whatever the bias of the other lines
        return self.crossbar.noisy(float(np.sum(rc[ri]) + np.sum(cc[ci])))

    def compile(self, segments: list[Segment]) -> Plan:
        """Resolve a waveform once into what `run` does with it (idle stretches, write
        excursions with their peak levels and plateau, measurement points), so an instrument
        that plays the same waveform again (a tuning loop) skips this analysis."""
        steps: list[tuple] = []
        t0 = 0.0
        i = 0
        n = len(segments)
        while i < n:
            seg = segments[i]
            if not _active(seg):
                steps.append(("idle", seg.seconds))
                t0 += seg.seconds
                i += 1
                continue
            j = i
            while j < n and _active(segments[j]):
                j += 1
            exc = segments[i:j]
            dur = sum(s.seconds for s in exc)
            if any(s.measures for s in exc):
                points = []
                t = t0
                for s in exc:
                    for term, a, b in s.measures:
                        f = (a + b) / 2 / s.seconds if s.seconds else 0.0
                        lv = {k: s.v0[k] + (s.v1.get(k, s.v0[k]) - s.v0[k]) * f for k in s.v0}
                        points.append((term, t + (a + b) / 2, lv))
                    t += s.seconds
                steps.append(("read", dur, points))
            else:
                steps.append(("write", dur) + _peak(exc))
            t0 += dur
            i = j
        return Plan(steps)

    def run(self, segments: list[Segment] | Plan) -> dict[str, list[tuple[float, float, float]]]:
        """Play a waveform (segments, or a `compile`d plan). Returns measurements per terminal:
        (t_mid, mean level, current).

        Advances the clock by the waveform duration (category "pulse", or "read" for the
        excursions that measure)."""
        plan = segments if isinstance(segments, Plan) else self.compile(segments)
        self.settle_dc()
        out: dict[str, list[tuple[float, float, float]]] = {}
        advance = self.clock.advance
        for step in plan.steps:
            kind = step[0]
            if kind == "idle":
                advance(step[1], "idle")
            elif kind == "read":
                for term, t_mid, lv in step[2]:
                    cur = self.sensed_current(lv, term)
                    out.setdefault(term, []).append((t_mid, lv.get(term, 0.0), cur))
                advance(step[1], "read")
            else:
                _, dur, peak, plateau = step
                row_v, col_v = self.line_levels(peak)
                self.crossbar.apply_line_pulse(row_v, col_v, plateau)
                self.pulses_applied += 1
                advance(dur, "pulse")
        self._dc_since = self.clock.now
        return out


@dataclass(frozen=True)
class Plan:
    """A waveform resolved by `LabWorld.compile`: ("idle", s) | ("read", s, points) |
    ("write", s, peak levels, plateau s)."""

    steps: list[tuple]


def _peak(exc: list[Segment]) -> tuple[dict[str, float], float]:
    """Levels at the peak of a write excursion and the time spent there."""
    # the peak: the segment end point with the largest |level| on any terminal
    best, peak = -1.0, None
    for s in exc:
        for lv in (s.v0, s.v1):
            m = max((abs(v) for v in lv.values()), default=0.0)
            if m > best:
                best, peak = m, lv
    assert peak is not None
    plateau = sum(s.seconds for s in exc if _same(s.v0, peak) and _same(s.v1, peak))
    if plateau <= 0:  # a triangle: count half its duration
        plateau = sum(s.seconds for s in exc) / 2
    return peak, plateau


def _active(s: Segment) -> bool:
    # |v| below 1 nV counts as 0 V (interpolation residue)
    return (bool(s.measures) or any(abs(v) > 1e-9 for v in s.v0.values())
            or any(abs(v) > 1e-9 for v in s.v1.values()))


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(abs(a.get(k, 0.0) - v) < 1e-12 for k, v in b.items())
