"""The rig seam: everything a protocol may ask of a station, in SI units.

Protocols are written against `CrossbarRig` and nothing behind it. Concrete rigs implement the
underscored methods: `instruments.rigs` (PmuRig, WgfmuRig: real drivers, or the same drivers
over emulated instruments on a simulated station) and `simulator.direct_rig` (SimulatedRig:
straight on the physics). The public methods check every request against the station's safety
limits and bounds *before* a concrete rig sees it, so no protocol can reach an instrument
outside the envelope, whatever rig it runs on. Any exception escaping a `with rig:` block leaves
the rig in its safe state.

Behind every rig is a `Lab`: where instrument time comes from, how time passes, and the state
that must be committed with the data for a resumed run to continue as if it had never stopped.
`RealLab` is a probe station (real time, `time.sleep`, nothing to save: the devices keep their
own state); the simulator's `ChipLab` is a virtual chip (virtual clock, chip state incl. RNGs).

This module lives in `protocols` so that protocols import nothing but `database` and their own
package; `instruments` and `simulator` import this module (and only this one) from `protocols`
to implement it (docs/architecture.md).

Every public method first acts on a Ctrl-C recorded but lost in a finaliser
(`protocols.interrupts`), and `safe_state()` records what it reached in `rig.safe`, so the
CLI only says "instruments left in their safe state" when that was confirmed.

DC (`dc`, `DcRequest`): a line-level request: force given voltages on some lines (one value per
point of a sweep), hold every other line grounded or floating, measure the current of some
forced lines, with a current compliance. The seam checks every level and the compliance against
the station limits, then plans how the rig's source-measure units cover the request
(`dc_capacity`: how many SMUs can hold distinct levels at once, whether lines can be tied to
ground): each sensed line needs an SMU of its own, lines at one level that are not sensed share
one, grounded lines go to ground. When more lines are to be sensed than that allows, the
request is split into passes that each sense a share and repeat every point (time
multiplexing; `DcResult.passes` says how many). Concrete rigs implement `_dc_pass`.

The analog read-out (`column_currents`: word lines driven, bit-line currents measured) is one
DC request of that path: the rows forced at the pattern's levels, the sensed bit lines forced
at 0 V and measured, every other line grounded. `channels` (how many rows and columns one call
may take) follows from `dc_capacity` so that every call is one pass; callers time-multiplex
larger tiles themselves (`protocols.inference.measure_tile`), so the grouping is theirs to say
and record. A rig whose DC path is not its SMUs (the simulator's array tester) overrides
`channels` and `_column_currents`.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from protocols import interrupts
from protocols.errors import ComplianceError, NotAvailableError, ProtocolError

__all__ = ["Channels", "ComplianceError", "CrossbarRig", "Lab", "Limits", "NotAvailableError",
           "ReadSettings", "RealLab", "SafeOutcome", "recording_safe_states"]

log = logging.getLogger("xbarlab.rig")


@dataclass(frozen=True)
class ReadSettings:
    """How a verify read is taken."""

    volts: float = 0.2
    seconds: float = 10e-6
    #: conductance at which the current range saturates (100 uA at 0.2 V -> 500 uS);
    #: reads are clipped to it and the protocol flags them.
    ceiling_S: float = 500e-6
    #: smallest conductance a read resolves. The 100 uA range averages to about 5 nA rms over
    #: a 10 us read (instruments.md §3.4: 47 nA rms per 130 ns window), 25 nS at 0.2 V; a
    #: write-verify band (1 % of the target by default) narrower than that noise is met by
    #: chance, not by the device: 25 nS / 1 % = 2.5 uS.
    floor_S: float = 2.5e-6


@dataclass
class SafeOutcome:
    """What the last `safe_state()` of a rig reached: `state` is "unused" (nothing done yet),
    "in use" (operated since the last safe state), "safe" (confirmed) or "unsafe" (`detail`
    says what could not be made safe)."""

    rig: str
    state: str = "unused"
    detail: str = ""

    def describe(self) -> str:
        if self.state == "unsafe":
            return f"{self.rig}: {self.detail}"
        return f"{self.rig}: {self.state}, not made safe afterwards"


#: outcomes of the rigs built inside `recording_safe_states()` (None: not recording)
_recorded: list[SafeOutcome] | None = None


@contextmanager
def recording_safe_states() -> Iterator[list[SafeOutcome]]:
    """Collect the SafeOutcome of every rig built inside the block (the CLI, per command)."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous


