"""The DC path of an instrument rig: the SMUs of one instrument (4200 or B1500) routed to the
crossbar's lines, running the passes the rig seam plans (`protocols.rig.plan_dc`).

Each SMU is a `SmuPort`: cabled to a 707B matrix row (any line can be closed onto it) or wired
to fixed lines (a probe card, or a WGFMU RSU passing the SMU through). A pass:

1. `connect()`: the rig switches whatever stands between the SMUs and their cables (the 4225-RPM
   to its SMU path, the WGFMU channel to SMU mode);
2. routing: one `exclusive_close` putting each group's lines on its SMU's matrix row (grounded
   lines on the ground row, floating lines on nothing);
3. the points: on an instrument with list sweeps (the 4200, `K4200.list_sweep`) a request of
   several points is one system-mode test per 4096 points: every SMU steps through its list of
   levels (the first the master), each point is held `hold` seconds (`DT`) and read, and the
   readings come back in one `DO` per name; the currents of every sensed SMU, its output
   voltage where it reports compliance, and the time of each reading. Otherwise (the B1500:
   its multi-channel sweep `MM 16` needs commands the reference does not hold; a single point;
   a fixed current range) the SMUs are prepared (user mode or enabled, integration, current
   ranges) and, point by point, set to their levels (only the SMUs whose level changed), held
   `hold` seconds (a real rig sleeps, a simulated one advances its clock) and read: the current
   of every sensed SMU, and its output voltage when it reports compliance;
4. every SMU used is turned off; `release()` tells the rig its pulse set-up must be redone.

Instrument time is what the instruments take: one round trip per command, the integration,
the source settling, the relay switching and the hold (charged by the emulators on a simulated
station, real on a probe station).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from instruments.k707b import channel_name
from instruments.wiring import Wiring
from protocols.rig import DcCapacity, DcGroup, DcMeasured, DcRequest, Lab, Line


@dataclass(frozen=True)
class SmuPort:
    """One SMU of the DC instrument and where its output goes."""

    smu: object                 # a K4200Smu or B1500Smu
    letter: str | None = None   # the 707B matrix row it is cabled to
    lines: tuple[Line, ...] = ()  # or the lines it is wired to


class DcBank:
    """SMUs of one instrument (`inst`: a K4200 or B1500 driver) and how they reach the array."""

    def __init__(self, inst, ports: Sequence[SmuPort], *, matrix=None, wiring: Wiring | None = None,
                 ground_letter: str | None = None, connect: Callable[[list[SmuPort]], None]
                 = lambda ports: None, release: Callable[[], None] = lambda: None):
        if matrix is not None and (wiring is None or any(p.letter is None for p in ports)):
            raise ValueError("a routed DC bank needs the wiring and a matrix row for every SMU")
        self.inst, self.ports, self.matrix, self.wiring = inst, list(ports), matrix, wiring
        self.ground_letter = ground_letter
        self.connect, self.release = connect, release

    @property
    def capacity(self) -> DcCapacity:
        if self.matrix is None:
            return DcCapacity(sources=len(self.ports), ground=False, fixed=True)
        return DcCapacity(sources=len(self.ports), ground=self.ground_letter is not None)

    def _assign(self, groups: list[DcGroup]) -> list[list[SmuPort]]:
        """The SMUs that drive each group (none for a grounded group)."""
        if self.matrix is None:  # fixed wiring: every line has its SMU
            by_line = {line: p for p in self.ports for line in p.lines}
            out = []
            for g in groups:
                missing = [line for line in g.lines if line not in by_line]
                if missing:
                    raise ValueError(f"line {missing[0]!r} is wired to no SMU")
                out.append([by_line[line] for line in g.lines])
            return out
        free = iter(self.ports)
        return [[] if g.ground else [next(free)] for g in groups]

    def _route(self, groups: list[DcGroup], assigned: list[list[SmuPort]]) -> None:
        if self.matrix is None:
            return
        w = self.wiring
        closed = []
        for g, ports in zip(groups, assigned, strict=True):
            letter = self.ground_letter if g.ground else ports[0].letter
            closed += [channel_name(w.matrix_lines[line][0], letter, w.matrix_lines[line][1])
                       for line in g.lines]
        self.matrix.exclusive_close(closed)

    def run(self, groups: list[DcGroup], request: DcRequest, lab: Lab) -> list[DcMeasured]:
        assigned = self._assign(groups)
        used = [p for ports in assigned for p in ports]
        smus = [p.smu for p in used]
        try:
            self.connect(used)
            self._route(groups, assigned)
            if request.points > 1 and not request.fixed_range and \
                    hasattr(self.inst, "list_sweep"):
                out = self._sweep(groups, assigned, request, lab)
            else:
                self.inst.prepare_smus(smus, nplc=request.nplc, i_range=request.i_range,
                                       fixed=request.fixed_range)
                out = self._points(groups, assigned, request, lab)
        except BaseException:
            try:  # the error that stopped the pass is what matters; the rig makes all safe
                self.inst.release_smus(smus)
            except Exception:
                pass
            self.release()
            raise
        self.inst.release_smus(smus)
        self.release()
        return out

    def _comp(self, groups, assigned, request: DcRequest) -> dict:
        """Current compliance of each SMU: the request's for a sensing SMU, the source
        compliance for one that only holds levels."""
        held = request.compliance if request.source_compliance is None \
            else request.source_compliance
        return {port.smu: (request.compliance if g.sensed else held)
                for g, ports in zip(groups, assigned, strict=True) for port in ports}

    def _sweep(self, groups: list[DcGroup], assigned: list[list[SmuPort]],
               request: DcRequest, lab: Lab) -> list[DcMeasured]:
        """All points as list sweeps of the instrument (`K4200.list_sweep`): the first SMU the
        master; `hold` the delay before each point is measured."""
        levels = {port.smu: np.asarray(g.volts, float)
                  for g, ports in zip(groups, assigned, strict=True) for port in ports}
        sensed = [(g, ports[0].smu) for g, ports in zip(groups, assigned, strict=True)
                  if g.sensed]
        res = self.inst.list_sweep(levels, [s for _, s in sensed],
                                   self._comp(groups, assigned, request), nplc=request.nplc,
                                   i_range=request.i_range, delay=request.hold, now=lab.now,
                                   wait=lab.wait)
        out = []
        for g, smu in sensed:
            status, v = res.status[smu], res.volts[smu]
            comp = status == "C"
            volts = np.where(comp & np.isfinite(v), v, np.asarray(g.volts, float))
            out.append(DcMeasured(volts, res.current[smu], comp, status == "V", res.t.copy(),
                                  status == "T"))
        return out

    def _points(self, groups: list[DcGroup], assigned: list[list[SmuPort]],
                request: DcRequest, lab: Lab) -> list[DcMeasured]:
        n = request.points
        sensed = [(g, ports[0].smu) for g, ports in zip(groups, assigned, strict=True)
                  if g.sensed]
        out = [DcMeasured(np.array(g.volts, float), np.zeros(n), np.zeros(n, bool),
                          np.zeros(n, bool), np.zeros(n), np.zeros(n, bool)) for g, _ in sensed]
        comp = self._comp(groups, assigned, request)
        last: dict[int, float] = {}  # level each SMU holds since the previous point
        for p in range(n):
            levels = {}
            for g, ports in zip(groups, assigned, strict=True):
                for port in ports:
                    v = float(g.volts[p])
                    if last.get(id(port)) != v:
                        levels[port.smu] = v
                        last[id(port)] = v
            if levels:
                self.inst.force_voltages(levels, {smu: comp[smu] for smu in levels})
            if request.hold > 0:
                lab.wait(request.hold)
            for m, (_g, smu) in zip(out, sensed, strict=True):
                spot = smu.measure_current()
                m.current[p] = spot.value
                m.compliance[p], m.overflow[p] = spot.compliance, spot.overflow
                m.other_compliance[p] = spot.status == "T"
                if spot.compliance:  # the output sits below its level: say where
                    v = smu.measure_voltage()
                    if v.valid:
                        m.volts[p] = v.value
                m.t[p] = lab.now()
        return out
