"""Keysight B1530A WGFMU through its instrument library (instruments.md §3).

The WGFMU is programmed only through Keysight's C library (`WGFMU_*` functions, 0 = OK). Here
that API is a `WgfmuLibrary` protocol whose methods carry the C names without the `WGFMU_`
prefix; out-parameters come back as a tuple after the return code. Two backends implement it:
`instruments.wgfmu_ctypes.CtypesWgfmuLibrary` (Keysight's library, on a lab PC) and the
simulator's emulated library. `Wgfmu` is the driver: checked, Pythonic methods that raise
InstrumentError with the library's own error text, and refuse any level outside the station's
safety limits before it reaches the library. Channels are objects, `w.channel(101)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from instruments.errors import InstrumentError
from instruments.limits import SafetyLimits

# -- constants (wgfmu.h) ---------------------------------------------------------------------
NO_ERROR = 0
PARAMETER_OUT_OF_RANGE_ERROR = -1
ILLEGAL_STRING_ERROR = -2
CONTEXT_ERROR = -3
FUNCTION_NOT_SUPPORTED_ERROR = -4
COMMUNICATION_ERROR = -5
FW_ERROR = -6
LIBRARY_ERROR = -7
ERROR = -8
CHANNEL_NOT_FOUND_ERROR = -9
PATTERN_NOT_FOUND_ERROR = -10
EVENT_NOT_FOUND_ERROR = -11
PATTERN_ALREADY_EXISTS_ERROR = -12
SEQUENCER_NOT_RUNNING_ERROR = -13
RESULT_NOT_READY_ERROR = -14
RESULT_OUT_OF_DATE_ERROR = -15

ERROR_NAMES = {
    0: "NO_ERROR", -1: "PARAMETER_OUT_OF_RANGE", -2: "ILLEGAL_STRING", -3: "CONTEXT",
    -4: "FUNCTION_NOT_SUPPORTED", -5: "COMMUNICATION", -6: "FW", -7: "LIBRARY", -8: "ERROR",
    -9: "CHANNEL_NOT_FOUND", -10: "PATTERN_NOT_FOUND", -11: "EVENT_NOT_FOUND",
    -12: "PATTERN_ALREADY_EXISTS", -13: "SEQUENCER_NOT_RUNNING", -14: "RESULT_NOT_READY",
    -15: "RESULT_OUT_OF_DATE",
}

OPERATION_MODE_DC = 2000
OPERATION_MODE_FASTIV = 2001
OPERATION_MODE_PG = 2002
OPERATION_MODE_SMU = 2003

FORCE_VOLTAGE_RANGE_AUTO = 3000
FORCE_VOLTAGE_RANGE_3V = 3001
FORCE_VOLTAGE_RANGE_5V = 3002
FORCE_VOLTAGE_RANGE_10V_NEGATIVE = 3003
FORCE_VOLTAGE_RANGE_10V_POSITIVE = 3004

MEASURE_MODE_VOLTAGE = 4000
MEASURE_MODE_CURRENT = 4001

MEASURE_VOLTAGE_RANGE_5V = 5001
MEASURE_VOLTAGE_RANGE_10V = 5002

MEASURE_CURRENT_RANGE_1UA = 6001
MEASURE_CURRENT_RANGE_10UA = 6002
MEASURE_CURRENT_RANGE_100UA = 6003
MEASURE_CURRENT_RANGE_1MA = 6004
MEASURE_CURRENT_RANGE_10MA = 6005
CURRENT_RANGE_AMPS = {6001: 1e-6, 6002: 10e-6, 6003: 100e-6, 6004: 1e-3, 6005: 10e-3}

MEASURE_EVENT_DATA_AVERAGED = 12000
MEASURE_EVENT_DATA_RAW = 12001

STATUS_COMPLETED = 10000
STATUS_DONE = 10001
STATUS_RUNNING = 10002
STATUS_ABORT_COMPLETED = 10003
STATUS_ABORTED = 10004
STATUS_RUNNING_ILLEGAL = 10005
STATUS_IDLE = 10006

#: vector and measurement timing grid [s]
GRID = 10e-9
#: settling of the 100 uA range after a level change [s]
SETTLE_100UA = 820e-9


class WgfmuLibrary(Protocol):
    """The WGFMU instrument library, one method per C function used (prefix dropped).

    Every method returns the library's int status first; out-parameters follow in a tuple.
    """

    def openSession(self, address: str) -> int: ...
    def closeSession(self) -> int: ...
    def initialize(self) -> int: ...
    def setTimeout(self, seconds: float) -> int: ...
    def getErrorSize(self) -> tuple[int, int]: ...
    def getError(self) -> tuple[int, str]: ...
    def clear(self) -> int: ...
    def createPattern(self, pattern: str, init_v: float) -> int: ...
    def addVector(self, pattern: str, dtime: float, voltage: float) -> int: ...
    def setMeasureEvent(self, pattern: str, event: str, time: float, points: int,
                        interval: float, average: float, rdata: int) -> int: ...
    def addSequence(self, channel: int, pattern: str, count: float) -> int: ...
    def setOperationMode(self, channel: int, mode: int) -> int: ...
    def setForceVoltageRange(self, channel: int, vrange: int) -> int: ...
    def setMeasureMode(self, channel: int, mode: int) -> int: ...
    def setMeasureCurrentRange(self, channel: int, irange: int) -> int: ...
    def connect(self, channel: int) -> int: ...
    def disconnect(self, channel: int) -> int: ...
    def update(self) -> int: ...
    def execute(self) -> int: ...
    def abort(self) -> int: ...
    def waitUntilCompleted(self) -> int: ...
    def getStatus(self) -> tuple[int, int, float, float]: ...
    def getMeasureValueSize(self, channel: int) -> tuple[int, int, int]: ...
    def getMeasureValues(self, channel: int, offset: int,
                         size: int) -> tuple[int, list[float], list[float]]: ...
    def getInterpolatedForceValue(self, channel: int, time: float) -> tuple[int, float]: ...


def on_grid(t: float) -> float:
    return round(t / GRID) * GRID


class WgfmuChannel:
    """Channel `number` of a WGFMU (e.g. 101, 102) and the RSU on its cable."""

    def __init__(self, w: Wgfmu, number: int):
        self.w, self.number = w, int(number)

    def __repr__(self) -> str:
        return f"{self.w.name} channel {self.number}"

    def setup(self, *, mode: int = OPERATION_MODE_FASTIV,
              force_range: int | None = FORCE_VOLTAGE_RANGE_3V,
              measure_current_range: int | None = None) -> None:
        """Operation mode (FASTIV for waveforms; SMU: the RSU passes the B1500 SMU cabled to
        it through), force range and, to measure current, the current range."""
        w, ch = self.w, self.number
        w._call("setOperationMode", ch, mode)
        if force_range is not None:
            w._call("setForceVoltageRange", ch, force_range)
        if measure_current_range is not None:
            w._call("setMeasureMode", ch, MEASURE_MODE_CURRENT)
            w._call("setMeasureCurrentRange", ch, measure_current_range)

    def connect(self) -> None:
        """Output relay and RSU on; nothing is sent when the channel already is connected
        (connections survive `Wgfmu.clear()`, which drops patterns, sequences and errors only)."""
        if self.number in self.w._connected:
            return
        self.w._call("connect", self.number)
        self.w._connected.add(self.number)

    def disconnect(self) -> None:
        self.w._call("disconnect", self.number)
        self.w._connected.discard(self.number)

    def add_sequence(self, pattern: str, count: int = 1) -> None:
        self.w._call("addSequence", self.number, pattern, float(count))

    def measured(self, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Measured points of this channel as (t [s], value) arrays: all of them, or the first
        `count` in one call when the caller knows how many its pattern takes (the library
        refuses a count beyond what was measured)."""
        w = self.w
        if count is not None:
            _, t, v = w._call("getMeasureValues", self.number, 0, int(count))
            return np.asarray(t, dtype=float), np.asarray(v, dtype=float)
        _, n, _total = w._call("getMeasureValueSize", self.number)
        if n == 0:
            return np.zeros(0), np.zeros(0)
        _, t, v = w._call("getMeasureValues", self.number, 0, n)
        return np.asarray(t, dtype=float), np.asarray(v, dtype=float)

    def force_value(self, t: float) -> float:
        return float(self.w._call("getInterpolatedForceValue", self.number, float(t))[1])