@dataclass(frozen=True)
class Channels:
    """What a rig's analog read-out (`CrossbarRig.column_currents`) can take in one call: how
    many word lines it can drive with independent voltages (`sources`), how many bit lines it
    can measure at once (`meters`) and, where both come from one pool of SMUs, how many lines
    of both kinds together (`lines`; None: no joint limit). The caller chooses the split of a
    shared pool per call (`protocols.inference.read_out_split`)."""

    sources: int
    meters: int
    lines: int | None = None

    def __post_init__(self) -> None:
        if self.sources < 1 or self.meters < 1:
            raise ValueError(f"a DC path needs at least one source and one meter, got {self}")
        if self.lines is not None and self.lines < 2:
            raise ValueError(f"a DC path needs at least two lines per call, got {self}")


class Limits(Protocol):
    """The station envelope a rig checks requests against (`instruments.limits.SafetyLimits`).
    Each check raises (a SafetyLimitError) when the request is outside it."""

    def check_pulse(self, volts: float, seconds: float, *, where: str = "") -> None: ...

    def check_bias(self, volts: float, *, where: str = "") -> None: ...

    def check_level(self, volts: float, *, where: str = "") -> None: ...

    def check_compliance(self, amps: float, *, where: str = "") -> None: ...

    #: the largest current compliance a source may run with [A]
    i_compliance: float


#: a crossbar line: ("row", i) (word line) or ("col", j) (bit line), 0-based
Line = tuple[str, int]


@dataclass(frozen=True)
class DcCapacity:
    """What a rig's DC path can do at once.

    `sources`: SMUs that can hold distinct levels at the same time; `ground`: lines can also be
    tied to ground (a grounded matrix row) without using an SMU; `fixed`: every line is wired to
    an SMU of its own (a probe card), so any request fits in one pass."""

    sources: int
    ground: bool
    fixed: bool = False


@dataclass(frozen=True)
class DcRequest:
    """Force `levels` (line -> volts at each point; all of one length) on lines, hold every
    other line at 0 V (`others="ground"`) or leave it open (`"float"`), and measure the current
    of the `sense` lines (each one a forced line) at every point.

    Each point's levels are held `hold` seconds, then measured with `nplc` power-line cycles of
    integration. `compliance` limits the current of every sensing SMU [A], `source_compliance`
    that of the SMUs that only hold levels (None: the same). `i_range`: the lowest current range
    [A] (None: full auto); with `fixed_range` the current range is fixed there, and a larger
    current overflows."""

    levels: Mapping[Line, Sequence[float]]
    sense: Sequence[Line]
    compliance: float
    others: str = "ground"
    source_compliance: float | None = None
    hold: float = 1e-3
    nplc: float = 1.0
    i_range: float | None = None
    fixed_range: bool = False

    @property
    def points(self) -> int:
        return len(next(iter(self.levels.values())))


@dataclass
class DcGroup:
    """Lines a concrete rig drives from one source for a pass: one sensed line on its own SMU,
    lines sharing a level on one SMU, or (`ground`) lines tied to ground."""

    lines: tuple[Line, ...]
    volts: np.ndarray       # level at each point [V]
    sensed: bool = False
    ground: bool = False


@dataclass
class DcMeasured:
    """What a concrete rig measured for one sensed group, one value per point."""

    volts: np.ndarray       # the SMU's output voltage [V] (below the level when in compliance)
    current: np.ndarray     # [A], positive into the array
    compliance: np.ndarray  # bool: the SMU was at its compliance
    overflow: np.ndarray    # bool: over the current range (current is NaN)
    t: np.ndarray           # instrument time at the measurement [s]
    #: bool: another SMU was at its compliance (its lines were not at their level)
    other_compliance: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class DcResult:
    """Per point (rows) and sensed line (columns, in `lines` order)."""

    lines: tuple[Line, ...]
    volts: np.ndarray
    current: np.ndarray
    compliance: np.ndarray
    overflow: np.ndarray
    t: np.ndarray
    other_compliance: np.ndarray
    passes: int = 1
    notes: list[str] = field(default_factory=list)


