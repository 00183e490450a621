"""`SimulatedRig`: the CrossbarRig seam straight on a simulated Crossbar, no instrument emulators.

Writes use the V/3 scheme (every pulse disturbs the other devices), reads the grounded scheme
through the nodal solver, clipped at `read.ceiling_S` like the 100 uA range. Instrument time is
charged to the crossbar's virtual clock from a LatencyConfig:

- pulse:            round_trip + width + 2*pulse_edge
- n reads:          round_trip + n*read_time
- pulse + n reads:  round_trip + width + 2*pulse_edge + n*read_time (one execution)
- read_array:       rows*cols * (round_trip + read_time): one execution per device, in raster
                    order, each device read at its own time (relaxation and the slow
                    fluctuators move on while the map is taken)
- DC, per point:    round_trip + hold + smu_settle + nplc / line_frequency; the levels stress
                    the devices for that time (simulator.dc.hold), then the operating point is
                    measured with read noise

The DC path has an SMU for every line (`dc_capacity`: rows + cols sources, ground available), so
a request never needs time multiplexing here; its current ranges never overflow unless a fixed
range is asked for.

The physics happens after the round trip, so volatile relaxation sees the host latency.
"""

from __future__ import annotations

import numpy as np

from instruments.limits import SafetyLimits
from protocols.rig import CrossbarRig, DcCapacity, DcGroup, DcMeasured, DcRequest, ReadSettings
from simulator import dc
from simulator.chip import ChipLab
from simulator.config import LatencyConfig
from simulator.crossbar import Crossbar


class SimulatedRig(CrossbarRig):
    """A fast rig for protocol tests and Monte-Carlo calibrations.

    `lab`: what a commit saves and a resume restores; by default the crossbar alone (with its
    clock). A crossbar of a VirtualChip takes the chip's (`chip.lab`), so that every rig of a
    multi-crossbar protocol (a transfer) saves and restores the whole die.
    """

    name = "simulated"

    def __init__(self, crossbar: Crossbar, latency: LatencyConfig | None = None,
                 limits: SafetyLimits | None = None, read: ReadSettings | None = None,
                 lab: ChipLab | None = None):
        super().__init__(crossbar.shape, limits or SafetyLimits(), read=read,
                         lab=lab or ChipLab({"crossbar": crossbar}, crossbar.clock))
        self.crossbar = crossbar
        self.latency = latency or LatencyConfig()

    def _safe_state(self) -> None:
        # nothing is biased between operations in the simulation
        return None

    def _clip(self, g):
        return np.minimum(g, self.read_settings.ceiling_S)

    def _reads(self, row: int, col: int, n: int) -> np.ndarray:
        xb, rs, clk = self.crossbar, self.read_settings, self.crossbar.clock
        out = np.empty(n)
        for k in range(n):
            out[k] = xb.read(row, col, rs.volts, "grounded")
            clk.advance(self.latency.read_time, "read")
        return self._clip(out)

    def _pulse_only(self, row: int, col: int, volts: float, seconds: float) -> None:
        self.crossbar.pulse_v3(row, col, volts, seconds)
        self.crossbar.clock.advance(seconds + 2 * self.latency.pulse_edge, "pulse")

    def _read_repeated(self, row: int, col: int, n: int) -> np.ndarray:
        self.crossbar.clock.advance(self.latency.round_trip, "round_trip")
        return self._reads(row, col, n)

    def _pulse(self, row: int, col: int, volts: float, seconds: float) -> None:
        self.crossbar.clock.advance(self.latency.round_trip, "round_trip")
        self._pulse_only(row, col, volts, seconds)

    def _pulse_and_read(self, row: int, col: int, volts: float, seconds: float,
                        n: int) -> np.ndarray:
        self.crossbar.clock.advance(self.latency.round_trip, "round_trip")
        self._pulse_only(row, col, volts, seconds)
        return self._reads(row, col, n)

    def _read_array(self) -> np.ndarray:
        xb, clk, lat = self.crossbar, self.crossbar.clock, self.latency
        volts = self.read_settings.volts
        rows, cols = xb.shape
        g = np.empty((rows, cols))
        for i in range(rows):
            for j in range(cols):
                clk.advance(lat.round_trip, "round_trip")
                g[i, j] = xb.read(i, j, volts, "grounded")
                clk.advance(lat.read_time, "read")
        return self._clip(g)

    # -- DC ------------------------------------------------------------------------------------
    @property
    def dc_capacity(self) -> DcCapacity:
        rows, cols = self.shape
        return DcCapacity(sources=rows + cols, ground=True)

    def _dc_pass(self, groups: list[DcGroup], request: DcRequest) -> list[DcMeasured]:
        xb, clk, lat = self.crossbar, self.crossbar.clock, self.latency
        sensed = [k for k, g in enumerate(groups) if g.sensed]
        n = request.points
        out = [DcMeasured(np.zeros(n), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool),
                          np.zeros(n), np.zeros(n, bool)) for _ in sensed]
        held_comp = request.compliance if request.source_compliance is None \
            else request.source_compliance
        lines = [(np.array([i for kind, i in g.lines if kind == "row"], dtype=int),
                  np.array([i for kind, i in g.lines if kind == "col"], dtype=int))
                 for g in groups]
        t_int = request.nplc / lat.line_frequency
        held = request.hold + lat.smu_settle + t_int
        avg = t_int / lat.read_time if lat.read_time > 0 else 1.0
        op, last, age = None, None, 0.0
        for p in range(n):
            sources = [dc.Source(r, c, float(g.volts[p]), None if g.ground else
                                 (request.compliance if g.sensed else held_comp), name=str(k))
                       for k, (g, (r, c)) in enumerate(zip(groups, lines, strict=True))]
            clk.advance(lat.round_trip, "round_trip")
            clk.advance(held, "dc")
            # a level unchanged since the previous point: its hold continues
            key = [s.volts for s in sources]
            age = age + held if key == last else 0.0
            op = dc.hold(xb, sources, held, op, age)
            last = key
            for m, k in zip(out, sensed, strict=True):
                cur = float(xb.noisy(op.current[k], avg))
                over = request.fixed_range and abs(cur) > request.i_range
                m.volts[p], m.current[p] = op.volts[k], (np.nan if over else cur)
                m.compliance[p], m.overflow[p], m.t[p] = op.limited[k], over, clk.now
                m.other_compliance[p] = bool(np.delete(op.limited, k).any())
        return out

    def snapshot(self) -> dict:
        cfg = self.crossbar.config
        return {"rig": self.name, "crossbar": f"simulated {cfg.rows}x{cfg.cols}",
                "instruments": "none (the physics directly)"}
