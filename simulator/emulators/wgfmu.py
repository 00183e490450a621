"""Emulated WGFMU instrument library: a `WgfmuLibrary` backend over the lab world.

Keeps the library's state machine and error codes (instruments.md §3.3-3.4): patterns are
host-side and may be built before `openSession`; everything that touches the instrument needs an
open session (CONTEXT_ERROR otherwise); vectors live on a 10 ns grid (off-grid times rounded,
out-of-range vectors refused and not added); measure events must end inside their pattern;
results are RESULT_NOT_READY before an execute and RESULT_OUT_OF_DATE once the setup changed.
Channel `c` is the world terminal `wgfmu<c>`: 0 V while connected and idle, floating otherwise.
In SMU mode (`OPERATION_MODE_SMU`) a connected channel's RSU passes through the B1500 SMU
cabled to its SMU input (`smu_inputs`, channel -> SMU terminal such as `smu2`): a world link,
so the cable carries that SMU's level and its current is the SMU's (the connect-then-pass-through
behaviour is this emulator's reading; to confirm on hardware).
`execute()` plays all sequenced channels together through `LabWorld.run` and stores the
measured points.

Instrument time (physics.md §6): pattern building and channel setup are host-side (the library
applies setup at execute), so they are free; `execute` + `waitUntilCompleted` cost one
`round_trip` plus the waveform; every other call that reaches the instrument (initialize,
connect, disconnect, abort, getStatus, getMeasureValueSize, getMeasureValues, closeSession) costs
one `gpib_cmd`; openSession costs `session_open`. Whether `clear()` resets channel setup is to
confirm on hardware; here it does not (the driver re-applies setup anyway).
"""

from __future__ import annotations

import math

from instruments import wgfmu as W
from simulator.emulators.world import Segment

DT_MAX = 10995.11627775
INTERVAL_MAX = 1.34217728
AVERAGE_MAX = 0.020971


def _grid(t: float) -> float:
    return round(t / W.GRID) * W.GRID