def plan_dc(request: DcRequest, shape: tuple[int, int],
            capacity: DcCapacity) -> list[list[DcGroup]]:
    """The passes (each a list of groups) that cover `request` with `capacity`; ProtocolError
    when even one sensed line per pass needs more SMUs than the rig has."""
    rows, cols = shape
    forced = {line: np.asarray(v, dtype=float) for line, v in request.levels.items()}
    if request.others == "ground":
        zero = np.zeros(request.points)
        for line in [("row", i) for i in range(rows)] + [("col", j) for j in range(cols)]:
            forced.setdefault(line, zero)

    def groups(sensed: Sequence[Line]) -> list[DcGroup]:
        out = [DcGroup((line,), forced[line], sensed=True) for line in sensed]
        shared: dict[bytes, list[Line]] = {}
        for line, v in forced.items():
            if line not in sensed:
                shared.setdefault(v.tobytes(), []).append(line)
        for lines in shared.values():
            v = forced[lines[0]]
            out.append(DcGroup(tuple(lines), v, ground=capacity.ground and not v.any()))
        return out

    def smus(gs: list[DcGroup]) -> int:
        return sum(not g.ground for g in gs)

    sense = list(request.sense)
    if capacity.fixed:
        return [groups(sense)]
    passes, todo = [], sense
    while todo:
        chosen: list[Line] = []
        for line in todo:
            if smus(groups(chosen + [line])) <= capacity.sources:
                chosen.append(line)
        if not chosen:
            need = smus(groups(todo[:1]))
            raise ProtocolError(f"this DC request needs {need} SMUs at once (distinct levels "
                                f"and a sensed line); the rig has {capacity.sources}")
        passes.append(groups(chosen))
        todo = [line for line in todo if line not in chosen]
    return passes


class Lab(abc.ABC):
    """What a rig acts on, as far as a protocol cares: instrument time and the saved state."""

    #: True when `save_state` captures everything behind the rig, so a run resumed from it
    #: continues bit-identically (a simulated chip); False on hardware
    restorable: bool = False

    @abc.abstractmethod
    def now(self) -> float:
        """Instrument time spent so far [s]."""

    @abc.abstractmethod
    def wait(self, seconds: float) -> None:
        """Let `seconds` (> 0) of instrument time pass with every output idle."""

    def save_state(self) -> dict | None:
        """The state to commit with a unit of data (JSON-able values and numpy arrays), or
        None when there is nothing to save."""
        return None

    def breakdown(self) -> dict[str, float] | None:
        """Instrument time spent so far by category [s] ("round_trip", "pulse", "read",
        "dc_settle"...), or None when the lab does not keep one (real time)."""
        return None

    def restore_state(self, state: dict) -> None:
        """Put back a state from `save_state` (only called when `restorable`)."""
        raise ProtocolError(f"{type(self).__name__} has no state to restore")


