"""Keithley 4200A-SCS over KXCI on its Ethernet socket (instruments.md §4).

Over Ethernet every command is acknowledged, so every setter is a query that must answer `ACK`;
anything else is the instrument refusing it: the driver then reads `:ERROR:LAST:GET` and raises
InstrumentError naming the command and both replies. Queries (`...?`, `TI`, `GP`) answer their
value instead of `ACK`.

Covers SMU user mode (`US`, `DV`, `TI`, `TV`, `RG`, `IT`: dc-commands.md §1.2), the user library
(`UL`, `EX`, `GP`) and the 4225-PMU in segment-arbitrary mode (`:PMU:...`). The reply formats
marked (confirm) in instruments.md §9 are parsed leniently (`RETURN VALUE = 0` or a bare `0`).

Channels are objects: `k.smu(n)` (an SMU: force, measure, lowest range) and `k.pmu(n)` (a PMU
channel: output, segment-ARB sequences, data, its RPM's path). SMU1 and SMU2 reach their cables
through the 4225-RPMs: `k.pmu(n).rpm(RPM_SMU)` switches RPM n to its SMU.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence

import numpy as np

from instruments.errors import InstrumentError, InstrumentTimeout
from instruments.smu import Spot, parse_spot
from instruments.visa import NUM, MessageInstrument, allow_list, fmt

#: one SARB array call holds at most this many values (instruments.md §4.4)
MAX_ARRAY = 128
MIN_SEGMENT = 20e-9
#: PMU current ranges [A] with the RPM (confirm vs datasheet)
PMU_I_RANGES = (0.2, 10e-3, 1e-3, 100e-6, 10e-6, 1e-6, 100e-9)
#: `:PMU:RPM:CONFIGURE` path codes (instruments.md §4.4): PMU, SMU
RPM_PMU, RPM_SMU = 0, 2
#: `IT` codes by integration in power-line cycles (4200RM p.9-44)
IT_CODES = {0.1: 1, 1.0: 2, 10.0: 3}
#: the 4200-SMU's lowest current range without preamp [A] (dc-commands.md §1.2, DI code 3)
SMU_LOWEST_RANGE = 100e-9


def _smu_source(limits, m) -> None:
    """`DVch,range,V,Icomp` / `DIch,range,I,Vcomp`; a bare `DVch` / `DIch` turns it off."""
    kind, ch, rng, value, comp = m.groups()
    if rng is None:
        return
    limits.check_source(kind, float(value), float(comp), where=f"K4200 raw D{kind}{ch}")


def _sarb_levels(limits, m) -> None:
    for v in re.findall(NUM, m.group(1)):
        limits.check_level(float(v), where="K4200 raw SARB level")


_ARRAY = rf"(?:,\s*{NUM})+"
#: every KXCI command the raw guard knows (instruments.md §4, dc-commands.md §1): those that
#: set an output level are parsed and checked; the others set none. Not listed (so refused):
#: standard-pulse, sweep, system-mode and PGU commands (`:PMU:PULSE:*`, `:PMU:STEP:*`,
#: `:PMU:SWEEP:*`, `PV`, `VR`, `VC`, `DS`...), SARB `:ADD` arrays, other user-library modules,
#: the custom integration `IT4,...` and `RI` (unconfirmed in user mode).
RAW_COMMANDS = allow_list({
    "*IDN?": (r"\*IDN\?", None), "ID": ("ID", None), "*OPT?": (r"\*OPT\?", None),
    "*RST": (r"\*RST", None), "BC": ("BC", None), "SP": ("SP", None),
    "US": ("US", None), "UL": ("UL", None), "DE": ("DE", None),
    ":ERROR:LAST:GET": (":ERROR:LAST:GET", None), ":ERROR:LAST:CLEAR": (":ERROR:LAST:CLEAR", None),
    "DV": (rf"D(V)(\d)(?:,\s*(\d+),\s*({NUM}),\s*({NUM}))?", _smu_source),
    "DI": (rf"D(I)(\d)(?:,\s*(\d+),\s*({NUM}),\s*({NUM}))?", _smu_source),
    "TI": (r"TI\d", None), "TV": (r"TV\d", None),
    "RG": (rf"RG \d,\s*{NUM}", None), "IT": (r"IT[123]", None),
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


class K4200Smu:
    """SMU `number` of a 4200 (user mode). Levels are checked against the station limits before
    anything is sent."""

    def __init__(self, k: K4200, number: int):
        self.k, self.number = k, int(number)

    def __repr__(self) -> str:
        return f"{self.k.name} SMU{self.number}"

    def force_voltage(self, volts: float, compliance: float, vrange: int = 0) -> None:
        """`DVn,range,V,Icomp` (range 0 = auto, dc-commands.md §1.2)."""
        k = self.k
        k.limits.check_level(volts, where=str(self))
        k.limits.check_compliance(compliance, where=str(self))
        k.user_mode()
        k.cmd(f"DV{self.number},{int(vrange)},{fmt(volts)},{fmt(compliance)}")

    def off(self) -> None:
        """`DVn`: output off."""
        self.k.user_mode()
        self.k.cmd(f"DV{self.number}")

    def lowest_range(self, amps: float) -> None:
        """`RG n, amps`: the lowest current range autoranging may use (dc-commands.md §1.2;
        TEK-S `res2t.py` writes `RG 1, 100e-9`)."""
        self.k.user_mode()
        self.k.cmd(f"RG {self.number}, {fmt(amps)}")

    def measure_current(self) -> Spot:
        """`TIn`: one current reading with its status (C compliance, V overflow...)."""
        return self._measure("I")

    def measure_voltage(self) -> Spot:
        """`TVn`: the output voltage with its status."""
        return self._measure("V")

    def _measure(self, kind: str) -> Spot:
        k = self.k
        k.user_mode()
        command = f"T{kind}{self.number}"
        reply = k.query(command)
        try:
            return parse_spot(reply, kind)
        except ValueError:
            raise InstrumentError(f"bad {'current' if kind == 'I' else 'voltage'} reading",
                                  instrument=k.name, command=command, reply=reply) from None


class PmuChannel:
    """Channel `number` (1 or 2) of the 4225-PMU and the RPM on its cable."""

    def __init__(self, k: K4200, number: int):
        if number not in (1, 2):
            raise ValueError(f"the 4225-PMU has channels 1 and 2, not {number!r}")
        self.k, self.number = k, int(number)

    def __repr__(self) -> str:
        return f"{self.k.name} PMU ch{self.number}"

    def output(self, on: bool) -> None:
        k, ch = self.k, self.number
        if on and ch in k._outputs_on:
            return
        k.cmd(f":PMU:OUTPUT:STATE {ch}, {1 if on else 0}")
        (k._outputs_on.add if on else k._outputs_on.discard)(ch)

    def rpm(self, path: int) -> None:
        """`:PMU:RPM:CONFIGURE PMU1-n, path`: the RPM's output to the PMU (RPM_PMU) or to its
        SMU (RPM_SMU)."""
        if path not in (RPM_PMU, RPM_SMU):
            raise ValueError(f"unsupported RPM path {path!r}")
        self.k.cmd(f":PMU:RPM:CONFIGURE PMU1-{self.number}, {path}")

    def rpm_switch(self, mode: int) -> None:
        """`EX pmuulib kxci_rpm_switch(n,mode)`: the RPM to pulse (0), CVU-2W (1), CVU-4W (2) or
        SMU (3) (instruments.md §4.3)."""
        k = self.k
        rc = k.ul_execute("pmuulib", "kxci_rpm_switch", self.number, int(mode))
        if rc != 0:
            raise InstrumentError(f"kxci_rpm_switch returned {rc}", instrument=k.name,
                                  command=k.ex_command("pmuulib", "kxci_rpm_switch",
                                                       (self.number, mode)))

    def sarb(self, seq: int, times: Sequence[float], startv: Sequence[float],
             stopv: Sequence[float], meas_type: Sequence[int], meas_start: Sequence[float],
             meas_stop: Sequence[float]) -> list[tuple[str, str]]:
        """Checked (key, command) pairs defining one SARB sequence. Raises before anything is
        sent if a level is outside the station limits or a segment is too short."""
        k, ch = self.k, self.number
        n = len(times)
        if not 1 <= n <= MAX_ARRAY:
            raise InstrumentError(f"a SARB sequence holds 1..{MAX_ARRAY} segments, got {n}",
                                  instrument=k.name)
        if not (len(startv) == len(stopv) == len(meas_type) == len(meas_start)
                == len(meas_stop) == n):
            raise ValueError("SARB arrays must have equal lengths")
        for v in (*startv, *stopv):
            k.limits.check_level(v, where=str(self))
        for t in times:
            if _grid(t) < MIN_SEGMENT - 1e-15:
                raise InstrumentError(f"SARB segment {t:.3g} s shorter than 20 ns",
                                      instrument=k.name)
        for a, b, t in zip(meas_start, meas_stop, times, strict=True):
            if not (0 <= a <= b <= t + 1e-15):
                raise InstrumentError("measure window outside its segment", instrument=k.name)

        def arr(xs: Sequence[float]) -> str:
            return ",".join(fmt(x) for x in xs)

        p = ":PMU:SARB:SEQ"
        key = f"{ch},{seq}"
        return [
            (f"T{key}", f"{p}:TIME {key},{arr(_grid(t) for t in times)}"),
            (f"A{key}", f"{p}:STARTV {key},{arr(startv)}"),
            (f"B{key}", f"{p}:STOPV {key},{arr(stopv)}"),
            (f"M{key}", f"{p}:MEAS:TYPE {key},{','.join(str(int(m)) for m in meas_type)}"),
            (f"S{key}", f"{p}:MEAS:START {key},{arr(meas_start)}"),
            (f"E{key}", f"{p}:MEAS:STOP {key},{arr(meas_stop)}"),
        ]

    def seq_list(self, seqs: Sequence[tuple[int, int]]) -> tuple[str, str]:
        body = ",".join(f"{s},{int(n)}" for s, n in seqs)
        return f"L{self.number}", f":PMU:SARB:WFM:SEQ:LIST {self.number},{body}"

    def data_count(self) -> int:
        k, command = self.k, f":PMU:DATA:COUNT? {self.number}"
        reply = k.query(command)
        try:
            return int(float(reply))
        except (ValueError, OverflowError):  # 'inf' is a float, not an int
            raise InstrumentError("bad count", instrument=k.name, command=command,
                                  reply=reply) from None

    def data(self, start: int, count: int) -> np.ndarray:
        """Points as an (count, 4) array of V, I, T, S (≤ 2048 points per call)."""
        k, out = self.k, []
        while count > 0:
            n = min(count, 2048)
            command = f":PMU:DATA:GET {self.number}, {start}, {n}"
            reply = k.query(command)
            try:
                pts = [[float(f) for f in p.split(",")] for p in reply.split(";") if p]
            except ValueError:
                raise InstrumentError("bad data", instrument=k.name, command=command,
                                      reply=reply) from None
            if len(pts) != n or any(len(p) != 4 for p in pts):
                raise InstrumentError(f"expected {n} points of V,I,T,S", instrument=k.name,
                                      command=command, reply=reply[:200])
            out.extend(pts)
            start += n
            count -= n
        return np.asarray(out, dtype=float).reshape(-1, 4)


class K4200(MessageInstrument):
    kind = "K4200"
    read_termination = "\0"
    write_termination = "\0"
    RAW_COMMANDS = RAW_COMMANDS

    def __init__(self, resource, *, smus: int = 4, **kw):
        super().__init__(resource, **kw)
        #: SMU channels installed (SMU1..SMUn); make_safe turns every one off
        self.smus = int(smus)
        self._mode = ""            # "", "US" or "UL"
        self._sent: dict[str, str] = {}   # last command per setting key: skip unchanged setup
        self._outputs_on: set[int] = set()
        self._channels: dict[tuple[str, int], K4200Smu | PmuChannel] = {}

    def smu(self, number: int) -> K4200Smu:
        """SMU `number` (one object per channel: usable as a dict key)."""
        if not 1 <= number <= self.smus:
            raise ValueError(f"{self.name} has SMU1..SMU{self.smus}, not SMU{number}")
        return self._channels.setdefault(("smu", number), K4200Smu(self, number))

    def pmu(self, number: int) -> PmuChannel:
        """PMU channel `number` (1 or 2)."""
        ch = self._channels.get(("pmu", number))
        if ch is None:
            ch = self._channels[("pmu", number)] = PmuChannel(self, number)
        return ch

    def forget(self, keys=None) -> None:
        """Treat what the driver remembers sending as unknown: everything (mode, settings,
        outputs), or only the setting `keys` given (their next command is sent even if
        unchanged)."""
        if keys is not None:
            for k in keys:
                self._sent.pop(k, None)
            return
        self._mode = ""
        self._sent.clear()
        self._outputs_on.clear()

    # -- transport -----------------------------------------------------------------------------
    def cmd(self, command: str) -> None:
        """A setter: must be acknowledged with ACK."""
        reply = self.query(command)
        if reply != "ACK":
            self.forget()  # refused: what the instrument holds now is unknown
            self._raise_refused(command, reply)

    def cmd_cached(self, key: str, command: str) -> bool:
        """Send `command` unless the last command for `key` was identical (unchanged setup)."""
        if self._sent.get(key) == command:
            return False
        self._sent.pop(key, None)
        self.cmd(command)
        self._sent[key] = command
        return True

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

    def snapshot(self) -> dict:
        # KXCI has no confirmed queries of its source or PMU settings: identity and options
        return {"kind": self.kind, "name": self.name, "idn": self.idn(),
                "options": self.options(), "smus": self.smus,
                "settings": "not queryable over KXCI (no confirmed query commands)"}

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
    def user_mode(self) -> None:
        if self._mode != "US":
            self.cmd("US")
            self._mode = "US"

    def integration(self, plc: float) -> None:
        """`ITn`: integrate 0.1, 1 or 10 power-line cycles (IT1, IT2, IT3)."""
        code = IT_CODES.get(float(plc))
        if code is None:
            raise InstrumentError(f"integration of {plc!r} PLC: the 4200 offers 0.1, 1 or 10",
                                  instrument=self.name)
        self.cmd(f"IT{code}")

    # -- the DC path's interface (instruments.dc) ------------------------------------------------
    def prepare_smus(self, smus: Sequence[K4200Smu], *, nplc: float, i_range: float | None,
                     fixed: bool) -> float:
        """User mode (sent in any case), the integration (the 4200's 0.1 / 1 / 10 PLC at or above `nplc`) and the
        lowest autorange of each SMU (`i_range`, else the 100 nA range). Returns the PLC used.
        A fixed current range is refused: `RI` is unconfirmed in user mode."""
        if fixed:
            raise InstrumentError("the 4200 offers no fixed current range here (RI in user "
                                  "mode is unconfirmed, dc-commands.md §4); use a lowest "
                                  "range (limited auto)", instrument=self.name)
        plc = min((c for c in IT_CODES if c >= nplc * (1 - 1e-9)), default=10.0)
        # US whatever mode the driver believes in: what a pass sends never depends on the
        # passes before it (a resumed run sends exactly what the uninterrupted one did)
        self._mode = ""
        self.user_mode()
        self.integration(plc)
        for smu in smus:
            smu.lowest_range(i_range or SMU_LOWEST_RANGE)
        return plc

    def force_voltages(self, levels: dict[K4200Smu, float],
                       compliance: float | Mapping[K4200Smu, float]) -> None:
        """Every level and compliance (one for all, or per SMU) checked, then one acknowledged
        DV per SMU."""
        comp = compliance if isinstance(compliance, Mapping) else dict.fromkeys(levels,
                                                                                 compliance)
        for smu, v in levels.items():
            self.limits.check_level(v, where=str(smu))
            self.limits.check_compliance(comp[smu], where=str(smu))
        for smu, v in levels.items():
            smu.force_voltage(v, comp[smu])

    def release_smus(self, smus: Sequence[K4200Smu]) -> None:
        for smu in smus:
            smu.off()

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
        if self._mode != "UL":
            self.cmd("UL")
            self._mode = "UL"
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

    def send_setup(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Send (key, command) pairs, skipping those unchanged since last sent."""
        return sum(self.cmd_cached(k, c) for k, c in pairs)

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

    def abort(self) -> None:
        self.cmd(":PMU:ABORT")

    def make_safe(self) -> None:
        # Abort a running sequence, PMU outputs off, every SMU off (whatever this driver
        # remembers: an SMU may have been turned on by someone else). Every command is
        # attempted; the first failure is re-raised at the end.
        first: BaseException | None = None
        steps = [":PMU:ABORT", ":PMU:OUTPUT:STATE 1, 0", ":PMU:OUTPUT:STATE 2, 0", "US"]
        steps += [f"DV{ch}" for ch in range(1, self.smus + 1)]
        for command in steps:
            try:
                reply = self.query(command)
                if reply != "ACK":
                    raise InstrumentError("not confirmed", instrument=self.name,
                                          command=command, reply=reply)
            except InstrumentError as e:
                first = first or e
        self.forget()
        if first is None:
            self._mode = "US"
        else:
            raise first
