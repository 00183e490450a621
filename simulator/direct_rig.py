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
- column_currents:  round_trip + k * (smu_settle + READOUT_NPLC / line_frequency) for k drive
                    patterns (one list sweep; booked as dc_settle and dc_integration),
                    + relay_switch when the lines connected change and the path has fewer
                    sources or meters than lines (they reach the array through a matrix); the
                    currents are solved at the state of the sweep's start, then each pattern's
                    DC stress is applied for its settling and integration (`dc.sweep_stress`,
                    as the emulated stations' list sweeps do)
- dc, per point:    round_trip + hold + smu_settle + nplc / line_frequency; the levels stress
                    the devices for that time (simulator.dc.hold), then the operating point is
                    measured with read noise

Two DC entry points share the latencies and the nodal solver but not their code. The station
rigs (instruments.rigs) have one: their `column_currents` is a `DcRequest` on their SMUs (the
seam's default). This rig keeps a second, an array tester with `channels` sources and meters
(default: one per word line and one per bit line, so nothing is switched), for two measured
reasons: all k patterns of a call are solved together (every line driven: line resistance,
sneak paths, sinh I-V) plus the read noise of a current integrated for READOUT_NPLC (as the
stations' SMUs measure it) per column current, a few ms of
wall time for 50 patterns on 8x8 against 60 ms through `dc` (a hold and operating point per
point; the Monte-Carlo chips of bench/repair.py and `explain_gap` run thousands of such
calls); and `ideal` switches effects off on this path only ("lines": no line and source
resistance, "nonlinearity": linear devices, "noise": no read noise, "stress": the patterns'
DC stress not applied), to attribute an error to each effect (a rig with any of them off is an
analysis tool, not a station). Its timing is an
ideal list-sweep tester's, not a station's (the half-moons network: 10.9 ms per inference here,
92 ms through the 4200's SMUs on sim-pmu (list sweeps), 666 ms through a B1500's (point by
point): `bench/infer_time.py`). `dc` is the line-level SMU request of the seam
(`DcRequest`: compliance, hold stress, floating lines, per-point operating points); here every
line has an SMU (`dc_capacity`: rows + cols sources, ground available), so a request never
needs time multiplexing, and its current ranges never overflow unless a fixed range is asked
for.

The physics happens after the round trip, so volatile relaxation sees the host latency.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from instruments.limits import SafetyLimits
from protocols.rig import (
    Channels,
    ComplianceError,
    CrossbarRig,
    DcCapacity,
    DcGroup,
    DcMeasured,
    DcRequest,
    ReadSettings,
)
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
    #: effects the DC path can switch off (`ideal`)
    EFFECTS = ("lines", "nonlinearity", "noise", "stress")

    def __init__(self, crossbar: Crossbar, latency: LatencyConfig | None = None,
                 limits: SafetyLimits | None = None, read: ReadSettings | None = None,
                 lab: ChipLab | None = None, channels: Channels | None = None,
                 ideal: Collection[str] = ()):
        super().__init__(crossbar.shape, limits or SafetyLimits(), read=read,
                         lab=lab or ChipLab({"crossbar": crossbar}, crossbar.clock))
        self.crossbar = crossbar
        self.latency = latency or LatencyConfig()
        self._channels = channels or Channels(*crossbar.shape)
        bad = set(ideal) - set(self.EFFECTS)
        if bad:
            raise ValueError(f"unknown effect(s) {sorted(bad)}; choose from {self.EFFECTS}")
        self.ideal = frozenset(ideal)
        self._routing: tuple | None = None   # lines connected by the last DC request

    @property
    def channels(self) -> Channels:
        return self._channels

    def _safe_state(self) -> None:
        # nothing is biased between operations in the simulation
        return None

    def _instrument_state(self) -> dict | None:
        # the lines the switched DC path has connected: a resumed run switches relays exactly
        # when the uninterrupted one does
        if self._routing is None:
            return None
        return {"routing": [list(self._routing[0]), list(self._routing[1])]}

    def _reinstate(self, state: dict) -> None:
        rows, cols = state["routing"]
        self._routing = (tuple(int(r) for r in rows), tuple(int(c) for c in cols))

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

    def _column_currents(self, rows: np.ndarray, volts: np.ndarray,
                         cols: np.ndarray) -> np.ndarray:
        xb, clk, lat = self.crossbar, self.crossbar.clock, self.latency
        clk.advance(lat.round_trip, "round_trip")
        routing = (tuple(rows.tolist()), tuple(cols.tolist()))
        switched = self._channels.sources < xb.shape[0] or self._channels.meters < xb.shape[1]
        if switched and routing != self._routing:
            clk.advance(lat.relay_switch, "relay")
        self._routing = routing
        row_v = np.zeros((volts.shape[0], xb.shape[0]))
        row_v[:, rows] = volts
        k = volts.shape[0]
        t_int = self.READOUT_NPLC / lat.line_frequency
        # the read noise of a current integrated over t_int, as the stations' SMUs measure it
        rc, cc = xb.column_currents(row_v, noise="noise" not in self.ideal,
                                    averaging=t_int / lat.read_time if lat.read_time > 0 else 1.0,
                                    lines="lines" not in self.ideal,
                                    nonlinear="nonlinearity" not in self.ideal)
        # each pattern held for its settling and integration stresses the devices as the
        # stations' list sweeps do (every other line at 0 V)
        phases = [(lat.smu_settle, "dc_settle"), (t_int, "dc_integration")]
        if "stress" in self.ideal:
            for seconds, what in phases:
                clk.advance(k * seconds, what)
        else:
            dc.sweep_stress(xb, np.broadcast_to(row_v[:, :, None], (k, *xb.shape)), phases)
        worst = max(float(np.abs(rc).max()), float(np.abs(cc).max()))
        if worst > self.limits.i_compliance:
            raise ComplianceError(f"{self.name}: a line reached the current compliance "
                                f"({worst:.3g} A > {self.limits.i_compliance:.3g} A) during the "
                                "analog read-out")
        return cc[:, cols]

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
        op = None
        for p in range(n):
            sources = [dc.Source(r, c, float(g.volts[p]), None if g.ground else
                                 (request.compliance if g.sensed else held_comp), name=str(k))
                       for k, (g, (r, c)) in enumerate(zip(groups, lines, strict=True))]
            clk.advance(lat.round_trip, "round_trip")
            clk.advance(held, "dc")
            op = dc.hold(xb, sources, held, op)
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