class RealLab(Lab):
    """A probe station: real elapsed time since the lab was made, real waiting."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)


class CrossbarRig(abc.ABC):
    """Abstract rig addressing one crossbar (or a single crosspoint as a 1x1 crossbar).

    Coordinates are (row, col) = (word line, bit line), 0-based. Conductances in siemens,
    voltages in volts, times in seconds.
    """

    #: human-readable name for logs and HDF5 attributes
    name: str = "rig"

    def __init__(self, shape: tuple[int, int], limits: Limits, read: ReadSettings | None = None,
                 lab: Lab | None = None):
        self._shape = (int(shape[0]), int(shape[1]))
        self.limits = limits
        self.read_settings = read or ReadSettings()
        self.lab = lab or RealLab()
        self.limits.check_bias(self.read_settings.volts, where=f"{self.name} read voltage")
        #: the outcome of the last safe_state()
        self.safe = SafeOutcome(self.name)
        if _recorded is not None:
            _recorded.append(self.safe)

    # -- public API (checked) ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def clock(self) -> float:
        """Instrument time spent so far [s] (real elapsed time, or the virtual clock)."""
        return self.lab.now()

    def wait(self, seconds: float) -> None:
        """Let `seconds` of instrument time pass, outputs idle (real: sleep; simulated: the
        virtual clock advances, charged as 'wait')."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"wait needs a finite time >= 0 s, got {seconds!r}")
        if seconds > 0:
            self.lab.wait(float(seconds))

    @property
    def restorable(self) -> bool:
        """True when `save_state` holds everything a resumed run needs (simulated stations)."""
        return self.lab.restorable

    def save_state(self) -> dict | None:
        """The state to commit with each unit of data; None on hardware. On a simulated station:
        the lab's (chip, RNGs, clock) and, under "rig", what the rig's instruments hold between
        operations (an open session, a relay routing), so that a resumed run finds them as the
        uninterrupted run had them."""
        state = self.lab.save_state()
        if state is not None:
            held = self._instrument_state()
            if held is not None:
                state = {**state, "rig": held}
        return state

    def restore_state(self, state: dict) -> None:
        """Put back the state committed with the last finished unit: first the instruments
        (sessions opened, relays routed as they were), then the lab, whose clock and chip
        overwrite whatever re-instating the instruments cost."""
        held = state.get("rig")
        if held is not None:
            self._begin()
            self._reinstate(held)
        self.lab.restore_state(state)

    def time_breakdown(self) -> dict[str, float] | None:
        """Instrument time so far by category [s] (the virtual clock's), None on hardware."""
        return self.lab.breakdown()

    def read(self, row: int, col: int) -> float:
        self._check_device(row, col)
        self._begin()
        return float(self._read_repeated(row, col, 1)[0])

    def read_repeated(self, row: int, col: int, n: int) -> np.ndarray:
        """n reads in one instrument execution."""
        self._check_device(row, col)
        if n < 1:
            raise ValueError(f"read_repeated needs n >= 1, got {n}")
        self._begin()
        return np.asarray(self._read_repeated(row, col, int(n)), dtype=float)

    def pulse(self, row: int, col: int, volts: float, seconds: float) -> None:
        """One write pulse on (row, col); the rig applies its bias scheme to every other line."""
        self._check_device(row, col)
        self.limits.check_pulse(volts, seconds, where=f"{self.name} ({row},{col})")
        self._begin()
        self._pulse(row, col, float(volts), float(seconds))

    def pulse_and_read(self, row: int, col: int, volts: float, seconds: float,
                       n_reads: int = 1) -> np.ndarray | float:
        """A pulse followed by n verify reads in one execution; float when n_reads == 1."""
        self._check_device(row, col)
        self.limits.check_pulse(volts, seconds, where=f"{self.name} ({row},{col})")
        if n_reads < 1:
            raise ValueError(f"pulse_and_read needs n_reads >= 1, got {n_reads}")
        self._begin()
        out = np.asarray(self._pulse_and_read(row, col, float(volts), float(seconds),
                                              int(n_reads)), dtype=float)
        return float(out[0]) if n_reads == 1 else out

    def read_array(self) -> np.ndarray:
        """Conductance map of the whole crossbar [S], shape == self.shape."""
        self._begin()
        out = np.asarray(self._read_array(), dtype=float)
        if out.shape != self.shape:
            raise ProtocolError(f"{self.name}: read map has shape {out.shape}, expected "
                                f"{self.shape}")
        return out

    # -- the analog read-out: rows driven, column currents measured -------------------------
    #: integration of each read-out current [power-line cycles]: 0.1 PLC, the 4200A's `IT1`
    #: (1.7 ms at 60 Hz); the B1500 DC path integrates whole PLCs on its high-resolution ADC,
    #: so 1 PLC there (16.7 ms)
    READOUT_NPLC = 0.1

    @property
    def channels(self) -> Channels | None:
        """How many word lines (`sources`) and bit lines (`meters`) one `column_currents` call
        may take, or None when the rig cannot run the analog read-out (then `column_currents`
        raises NotAvailableError). Derived from `dc_capacity`, so that a call is one DC pass:

        - every line wired to an SMU of its own (`fixed`): all word lines and all bit lines;
        - SMUs routed by a matrix: a pool of `dc_capacity.sources` SMUs, less one that holds
          the lines not in use at 0 V when the matrix cannot ground them, shared by the word
          lines driven and the bit lines metered of a call (`lines`), at least one of each.
          How to split it is the caller's choice per call (`protocols.inference` takes the
          split that drives each device with the fewest patterns).
          Fewer than two SMUs in the pool: None.
        """
        cap = self.dc_capacity
        if cap is None:
            return None
        rows, cols = self.shape
        if cap.fixed:
            return Channels(rows, cols)
        pool = cap.sources - (0 if cap.ground else 1)
        if pool < 2:
            return None
        return Channels(min(rows, pool - 1), min(cols, pool - 1), lines=pool)

    def column_currents(self, rows, volts, cols) -> np.ndarray:
        """Drive word lines `rows` with `volts` and measure the currents of bit lines `cols`:
        the analog vector-matrix product of the crossbar.

        Arguments (SI): ``rows`` distinct word-line indices (at most ``channels.sources``);
        ``volts`` shape (k, len(rows)): k drive patterns, applied one after the other, volts[a,
        i] on word line rows[i] during pattern a; ``cols`` distinct bit-line indices (at most
        ``channels.meters``; rows and columns together at most ``channels.lines``). Returns the
        currents [A], shape (k, len(cols)).

        Contract every rig implements:

        - every other word line is held at 0 V (an SMU at 0 V or the matrix's ground), every
          bit line is at 0 V: the measured ones at the virtual ground of a meter, the others
          connected to ground, so no line floats and the only voltages on the array are
          ``volts``;
        - sign: a current is positive when it flows out of the array into the meter, so a
          positive row voltage on a device gives a positive column current (the sensed current
          of a grounded read; I ~ G V near the read voltage, devices are not exactly linear).
          `DcResult` counts the other way (into the array);
        - the levels are DC bias, not pulses: each is checked against the station's read/bias
          limit (``limits.check_bias``) here, before the rig sees the request (and `dc` checks
          each again against the source envelope); sources run with the station's current
          compliance (``limits.i_compliance``), and a line that reaches it ends the request
          with a ComplianceError, the rig made safe (outputs off, relays open);
        - timing: what the rig's DC path charges for it. On an SMU rig (the default, one
          `DcRequest` of one pass, `hold` 0, READOUT_NPLC): connecting the SMUs (RPMs or RSUs
          switched) and routing the lines (one matrix reconfiguration), then on the 4200 one
          list sweep (a fixed set of messages, one execution, per pattern the source settling
          and the integration, a status poll and the readings' transfer), on the B1500 the
          SMUs prepared and per pattern one host command per SMU whose level changes and per
          meter one measurement (round trip, source settling, integration); the SMUs turned
          off; every call pays its own connection and routing. The simulator's array tester
          (`simulator.direct_rig.SimulatedRig`) charges its own list-sweep model;
        - afterwards every output is back at 0 V (off).

        Keeping the levels inside a range that does not disturb the devices (far below their
        switching thresholds) is the protocol's business (`protocols.inference`); the seam
        guarantees the station envelope. A rig without a DC path raises NotAvailableError.
        """
        ch = self.channels
        if ch is None:
            raise NotAvailableError(f"analog read-out (rows driven, column currents measured) is "
                                    f"not available on this rig ({self.name}): it has no DC "
                                    "source/measure path with at least two SMUs")
        n_rows, n_cols = self.shape
        rows = self._lines(rows, n_rows, ch.sources, "word line", "sources")
        cols = self._lines(cols, n_cols, ch.meters, "bit line", "meters")
        if ch.lines is not None and rows.size + cols.size > ch.lines:
            raise ValueError(f"{self.name}: {rows.size} word lines and {cols.size} bit lines "
                             f"asked at once, the DC path has {ch.lines} SMUs for both: "
                             "time-multiplex them")
        v = np.asarray(volts, dtype=float)
        if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] != rows.size:
            raise ValueError(f"column_currents needs volts of shape (k >= 1, {rows.size}), got "
                             f"{v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("column_currents: every level must be a finite voltage")
        worst = float(v.flat[np.argmax(np.abs(v))])
        self.limits.check_bias(worst, where=f"{self.name} analog read-out")
        self._begin()
        out = np.asarray(self._column_currents(rows, v, cols), dtype=float)
        if out.shape != (v.shape[0], cols.size):
            raise ProtocolError(f"{self.name}: column currents of shape {out.shape}, expected "
                                f"{(v.shape[0], cols.size)}")
        return out

    def _lines(self, which, n: int, most: int, what: str, kind: str) -> np.ndarray:
        a = np.asarray(which)
        if a.ndim != 1 or a.size < 1 or (a.size and a.dtype.kind not in "iu"):
            raise ValueError(f"column_currents needs a non-empty list of {what} indices")
        a = a.astype(np.int64)
        if a.min() < 0 or a.max() >= n:
            raise IndexError(f"{self.name}: {what} {int(a.max() if a.max() >= n else a.min())} "
                             f"outside the {n} {what}s")
        if np.unique(a).size != a.size:
            raise ValueError(f"column_currents: a {what} is named twice")
        if a.size > most:
            raise ValueError(f"{self.name}: {a.size} {what}s asked at once, the DC path has "
                             f"{most} {kind}: time-multiplex them")
        return a

    def _column_currents(self, rows: np.ndarray, volts: np.ndarray,
                         cols: np.ndarray) -> np.ndarray:
        """The read-out as one DC request on the rig's SMUs (checked arguments)."""
        zero = np.zeros(volts.shape[0])
        sense = [("col", int(c)) for c in cols]
        levels: dict[Line, Sequence[float]] = {("row", int(r)): volts[:, i]
                                               for i, r in enumerate(rows)}
        levels.update(dict.fromkeys(sense, zero))
        # settling is the SMU's own before each measurement: no extra hold
        res = self.dc(DcRequest(levels, sense, compliance=self.limits.i_compliance, hold=0.0,
                                nplc=self.READOUT_NPLC))
        limited = res.compliance.any() or res.other_compliance.any()
        if limited or res.overflow.any():
            try:
                self.safe_state()
            except Exception as e:  # what stopped the read-out is the error to raise
                log.error("%s: could not make every instrument safe: %s", self.name, e)
            if limited:
                raise ComplianceError(f"{self.name}: a line reached the current compliance "
                                      f"({self.limits.i_compliance:.3g} A) during the analog "
                                      "read-out")
            raise ProtocolError(f"{self.name}: a column current overflowed its range during "
                                "the analog read-out")
        return -res.current

    # -- DC ------------------------------------------------------------------------------------
    @property
    def dc_capacity(self) -> DcCapacity | None:
        """What the rig's DC path can do at once; None: the rig has no DC path."""
        return None

    def dc(self, request: DcRequest) -> DcResult:
        """Run a DC request (see DcRequest): every level and the compliance are checked against
        the station limits before anything is sent; the request is split into passes when more
        lines are sensed than the rig's SMUs allow at once (each pass repeats every point)."""
        self._check_dc(request)
        cap = self.dc_capacity
        if cap is None:
            raise ProtocolError(f"{self.name}: this rig has no DC path (no SMUs configured)")
        passes = plan_dc(request, self.shape, cap)
        sense = list(request.sense)
        n, k = request.points, len(sense)
        out = DcResult(tuple(sense), *(np.full((n, k), np.nan) for _ in range(2)),
                       np.zeros((n, k), bool), np.zeros((n, k), bool), np.full((n, k), np.nan),
                       np.zeros((n, k), bool), passes=len(passes))
        if len(passes) > 1:
            note = (f"{k} sensed lines on {cap.sources} SMUs: measured in {len(passes)} passes, "
                    "each repeating every point")
            out.notes.append(note)
            log.info("%s: %s", self.name, note)
        for groups in passes:
            self._begin()
            measured = self._dc_pass(groups, request)
            for g, m in zip([g for g in groups if g.sensed], measured, strict=True):
                j = sense.index(g.lines[0])
                out.volts[:, j], out.current[:, j] = m.volts, m.current
                out.compliance[:, j], out.overflow[:, j], out.t[:, j] = \
                    m.compliance, m.overflow, m.t
                if m.other_compliance.size:
                    out.other_compliance[:, j] = m.other_compliance
        return out

    def _check_dc(self, r: DcRequest) -> None:
        rows, cols = self.shape
        if not r.levels or not r.sense:
            raise ValueError("a DC request forces at least one line and senses at least one")
        n = r.points
        if n < 1:
            raise ValueError("a DC request needs at least one point")
        for line, volts in r.levels.items():
            kind, i = line
            if kind not in ("row", "col") or not 0 <= i < (rows if kind == "row" else cols):
                raise IndexError(f"{self.name}: line {line!r} outside the {rows}x{cols} crossbar")
            if len(volts) != n:
                raise ValueError(f"line {line!r}: {len(volts)} levels, the request has {n} points")
            for v in volts:
                self.limits.check_level(float(v), where=f"{self.name} DC {kind} {i}")
        for line in r.sense:
            if line not in r.levels:
                raise ValueError(f"sensed line {line!r} is not forced (an SMU senses the line "
                                 "it forces)")
        if len(set(r.sense)) != len(r.sense):
            raise ValueError("a sensed line is named twice")
        self.limits.check_compliance(r.compliance, where=f"{self.name} DC")
        if r.source_compliance is not None:
            self.limits.check_compliance(r.source_compliance, where=f"{self.name} DC sources")
        if r.others not in ("ground", "float"):
            raise ValueError(f"others must be 'ground' or 'float', got {r.others!r}")
        if not (math.isfinite(r.hold) and 0 <= r.hold <= 3600):
            raise ValueError(f"hold must be 0..3600 s, got {r.hold!r}")
        if not (math.isfinite(r.nplc) and 0 < r.nplc <= 100):
            raise ValueError(f"nplc must be in (0, 100], got {r.nplc!r}")
        if r.i_range is not None and not (math.isfinite(r.i_range) and 0 < r.i_range <= 1):
            raise ValueError(f"i_range must be a current in (0, 1] A, got {r.i_range!r}")
        if r.fixed_range and r.i_range is None:
            raise ValueError("a fixed current range needs i_range")

    def _dc_pass(self, groups: list[DcGroup], request: DcRequest) -> list[DcMeasured]:
        """Drive `groups` (SMUs as the rig assigns them) at every point of `request`; return
        one DcMeasured per sensed group, in order. Only called when `dc_capacity` is set."""
        raise ProtocolError(f"{self.name}: no DC path")

    # -- instruments ---------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """What the instruments behind the rig say about themselves (identity, options, modules,
        settings read back), queried now; stored with every run, not compared on resume."""
        return {"rig": self.name}

    def safe_state(self) -> None:
        """All outputs 0 V, all relays open; raises if an instrument could not be made safe.

        Runs to its end even if Ctrl-C arrives meanwhile (the interrupt is acted on after), and
        records the outcome in `self.safe`."""
        self.safe.state, self.safe.detail = "unsafe", "interrupted while being made safe"
        try:
            with interrupts.deferred():
                self._safe_state()
        except Exception as e:
            self.safe.detail = " ".join(str(e).split()) or type(e).__name__
            raise
        self.safe.state, self.safe.detail = "safe", ""

    def close(self) -> None:
        """Leave everything safe and release the instruments."""
        self.safe_state()

    def __enter__(self) -> CrossbarRig:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                self.safe_state()
            finally:
                self.close()
        except Exception as e:
            if exc is None:
                raise
            # Keep the error that stopped the work (it names the command that failed); a lost
            # instrument also fails its safe-state commands, which is said here, not raised.
            log.error("%s: could not make every instrument safe after the error: %s",
                      self.name, e)

    def _begin(self) -> None:
        """Before any hardware operation: act on a lost Ctrl-C; the rig is in use from now."""
        interrupts.check()
        self.safe.state = "in use"

    # -- for concrete rigs ---------------------------------------------------------------------
    @abc.abstractmethod
    def _safe_state(self) -> None:
        """All outputs 0 V, all relays open. Must not raise for an instrument already safe."""

    @abc.abstractmethod
    def _read_repeated(self, row: int, col: int, n: int) -> np.ndarray: ...

    @abc.abstractmethod
    def _pulse(self, row: int, col: int, volts: float, seconds: float) -> None: ...

    def _pulse_and_read(self, row: int, col: int, volts: float, seconds: float,
                        n: int) -> np.ndarray:
        # Rigs that can do both in one execution override this.
        self._pulse(row, col, volts, seconds)
        return self._read_repeated(row, col, n)

    def _instrument_state(self) -> dict | None:
        """What the instruments hold between operations that costs instrument time to set up
        again (JSON-able), or None. Rigs that keep such state override this and `_reinstate`."""
        return None

    def _reinstate(self, state: dict) -> None:
        """Set the instruments up as `_instrument_state` described them."""
        raise NotImplementedError(f"{type(self).__name__} saves instrument state but cannot "
                                  "re-instate it")

    def _read_array(self) -> np.ndarray:
        rows, cols = self.shape
        return np.array([[self._read_repeated(r, c, 1)[0] for c in range(cols)]
                         for r in range(rows)])

    def _check_device(self, row: int, col: int) -> None:
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"{self.name}: device ({row},{col}) outside the {rows}x{cols} "
                             "crossbar")
