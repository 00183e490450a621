"""Keithley 4200A-SCS over KXCI on its Ethernet socket (instruments.md §4).

Over Ethernet every command is acknowledged, so every setter is a query that must answer `ACK`;
anything else is the instrument refusing it: the driver then reads `:ERROR:LAST:GET` and raises
InstrumentError naming the command and both replies. Queries (`...?`, `TI`, `GP`) answer their
value instead of `ACK`.

Covers SMU user mode (`US`, `DV`, `TI`), the user library (`UL`, `EX`, `GP`) and the 4225-PMU in
segment-arbitrary mode (`:PMU:...`). The reply formats marked (confirm) in instruments.md §9 are
parsed leniently (`RETURN VALUE = 0` or a bare `0`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import numpy as np

from instruments.errors import InstrumentError, InstrumentTimeout
from instruments.visa import NUM, MessageInstrument, allow_list, check_current, fmt

#: one SARB array call holds at most this many values (instruments.md §4.4)
MAX_ARRAY = 128
MIN_SEGMENT = 20e-9
#: PMU current ranges [A] with the RPM (confirm vs datasheet)
PMU_I_RANGES = (0.2, 10e-3, 1e-3, 100e-6, 10e-6, 1e-6, 100e-9)


def _smu_source(limits, m) -> None:
    """`DVch,range,V,Icomp` / `DIch,range,I,Vcomp`; a bare `DVch` / `DIch` turns it off."""
    kind, ch, rng, value, comp = m.groups()
    if rng is None:
        return
    where = f"K4200 raw D{kind}{ch}"
    value, comp = float(value), float(comp)
    if kind == "V":
        limits.check_level(value, where=where)
        limits.check_compliance(abs(comp), where=where)
    else:  # forcing a current: the output swings up to the voltage compliance, its sign
        check_current(limits, value, where)
        limits.check_level(math.copysign(abs(comp), value), where=where)


def _sarb_levels(limits, m) -> None:
    for v in re.findall(NUM, m.group(1)):
        limits.check_level(float(v), where="K4200 raw SARB level")


_ARRAY = rf"(?:,\s*{NUM})+"
#: every KXCI command the raw guard knows (instruments.md §4, dc-commands.md §1): those that
#: set an output level are parsed and checked; the others set none. Not listed (so refused):
#: standard-pulse, sweep, system-mode and PGU commands (`:PMU:PULSE:*`, `:PMU:STEP:*`,
#: `:PMU:SWEEP:*`, `PV`, `VR`, `VC`, `DS`...), SARB `:ADD` arrays, other user-library modules.
RAW_COMMANDS = allow_list({
    "*IDN?": (r"\*IDN\?", None), "ID": ("ID", None), "*OPT?": (r"\*OPT\?", None),
    "*RST": (r"\*RST", None), "BC": ("BC", None), "SP": ("SP", None),
    "US": ("US", None), "UL": ("UL", None), "DE": ("DE", None),
    ":ERROR:LAST:GET": (":ERROR:LAST:GET", None), ":ERROR:LAST:CLEAR": (":ERROR:LAST:CLEAR", None),
    "DV": (rf"D(V)(\d)(?:,\s*(\d+),\s*({NUM}),\s*({NUM}))?", _smu_source),
    "DI": (rf"D(I)(\d)(?:,\s*(\d+),\s*({NUM}),\s*({NUM}))?", _smu_source),
    "TI": (r"TI\d", None), "TV": (r"TV\d", None),
    "GP": (r"GP \d+(?: \d+)?", None),
    "EX": (r"EX pmuulib kxci_rpm_switch\(\d+,\d+\)", None),   # RPM path, no level
    ":PMU:INIT": (r":PMU:INIT [01]", None),
    ":PMU:RPM:CONFIGURE": (r":PMU:RPM:CONFIGURE PMU1-[12],\s*[0-3]", None),
    ":PMU:SOURCE:RANGE": (rf":PMU:SOURCE:RANGE [12],\s*{NUM}", None),
    ":PMU:MEASURE:RANGE": (rf":PMU:MEASURE:RANGE [12],\s*\d,\s*{NUM}", None),
    ":PMU:LOAD": (rf":PMU:LOAD [12],\s*{NUM}", None),
    ":PMU:SARB:SEQ:TIME": (rf":PMU:SARB:SEQ:TIME [12],\s*\d+{_ARRAY}", None),
    ":PMU:SARB:SEQ:STARTV": (rf":PMU:SARB:SEQ:STARTV [12],\s*\d+({_ARRAY})", _sarb_levels),
    ":PMU:SARB:SEQ:STOPV": (rf":PMU:SARB:SEQ:STOPV [12],\s*\d+({_ARRAY})", _sarb_levels),
    ":PMU:SARB:SEQ:MEAS:TYPE": (r":PMU:SARB:SEQ:MEAS:TYPE [12],\s*\d+(?:,\s*[0-4])+", None),
    ":PMU:SARB:SEQ:MEAS:START": (rf":PMU:SARB:SEQ:MEAS:START [12],\s*\d+{_ARRAY}", None),
    ":PMU:SARB:SEQ:MEAS:STOP": (rf":PMU:SARB:SEQ:MEAS:STOP [12],\s*\d+{_ARRAY}", None),
    ":PMU:SARB:WFM:SEQ:LIST": (rf":PMU:SARB:WFM:SEQ:LIST [12](?:,\s*\d+,\s*{NUM})+", None),
    ":PMU:OUTPUT:STATE": (r":PMU:OUTPUT:STATE [12],\s*[01]", None),
    ":PMU:EXECUTE": (":PMU:EXECUTE", None), ":PMU:ABORT": (":PMU:ABORT", None),
    ":PMU:TEST:STATUS?": (r":PMU:TEST:STATUS\?", None),
    ":PMU:DATA:COUNT?": (r":PMU:DATA:COUNT\? [12]", None),
    ":PMU:DATA:GET": (r":PMU:DATA:GET [12],\s*\d+,\s*\d+", None),
})


def _grid(t: float) -> float:
    """Segment times on the 10 ns grid."""
    return round(t / 10e-9) * 10e-9


class K4200(MessageInstrument):
    kind = "K4200"
    read_termination = "\0"
    write_termination = "\0"
    RAW_COMMANDS = RAW_COMMANDS

    def __init__(self, resource, **kw):
        super().__init__(resource, **kw)
        self._mode = ""            # "", "US" or "UL"
        self._sent: dict[str, str] = {}   # last command per setting key: skip unchanged setup
        self._outputs_on: set[int] = set()
        self._smu_on: set[int] = set()

    # -- transport -----------------------------------------------------------------------------
    def cmd(self, command: str) -> None:
        """A setter: must be acknowledged with ACK."""
        reply = self.query(command)
        if reply != "ACK":
            self._raise_refused(command, reply)

    def cmd_cached(self, key: str, command: str) -> bool:
        """Send `command` unless the last command for `key` was identical (unchanged setup)."""
        if self._sent.get(key) == command:
            return False
        self._sent.pop(key, None)
        self.cmd(command)
        self._sent[key] = command
        return True

    def forget(self, keys) -> None:
        """Treat these setting keys as unknown: their next command is sent even if unchanged."""
        for k in keys:
            self._sent.pop(k, None)

    def settings(self) -> dict[str, str]:
        """The setting commands the instrument holds as far as the driver knows (key -> last
        command sent), for `reinstate`."""
        return dict(self._sent)

    def reinstate(self, settings: dict[str, str]) -> None:
        """Make the instrument and the driver hold exactly `settings` (from `settings()`):
        send what differs, forget what `settings` does not know."""
        self.forget([k for k in self._sent if k not in settings])
        self.send_setup(list(settings.items()))

    def _raise_refused(self, command: str, reply: str):
        detail = ""
        try:
            detail = self.query(":ERROR:LAST:GET")
        except InstrumentError:
            pass
        msg = f"4200 refused the command: {detail}" if detail else "4200 refused the command"
        raise InstrumentError(msg, instrument=self.name, command=command, reply=reply)

    def idn(self) -> str:
        return self.query("*IDN?")

    def options(self) -> list[str]:
        return [x for x in self.query("*OPT?").split(",") if x]

    def last_error(self) -> str:
        return self.query(":ERROR:LAST:GET")

    def check_errors(self, command: str = "") -> None:
        # Every setter is acknowledged, so errors surface per command; this reads the last
        # error for a final check of a batch.
        reply = self.last_error()
        if not reply.startswith("No error"):
            raise InstrumentError(f"4200 error: {reply}", instrument=self.name, command=command,
                                  reply=reply)

    # -- SMU user mode -------------------------------------------------------------------------
    def _enter(self, mode: str) -> None:
        if self._mode != mode:
            self.cmd(mode)
            self._mode = mode

    def smu_force_voltage(self, channel: int, volts: float, compliance: float,
                          vrange: int = 0) -> None:
        self.limits.check_level(volts, where=f"{self.name} SMU{channel}")
        self.limits.check_compliance(compliance, where=f"{self.name} SMU{channel}")
        self._enter("US")
        self.cmd(f"DV{int(channel)},{int(vrange)},{fmt(volts)},{fmt(compliance)}")
        self._smu_on.add(int(channel))

    def smu_off(self, channel: int) -> None:
        self._enter("US")
        self.cmd(f"DV{int(channel)}")
        self._smu_on.discard(int(channel))

    def smu_measure_current(self, channel: int) -> float:
        self._enter("US")
        command = f"TI{int(channel)}"
        reply = self.query(command)
        try:
            value = float(reply[3:])
        except ValueError:
            raise InstrumentError("bad current reading", instrument=self.name, command=command,
                                  reply=reply) from None
        if abs(value) > 1e37:
            raise InstrumentError("current over range", instrument=self.name, command=command,
                                  reply=reply)
        return value

    # -- user library --------------------------------------------------------------------------
    @staticmethod
    def ex_command(library: str, module: str, params: Sequence[object]) -> str:
        """`EX lib module(p1,p2,,n)`: no spaces after commas; None = an output array (empty)."""
        def one(p: object) -> str:
            if p is None:
                return ""
            if isinstance(p, float):
                return fmt(p)
            return str(p)
        return f"EX {library} {module}({','.join(one(p) for p in params)})"

    def ul_execute(self, library: str, module: str, *params: object) -> int:
        self._enter("UL")
        command = self.ex_command(library, module, params)
        reply = self.query(command)
        value = reply.rpartition("=")[2].strip()
        try:
            return int(float(value))
        except (ValueError, OverflowError):  # 'inf' is a float, not an int
            self._raise_refused(command, reply)
        raise AssertionError  # unreachable

    def ul_get(self, index: int, count: int = 1) -> list[float]:
        command = f"GP {int(index)} {int(count)}"
        reply = self.query(command)
        body = reply.rpartition("=")[2]
        try:
            return [float(x) for x in body.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise InstrumentError("bad GP reply", instrument=self.name, command=command,
                                  reply=reply) from None

    def rpm_switch(self, rpm: int, mode: int) -> None:
        """Switch RPM `rpm` to pulse (0), CVU-2W (1), CVU-4W (2) or SMU (3)."""
        rc = self.ul_execute("pmuulib", "kxci_rpm_switch", int(rpm), int(mode))
        if rc != 0:
            raise InstrumentError(f"kxci_rpm_switch returned {rc}", instrument=self.name,
                                  command=self.ex_command("pmuulib", "kxci_rpm_switch",
                                                          (rpm, mode)))

    # -- PMU segment-ARB ---------------------------------------------------------------------
    def pmu_init(self, channels: Sequence[int] = (1, 2), i_range: float = 100e-6,
                 v_range: int = 10, load: float = 1e6) -> None:
        """Segment-ARB mode, RPM pulse path, fixed current range (SegArb needs fixed ranges)."""
        if i_range not in PMU_I_RANGES:
            raise InstrumentError(f"unsupported PMU current range {i_range!r} A",
                                  instrument=self.name)
        if v_range not in (10, 40):
            raise InstrumentError(f"unsupported PMU source range {v_range!r} V",
                                  instrument=self.name)
        self._sent.clear()
        self._mode = ""
        self.cmd(":PMU:INIT 1")
        for ch in channels:
            self.cmd(f":PMU:RPM:CONFIGURE PMU1-{ch}, 0")
            self.cmd(f":PMU:SOURCE:RANGE {ch}, {v_range}")
            self.cmd(f":PMU:MEASURE:RANGE {ch}, 2, {fmt(i_range)}")
            self.cmd(f":PMU:LOAD {ch}, {fmt(load)}")

    def sarb_commands(self, ch: int, seq: int, times: Sequence[float],
                      startv: Sequence[float], stopv: Sequence[float],
                      meas_type: Sequence[int], meas_start: Sequence[float],
                      meas_stop: Sequence[float]) -> list[tuple[str, str]]:
        """Checked (key, command) pairs defining one SARB sequence. Raises before anything is
        sent if a level is outside the station limits or a segment is too short."""
        n = len(times)
        if not 1 <= n <= MAX_ARRAY:
            raise InstrumentError(f"a SARB sequence holds 1..{MAX_ARRAY} segments, got {n}",
                                  instrument=self.name)
        if not (len(startv) == len(stopv) == len(meas_type) == len(meas_start)
                == len(meas_stop) == n):
            raise ValueError("SARB arrays must have equal lengths")
        for v in (*startv, *stopv):
            self.limits.check_level(v, where=f"{self.name} PMU ch{ch}")
        for t in times:
            if _grid(t) < MIN_SEGMENT - 1e-15:
                raise InstrumentError(f"SARB segment {t:.3g} s shorter than 20 ns",
                                      instrument=self.name)
        for a, b, t in zip(meas_start, meas_stop, times, strict=True):
            if not (0 <= a <= b <= t + 1e-15):
                raise InstrumentError("measure window outside its segment",
                                      instrument=self.name)

        def arr(xs: Sequence[float]) -> str:
            return ",".join(fmt(x) for x in xs)

        p = ":PMU:SARB:SEQ"
        k = f"{ch},{seq}"
        return [
            (f"T{k}", f"{p}:TIME {k},{arr(_grid(t) for t in times)}"),
            (f"A{k}", f"{p}:STARTV {k},{arr(startv)}"),
            (f"B{k}", f"{p}:STOPV {k},{arr(stopv)}"),
            (f"M{k}", f"{p}:MEAS:TYPE {k},{','.join(str(int(m)) for m in meas_type)}"),
            (f"S{k}", f"{p}:MEAS:START {k},{arr(meas_start)}"),
            (f"E{k}", f"{p}:MEAS:STOP {k},{arr(meas_stop)}"),
        ]

    def send_setup(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Send (key, command) pairs, skipping those unchanged since last sent."""
        return sum(self.cmd_cached(k, c) for k, c in pairs)

    def seq_list_command(self, ch: int, seqs: Sequence[tuple[int, int]]) -> tuple[str, str]:
        body = ",".join(f"{s},{int(n)}" for s, n in seqs)
        return f"L{ch}", f":PMU:SARB:WFM:SEQ:LIST {ch},{body}"

    def output(self, ch: int, on: bool) -> None:
        if on and ch in self._outputs_on:
            return
        self.cmd(f":PMU:OUTPUT:STATE {ch}, {1 if on else 0}")
        (self._outputs_on.add if on else self._outputs_on.discard)(ch)

    def execute(self, timeout: float | None = None, poll: float = 0.0) -> None:
        """Run the loaded sequences and wait until the PMU is idle."""
        self.cmd(":PMU:EXECUTE")
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            reply = self.query(":PMU:TEST:STATUS?")
            if reply == "0":
                return
            if reply != "1":
                # an empty (cut-off) reply must say so: InstrumentError omits an empty reply
                raise InstrumentError("unexpected status" if reply else "empty status reply",
                                      instrument=self.name,
                                      command=":PMU:TEST:STATUS?", reply=reply)
            if time.monotonic() > deadline:
                self.abort()
                raise InstrumentTimeout("PMU still running", instrument=self.name,
                                        command=":PMU:EXECUTE")
            if poll:
                time.sleep(poll)

    def data_count(self, ch: int) -> int:
        reply = self.query(f":PMU:DATA:COUNT? {ch}")
        try:
            return int(float(reply))
        except (ValueError, OverflowError):  # 'inf' is a float, not an int
            raise InstrumentError("bad count", instrument=self.name,
                                  command=f":PMU:DATA:COUNT? {ch}", reply=reply) from None

    def data(self, ch: int, start: int, count: int) -> np.ndarray:
        """Points as an (count, 4) array of V, I, T, S (≤ 2048 points per call)."""
        out = []
        while count > 0:
            n = min(count, 2048)
            command = f":PMU:DATA:GET {ch}, {start}, {n}"
            reply = self.query(command)
            try:
                pts = [[float(f) for f in p.split(",")] for p in reply.split(";") if p]
            except ValueError:
                raise InstrumentError("bad data", instrument=self.name, command=command,
                                      reply=reply) from None
            if len(pts) != n or any(len(p) != 4 for p in pts):
                raise InstrumentError(f"expected {n} points of V,I,T,S", instrument=self.name,
                                      command=command, reply=reply[:200])
            out.extend(pts)
            start += n
            count -= n
        return np.asarray(out, dtype=float).reshape(-1, 4)

    def abort(self) -> None:
        self.cmd(":PMU:ABORT")

    def make_safe(self) -> None:
        # Abort a running sequence, outputs off, SMU outputs off. Every command is attempted;
        # the first failure is re-raised at the end.
        first: BaseException | None = None
        steps = [":PMU:ABORT", ":PMU:OUTPUT:STATE 1, 0", ":PMU:OUTPUT:STATE 2, 0"]
        if self._smu_on:
            steps += ["US"] + [f"DV{ch}" for ch in sorted(self._smu_on)]
        for command in steps:
            try:
                self.query(command)
            except InstrumentError as e:
                first = first or e
        self._outputs_on.clear()
        self._smu_on.clear()
        self._sent.clear()
        self._mode = "US" if "US" in steps else self._mode
        if first is not None:
            raise first