class EmulatedWgfmuLibrary:
    def __init__(self, world=None, channels=(101, 102), address: str = "GPIB0::17::INSTR",
                 smu_inputs: dict[int, str] | None = None):
        self.world = world
        self.channels = tuple(channels)
        self.smu_inputs = dict(smu_inputs or {})
        self.address = address
        self.session = False
        self.errors: list[str] = []
        #: one-shot fault hook: name of a function that returns COMMUNICATION_ERROR next call
        self.fail_next: str | None = None
        self.patterns: dict[str, dict] = {}
        self.sequences: dict[int, list[tuple[str, int]]] = {}
        self._defaults()
        self.results: dict[int, list[tuple[float, float]]] | None = None
        self.results_valid = False
        self.status = W.STATUS_IDLE
        self.executions = 0
        self.exchanges = 0  # calls that reached the instrument (each charged gpib_cmd)

    def _defaults(self) -> None:
        self.mode = {c: W.OPERATION_MODE_SMU for c in self.channels}
        # channel setup is host-side until `update` or `execute` sends it (instruments.md §3.2):
        # a mode set and never applied leaves the RSU as it was
        self.pending_mode: dict[int, int] = {}
        self.frange = {c: W.FORCE_VOLTAGE_RANGE_AUTO for c in self.channels}
        self.mmode = {c: W.MEASURE_MODE_VOLTAGE for c in self.channels}
        self.irange = {c: W.MEASURE_CURRENT_RANGE_10MA for c in self.channels}
        self.connected: set[int] = set()
        self._publish()

    def output_levels(self) -> dict[int, float]:
        """Idle output of each channel [V]; NaN = disconnected."""
        return {c: (0.0 if c in self.connected else math.nan) for c in self.channels}

    def _publish(self) -> None:
        if self.world is not None:
            self.world.settle_dc()
            for c, v in self.output_levels().items():
                self.world.static[f"wgfmu{c}"] = v
                if (c in self.connected and self.mode[c] == W.OPERATION_MODE_SMU
                        and c in self.smu_inputs):
                    self.world.links[f"wgfmu{c}"] = self.smu_inputs[c]
                else:
                    self.world.links.pop(f"wgfmu{c}", None)

    # -- error plumbing ------------------------------------------------------------------------
    def _e(self, code: int, text: str) -> int:
        self.errors.append(f"{W.ERROR_NAMES[code]}: {text}")
        return code

    def _fault(self, fn: str) -> bool:
        if self.fail_next == fn:
            self.fail_next = None
            return True
        return False

    def _bus(self) -> None:
        """One exchange with the instrument."""
        self.exchanges += 1
        if self.world is not None:
            self.world.clock.advance(self.world.latency.gpib_cmd, "command")

    def _need_session(self, fn: str) -> int:
        if self._fault(fn):
            return self._e(W.COMMUNICATION_ERROR, f"{fn}: communication lost")
        if not self.session:
            return self._e(W.CONTEXT_ERROR, f"{fn}: no session open")
        return W.NO_ERROR

    def _chan(self, fn: str, ch: int) -> int:
        rc = self._need_session(fn)
        if rc:
            return rc
        if ch not in self.channels:
            return self._e(W.CHANNEL_NOT_FOUND_ERROR, f"{fn}: channel {ch} not found")
        return W.NO_ERROR

    def _changed(self) -> None:
        if self.results is not None:
            self.results_valid = False

    def getErrorSize(self):
        return W.NO_ERROR, (len(self.errors[0]) if self.errors else 0)

    def getError(self):
        return W.NO_ERROR, (self.errors.pop(0) if self.errors else "")

    # -- session -------------------------------------------------------------------------------
    def openSession(self, address: str) -> int:
        if self.session:
            return self._e(W.CONTEXT_ERROR, "openSession: a session is already open")
        if address != self.address:
            return self._e(W.COMMUNICATION_ERROR, f"openSession: no WGFMU at {address}")
        self.session = True
        if self.world is not None:
            self.world.clock.advance(self.world.latency.session_open, "session")
        return W.NO_ERROR

    def closeSession(self) -> int:
        if not self.session:
            return self._e(W.CONTEXT_ERROR, "closeSession: no session open")
        self.session = False
        self._bus()
        return W.NO_ERROR

    def setTimeout(self, seconds: float) -> int:
        if seconds <= 0:
            return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR, "setTimeout: must be > 0")
        return W.NO_ERROR

    def initialize(self) -> int:
        rc = self._need_session("initialize")
        if rc:
            return rc
        self._bus()
        self._defaults()
        self._changed()
        return W.NO_ERROR

    def abort(self) -> int:
        if self.session:
            self._bus()
        if self.status == W.STATUS_RUNNING:
            self.status = W.STATUS_ABORTED
        return W.NO_ERROR

    # -- patterns ------------------------------------------------------------------------------
    def clear(self) -> int:
        self.patterns.clear()
        self.sequences.clear()
        self.errors.clear()
        self._changed()
        return W.NO_ERROR

    def createPattern(self, pattern: str, init_v: float) -> int:
        if not pattern or len(pattern) > 255:
            return self._e(W.ILLEGAL_STRING_ERROR, "createPattern: bad name")
        if pattern in self.patterns:
            return self._e(W.PATTERN_ALREADY_EXISTS_ERROR, f"Pattern {pattern} already exists.")
        if not math.isfinite(init_v) or abs(init_v) > 10:
            return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR, f"createPattern: {init_v} V")
        self.patterns[pattern] = {"v0": float(init_v), "vec": [], "events": {}}
        self._changed()
        return W.NO_ERROR

    def _duration(self, p: dict) -> float:
        return sum(dt for dt, _ in p["vec"])

    def addVector(self, pattern: str, dtime: float, voltage: float) -> int:
        p = self.patterns.get(pattern)
        if p is None:
            return self._e(W.PATTERN_NOT_FOUND_ERROR, f"addVector: pattern {pattern}")
        dt = _grid(dtime)
        if not (W.GRID - 1e-15 <= dt <= DT_MAX) or not math.isfinite(voltage) \
                or abs(voltage) > 10:
            return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR,
                           f"addVector: dt {dtime!r} s / {voltage!r} V; vector not added")
        p["vec"].append((dt, float(voltage)))
        self._changed()
        return W.NO_ERROR

    def setMeasureEvent(self, pattern: str, event: str, time: float, points: int,
                        interval: float, average: float, rdata: int) -> int:
        p = self.patterns.get(pattern)
        if p is None:
            return self._e(W.PATTERN_NOT_FOUND_ERROR, f"setMeasureEvent: pattern {pattern}")
        if event in p["events"]:
            return self._e(W.PATTERN_ALREADY_EXISTS_ERROR, f"event {event} already exists")
        iv, av, t = _grid(interval), _grid(average), _grid(time)
        bad = (points < 1 or not W.GRID - 1e-15 <= iv <= INTERVAL_MAX
               or not (av == 0 or W.GRID - 1e-15 <= av <= AVERAGE_MAX) or av > iv + 1e-15
               or t < 0 or rdata not in (W.MEASURE_EVENT_DATA_AVERAGED,
                                         W.MEASURE_EVENT_DATA_RAW))
        end = t + iv * (points - 1) + (av if av > 0 else W.GRID)
        if bad or end > self._duration(p) + 1e-12:
            return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR,
                           f"setMeasureEvent {event}: timing outside limits or pattern")
        p["events"][event] = (t, int(points), iv, av, rdata)
        self._changed()
        return W.NO_ERROR

    def addSequence(self, channel: int, pattern: str, count: float) -> int:
        if channel not in self.channels:
            return self._e(W.CHANNEL_NOT_FOUND_ERROR, f"addSequence: channel {channel}")
        if pattern not in self.patterns:
            return self._e(W.PATTERN_NOT_FOUND_ERROR, f"addSequence: pattern {pattern}")
        if not 1 <= count <= 1e12:
            return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR, f"addSequence: count {count}")
        self.sequences.setdefault(channel, []).append((pattern, int(count)))
        self._changed()
        return W.NO_ERROR

    # -- channel setup -------------------------------------------------------------------------
    def _setter(self, fn, table, ch, value, allowed) -> int:
        rc = self._chan(fn, ch)
        if rc:
            return rc
        if value not in allowed:
            return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR, f"{fn}: {value}")
        table[ch] = value
        self._changed()
        return W.NO_ERROR

    def setOperationMode(self, channel: int, mode: int) -> int:
        return self._setter("setOperationMode", self.pending_mode, channel, mode,
                            range(2000, 2004))

    def _apply_setup(self) -> None:
        if self.pending_mode:
            self.mode.update(self.pending_mode)
            self.pending_mode.clear()
            self._publish()

    def update(self) -> int:
        """Send the channels' setup to the instrument (no sequence runs)."""
        rc = self._need_session("update")
        if rc:
            return rc
        self._bus()
        self._apply_setup()
        return W.NO_ERROR

    def setForceVoltageRange(self, channel: int, vrange: int) -> int:
        return self._setter("setForceVoltageRange", self.frange, channel, vrange,
                            range(3000, 3005))

    def setMeasureMode(self, channel: int, mode: int) -> int:
        return self._setter("setMeasureMode", self.mmode, channel, mode, (4000, 4001))

    def setMeasureCurrentRange(self, channel: int, irange: int) -> int:
        return self._setter("setMeasureCurrentRange", self.irange, channel, irange,
                            range(6001, 6006))

    def connect(self, channel: int) -> int:
        rc = self._chan("connect", channel)
        if rc:
            return rc
        self._bus()
        self.connected.add(channel)
        self._publish()
        return W.NO_ERROR

    def disconnect(self, channel: int) -> int:
        rc = self._chan("disconnect", channel)
        if rc:
            return rc
        self._bus()
        self.connected.discard(channel)
        self._publish()
        return W.NO_ERROR

    # -- run -----------------------------------------------------------------------------------
    def _waveform(self, ch: int) -> tuple[list[tuple[float, float, float]], list]:
        """Vectors of channel ch as (t_start, dt, v_start->v_end) and its measure points."""
        vec, meas, t = [], [], 0.0
        for name, count in self.sequences.get(ch, []):
            p = self.patterns[name]
            for _ in range(count):
                start = t
                v = p["v0"]
                for dt, v1 in p["vec"]:
                    vec.append((t, dt, v, v1))
                    t += dt
                    v = v1
                for (te, n, iv, av, _rd) in p["events"].values():
                    for k in range(n):
                        a = start + te + k * iv
                        meas.append((a, a + max(av, W.GRID)))
        return vec, meas

    def execute(self) -> int:
        rc = self._need_session("execute")
        if rc:
            return rc
        if not self.sequences:
            return self._e(W.CONTEXT_ERROR, "execute: no sequence")
        self._apply_setup()
        for ch in self.sequences:
            if self.mode[ch] not in (W.OPERATION_MODE_FASTIV, W.OPERATION_MODE_PG):
                return self._e(W.CONTEXT_ERROR, f"execute: channel {ch} not in FASTIV/PG mode")
            if ch not in self.connected:
                return self._e(W.CONTEXT_ERROR, f"execute: channel {ch} not connected")
            lim = 3.0 if self.frange[ch] == W.FORCE_VOLTAGE_RANGE_3V else 10.0
            for name, _ in self.sequences[ch]:
                p = self.patterns[name]
                if any(abs(v) > lim + 1e-12 for v in [p["v0"]] + [v for _, v in p["vec"]]):
                    return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR,
                                   f"execute: pattern {name} exceeds the force range")
        waves = {ch: self._waveform(ch) for ch in self.sequences}
        # common breakpoints of every channel's vectors, measure windows as their own pieces
        cuts = {0.0}
        for vec, meas in waves.values():
            for t, dt, _, _ in vec:
                cuts.update((round(t, 12), round(t + dt, 12)))
            for a, b in meas:
                cuts.update((round(a, 12), round(b, 12)))
        cuts_l = sorted(cuts)
        mwin = {ch: sorted(m) for ch, (_, m) in waves.items()}

        def level(ch: int, t: float) -> float:
            for t0, dt, v0, v1 in waves[ch][0]:
                if t0 - 1e-13 <= t <= t0 + dt + 1e-13:
                    if t >= t0 + dt - 1e-13:  # exact end points: no rounding residue
                        return v1
                    if t <= t0 + 1e-13:
                        return v0
                    return v0 + (v1 - v0) * ((t - t0) / dt)
            vec = waves[ch][0]
            return vec[-1][3] if vec else 0.0

        segs = []
        for a, b in zip(cuts_l[:-1], cuts_l[1:], strict=True):
            if b - a < 1e-13:
                continue
            v0 = {f"wgfmu{ch}": level(ch, a) for ch in waves}
            v1 = {f"wgfmu{ch}": level(ch, b) for ch in waves}
            ms = [(f"wgfmu{ch}", 0.0, b - a) for ch, wins in mwin.items()
                  for (wa, wb) in wins if abs(wa - a) < 1e-13 and abs(wb - b) < 1e-13]
            segs.append(Segment(b - a, v0, v1, ms))
        self.results = {ch: [] for ch in self.channels}
        self.executions += 1
        self.status = W.STATUS_COMPLETED
        self.results_valid = True
        if self.world is None:
            return W.NO_ERROR
        self.world.clock.advance(self.world.latency.round_trip, "round_trip")
        res = self.world.run(segs)
        for ch in self.channels:
            got = res.get(f"wgfmu{ch}", [])
            imax = W.CURRENT_RANGE_AMPS[self.irange[ch]]
            for t, v, i in got:
                val = max(-imax, min(imax, i)) if self.mmode[ch] == W.MEASURE_MODE_CURRENT else v
                self.results[ch].append((t, val))
        return W.NO_ERROR

    def waitUntilCompleted(self) -> int:
        return self._need_session("waitUntilCompleted")

    def getStatus(self):
        rc = self._need_session("getStatus")
        if not rc:
            self._bus()
        return rc, self.status, 0.0, 0.0

    def _result(self, fn: str, ch: int) -> int:
        rc = self._chan(fn, ch)
        if rc:
            return rc
        if fn != "getInterpolatedForceValue":  # computed by the library from the pattern
            self._bus()
        if self.results is None:
            return self._e(W.RESULT_NOT_READY_ERROR, f"{fn}: nothing executed")
        if not self.results_valid:
            return self._e(W.RESULT_OUT_OF_DATE_ERROR, f"{fn}: setup changed after execute")
        return W.NO_ERROR

    def getMeasureValueSize(self, channel: int):
        rc = self._result("getMeasureValueSize", channel)
        if rc:
            return rc, 0, 0
        n = len(self.results[channel])
        return W.NO_ERROR, n, n

    def getMeasureValues(self, channel: int, offset: int, size: int):
        rc = self._result("getMeasureValues", channel)
        if rc:
            return rc, [], []
        pts = self.results[channel]
        if offset < 0 or size < 1 or offset + size > len(pts):
            return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR, "getMeasureValues: range"), [], []
        sel = pts[offset:offset + size]
        return W.NO_ERROR, [t for t, _ in sel], [v for _, v in sel]

    def getInterpolatedForceValue(self, channel: int, time: float):
        rc = self._result("getInterpolatedForceValue", channel)
        if rc:
            return rc, 0.0
        t = 0.0
        for name, count in self.sequences.get(channel, []):
            p = self.patterns[name]
            for _ in range(count):
                v = p["v0"]
                for dt, v1 in p["vec"]:
                    if t <= time <= t + dt:
                        return W.NO_ERROR, v + (v1 - v) * (time - t) / dt
                    t += dt
                    v = v1
        return self._e(W.PARAMETER_OUT_OF_RANGE_ERROR, "time outside the pattern"), 0.0