class Wgfmu:
    """Checked WGFMU API. Calls raise InstrumentError carrying the library's error text."""

    kind = "WGFMU"

    def __init__(self, library: WgfmuLibrary, *, name: str | None = None,
                 limits: SafetyLimits | None = None):
        self.lib = library
        self.name = name or self.kind
        self.limits = limits or SafetyLimits()
        self._open = False
        self._connected: set[int] = set()
        self._channels: dict[int, WgfmuChannel] = {}
        self.calls = 0  # library calls made, for the benches

    # -- plumbing ------------------------------------------------------------------------------
    def _call(self, fn: str, *args):
        self.calls += 1
        try:
            out = getattr(self.lib, fn)(*args)
        except OSError as e:  # ctypes backend: the DLL itself failed
            raise InstrumentError(f"library call failed: {e}", instrument=self.name,
                                  command=self._sig(fn, args)) from e
        rc = out[0] if isinstance(out, tuple) else out
        if rc != NO_ERROR:
            raise InstrumentError(f"WGFMU {ERROR_NAMES.get(rc, rc)} ({rc})",
                                  instrument=self.name, command=self._sig(fn, args),
                                  reply=self._error_text())
        return out

    @staticmethod
    def _sig(fn: str, args) -> str:
        return f"WGFMU_{fn}({', '.join(repr(a) for a in args)})"

    def _error_text(self) -> str:
        try:
            rc, size = self.lib.getErrorSize()
            if rc != NO_ERROR or size <= 0:
                return ""
            rc, text = self.lib.getError()
            return text.strip() if rc == NO_ERROR else ""
        except Exception:  # the error report must not hide the error
            return ""

    # -- session -------------------------------------------------------------------------------
    def open(self, address: str, timeout: float = 10.0) -> None:
        self._call("openSession", address)
        self._open = True
        self._call("setTimeout", float(timeout))
        self._call("initialize")

    def initialize(self) -> None:
        self._call("initialize")
        self._connected.clear()

    # -- channels ------------------------------------------------------------------------------
    def channel(self, number: int) -> WgfmuChannel:
        ch = self._channels.get(number)
        if ch is None:
            ch = self._channels[number] = WgfmuChannel(self, number)
        return ch

    def forget(self) -> None:
        self._connected.clear()

    def snapshot(self) -> dict:
        # the library offers no identity query in the calls used here
        return {"kind": self.kind, "name": self.name, "library": type(self.lib).__name__,
                "session_open": self._open}

    # -- patterns (host side) ------------------------------------------------------------------
    def clear(self) -> None:
        self._call("clear")

    def create_pattern(self, name: str, v0: float) -> None:
        self.limits.check_level(v0, where=f"{self.name} pattern {name}")
        self._call("createPattern", name, float(v0))

    def add_vectors(self, name: str, vectors: Sequence[tuple[float, float]]) -> None:
        """(dt, v) vectors; every level is checked before the first one is added."""
        for _, v in vectors:
            self.limits.check_level(v, where=f"{self.name} pattern {name}")
        for dt, v in vectors:
            self._call("addVector", name, float(dt), float(v))

    def set_measure_event(self, pattern: str, event: str, time: float, points: int,
                          interval: float, average: float,
                          rdata: int = MEASURE_EVENT_DATA_AVERAGED) -> None:
        self._call("setMeasureEvent", pattern, event, float(time), int(points), float(interval),
                   float(average), int(rdata))


    # -- run -----------------------------------------------------------------------------------
    def update(self) -> None:
        """Send the channels' setup (operation mode, ranges) to the instrument without running
        a sequence: the library holds it host-side until `update` or `execute`."""
        self._call("update")

    def execute(self) -> None:
        self._call("execute")

    def wait(self) -> None:
        self._call("waitUntilCompleted")

    def status(self) -> int:
        return self._call("getStatus")[1]

    # -- safety --------------------------------------------------------------------------------
    def make_safe(self) -> None:
        """Abort, then initialize (all channels to 0 V and disconnected). Both are attempted."""
        if not self._open:
            return
        first: BaseException | None = None
        for fn in ("abort", "initialize"):
            try:
                self._call(fn)
            except InstrumentError as e:
                first = first or e
        self._connected.clear()
        if first is not None:
            raise first

    def close(self) -> None:
        if not self._open:
            return
        try:
            self.make_safe()
        finally:
            self._open = False
            try:
                self.lib.closeSession()
            except Exception:
                pass

    def __enter__(self) -> Wgfmu:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception:
            pass
