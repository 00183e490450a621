"""Keithley 4200A-SCS over KXCI on its Ethernet socket (instruments.md §4).

Over Ethernet every command is acknowledged, so every setter is a query that must answer `ACK`;
anything else is the instrument refusing it: the driver then reads `:ERROR:LAST:GET` and raises
InstrumentError naming the command and both replies. Queries (`...?`, `TI`, `GP`) answer their
value instead of `ACK`.

Covers SMU user mode (`US`, `DV`, `TI`, `TV`, `RG`, `IT`: dc-commands.md §1.2), the system-mode
list sweep (`DE`/`CH`, `SS`/`VL`/`HT`/`DT`, `SM`/`DM2`/`LI`, `MD`/`ME1`, `SP`, `DO`: §1.3; see
`K4200.list_sweep`), the user library
(`UL`, `EX`, `GP`) and the 4225-PMU in segment-arbitrary mode (`:PMU:...`). The reply formats
marked (confirm) in instruments.md §9 are parsed leniently (`RETURN VALUE = 0` or a bare `0`).

Channels are objects: `k.smu(n)` (an SMU: force, measure, lowest range) and `k.pmu(n)` (a PMU
channel: output, segment-ARB sequences, data, its RPM's path). SMU1 and SMU2 reach their cables
through the 4225-RPMs: `k.pmu(n).rpm(RPM_SMU)` switches RPM n to its SMU.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from instruments.errors import InstrumentError, InstrumentTimeout
from instruments.smu import Spot, parse_spot
from instruments.visa import NUM, MessageInstrument, allow_list, fmt

#: one SARB array call holds at most this many values (instruments.md §4.4)
MAX_ARRAY = 128
MIN_SEGMENT = 20e-9
#: what the 4225-PMU's segment-ARB holds per channel: sequences numbered 1..MAX_SEQUENCES and
#: MAX_SEGMENTS segments in all of them. Not in our reference: the 4225-PMU datasheet figures as
#: recalled (confirm on hardware). `K4200.send_setup` refuses a definition beyond them.
MAX_SEQUENCES, MAX_SEGMENTS = 512, 2048
#: PMU current ranges [A] with the RPM (confirm vs datasheet)
PMU_I_RANGES = (0.2, 10e-3, 1e-3, 100e-6, 10e-6, 1e-6, 100e-9)
#: `:PMU:RPM:CONFIGURE` path codes (instruments.md §4.4): PMU, SMU
RPM_PMU, RPM_SMU = 0, 2
#: `IT` codes by integration in power-line cycles (4200RM p.9-44)
IT_CODES = {0.1: 1, 1.0: 2, 10.0: 3}
#: the 4200-SMU's lowest current range without preamp [A] (dc-commands.md §1.2, DI code 3)
SMU_LOWEST_RANGE = 100e-9
#: points of one list sweep (`VL`, 4200RM p.9-25)
MAX_LIST = 4096
#: `SP` status byte: bit0 data ready, bit1 syntax error, bit4 busy (dc-commands.md §1.1, PM-K);
#: a system-mode test is finished when the byte is 0 or 1 (TEK-S)
SP_SYNTAX, SP_BUSY = 2, 16


def _smu_source(limits, m) -> None:
    """`DVch,range,V,Icomp` / `DIch,range,I,Vcomp`; a bare `DVch` / `DIch` turns it off."""
    kind, ch, rng, value, comp = m.groups()
    if rng is None:
        return
    limits.check_source(kind, float(value), float(comp), where=f"K4200 raw D{kind}{ch}")


def _list_levels(limits, m) -> None:
    """`VLch, master, Icomp, v1, ..., vk`: every level in the envelope, the compliance too."""
    comp, body = float(m.group(1)), m.group(2)
    for v in re.findall(NUM, body):
        limits.check_source("V", float(v), comp, where="K4200 raw VL level")


def _sarb_levels(limits, m) -> None:
    for v in re.findall(NUM, m.group(1)):
        limits.check_level(float(v), where="K4200 raw SARB level")


_ARRAY = rf"(?:,\s*{NUM})+"
#: a SARB TIME array as the driver sends it: channel, sequence, the times
_SARB_TIME = re.compile(r":PMU:SARB:SEQ:TIME (\d+),(\d+),(.*)$")
#: every KXCI command the raw guard knows (instruments.md §4, dc-commands.md §1): those that
#: set an output level are parsed and checked; the others set none. System mode: only what the
#: list sweep sends (`CH` voltage-source channels, `VL`, `HT`, `DT`, `SS`, `SM`, `DM2`, `LI`,
#: `MD`, `ME1`, `DO`). Not listed (so refused): standard-pulse, other sweep and PGU commands
#: (`:PMU:PULSE:*`, `:PMU:STEP:*`, `:PMU:SWEEP:*`, `PV`, `VR`, `VP`, `VC`, `IL`, `DS`...),
#: `ME2`-`ME4` (unconfirmed), SARB `:ADD` arrays, other user-library modules, the custom
#: integration `IT4,...` and `RI` (unconfirmed in user mode).
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
    # system mode (dc-commands.md §1.3): channel definitions, list sweep, timing, listing, run
    "SS": ("SS", None), "SM": ("SM", None), "MD": ("MD", None), "DM": ("DM2", None),
    "ME": ("ME1", None),
    "CH": (r"CH\d(?:,\s*'V\d',\s*'I\d',\s*1,\s*1)?", None),   # V source, VAR1 / channel off
    "VL": (rf"VL\d,\s*[01],\s*({NUM})((?:,\s*{NUM})+)", _list_levels),
    "HT": (rf"HT {NUM}", None), "DT": (rf"DT {NUM}", None),
    "LI": (r"LI '\w{1,6}'(?:,\s*'\w{1,6}')*", None),
    "DO": (r"DO '\w{1,6}'", None),
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


@dataclass
class ListSweep:
    """What a list sweep measured, per sensed SMU and point: `current` [A] (NaN on overflow),
    `volts` [V] (the output voltage where the SMU read compliance, else NaN), `status` (the
    reading's status letter: N, C this SMU in compliance, T another, V overflow...), and `t`
    [s] on the lab's clock."""

    current: dict
    volts: dict
    status: dict
    t: np.ndarray


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
        if not 1 <= seq <= MAX_SEQUENCES:
            raise InstrumentError(f"SARB sequence numbers are 1..{MAX_SEQUENCES}, got {seq}",
                                  instrument=k.name)
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
        #: segments of every SARB sequence defined since the last INIT: (channel, seq) -> count
        self._segments: dict[tuple[int, int], int] = {}

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
        self._segments.clear()

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
        plc = self._plc(nplc)
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

    def list_sweep(self, levels: Mapping[K4200Smu, Sequence[float]],
                   sensed: Sequence[K4200Smu], compliance: Mapping[K4200Smu, float], *,
                   nplc: float, i_range: float | None, delay: float = 0.0,
                   now: Callable[[], float], wait: Callable[[float], None]) -> ListSweep:
        """Force each SMU of `levels` through its list of k voltages, one point after the other,
        and read the current (and the output voltage) of every `sensed` SMU at each point: one
        system-mode test per MAX_LIST points (dc-commands.md §1.3, order as TEK-S):

            BC;DE;CHn, 'Vn', 'In', 1, 1 (each SMU used; CHn off for the others)
            SS;ITc;HT 0;DT delay;RG n, amps (each SMU)     VLn, master, Icomp, v1, ..., vk
            SM;DM2;LI 'In','Vn',...,'CHnT'                  MD;ME1
            SP (polled until 0 or 1)                        DO 'In' / 'Vn' / 'CHnT'

        The first SMU is the list master, the others subordinate. Unconfirmed (kept out of the
        docs' confirmed facts, dc-commands.md §1.3): that a subordinate list channel is defined
        with CH function 1 (VAR1) like the master, and that a list channel's readings follow
        its steps; a sensed SMU therefore sweeps a list of its levels (0 V for a meter) rather
        than a constant `VC`, whose reading per step the reference does not state. `delay` is
        the `DT` wait per point before it is measured (`HT` 0). The integration is the
        4200's 0.1 / 1 / 10 PLC at or above `nplc`, the lowest autorange `i_range` (else the
        100 nA range).

        The first `SP` poll is sent once the points' integrations can have passed (`wait`, the
        lab's clock: a real sleep on a probe station), then one poll per tenth of that. Every
        level and compliance is checked before anything is sent; a refused command, a syntax
        error reported by `SP`, a test that does not finish within the timeout or a malformed
        `DO` reply raises, after `make_safe` (every SMU off). Timestamps: `t` is the time of
        each reading on the lab's clock (the ME1 time plus the `CHnT` stamp of the first
        sensed SMU)."""
        smus = list(levels)
        k = len(levels[smus[0]]) if smus else 0
        if not smus or not sensed or any(len(v) != k for v in levels.values()) or k == 0:
            raise ValueError("a list sweep needs SMUs with lists of one length >= 1 and a "
                             "sensed SMU")
        if any(s not in levels for s in sensed):
            raise ValueError("every sensed SMU must be forced (a meter at 0 V)")
        for smu in smus:
            self.limits.check_compliance(compliance[smu], where=str(smu))
            for v in levels[smu]:
                self.limits.check_level(float(v), where=str(smu))
        plc = self._plc(nplc)
        try:
            parts = [self._list_chunk(smus, {s: levels[s][a:a + MAX_LIST] for s in smus},
                                      sensed, compliance, plc, i_range, delay, now, wait)
                     for a in range(0, k, MAX_LIST)]
        except BaseException:
            try:  # the error that stopped the sweep is what matters
                self.make_safe()
            except Exception:
                pass
            raise
        return ListSweep({s: np.concatenate([p.current[s] for p in parts]) for s in sensed},
                         {s: np.concatenate([p.volts[s] for p in parts]) for s in sensed},
                         {s: np.concatenate([p.status[s] for p in parts]) for s in sensed},
                         np.concatenate([p.t for p in parts]))

    def _plc(self, nplc: float) -> float:
        return min((c for c in IT_CODES if c >= nplc * (1 - 1e-9)), default=10.0)

    def _list_chunk(self, smus, levels, sensed, compliance, plc, i_range, delay, now,
                    wait) -> ListSweep:
        k = len(levels[smus[0]])
        used = {s.number for s in smus}
        self._mode = "SY"   # system mode: the next user-mode command sends US again
        self.cmd(";".join(["BC", "DE"] + [f"CH{n}, 'V{n}', 'I{n}', 1, 1" for n in sorted(used)]
                          + [f"CH{n}" for n in range(1, self.smus + 1) if n not in used]))
        self.cmd(";".join(["SS", f"IT{IT_CODES[plc]}", "HT 0", f"DT {fmt(delay)}"]
                          + [f"RG {s.number}, {fmt(i_range or SMU_LOWEST_RANGE)}"
                             for s in smus]))
        for a, smu in enumerate(smus):
            self.cmd(f"VL{smu.number}, {1 if a == 0 else 0}, {fmt(compliance[smu])}, "
                     + ", ".join(fmt(v) for v in levels[smu]))
        stamp = f"CH{sensed[0].number}T"
        names = [f"{x}{s.number}" for s in sensed for x in "IV"] + [stamp]
        self.cmd("SM;DM2;LI " + ",".join(f"'{n}'" for n in names))
        t0 = now()
        self.cmd("MD;ME1")
        # the points' settling is the SMUs' own; their integrations and delays at least
        expected = k * (delay + plc / 50.0)
        self._await_test(t0, expected, wait, now)
        current = {s: self._readings(f"I{s.number}", k) for s in sensed}
        volts = {}
        for s in sensed:  # where a meter was in compliance, its output voltage says where
            volts[s] = np.full(k, np.nan)
            comp = current[s][1] == "C"
            if comp.any():
                volts[s] = np.where(comp, self._readings(f"V{s.number}", k)[0], np.nan)
        stamps = self._readings(stamp, k)[0]
        return ListSweep({s: current[s][0] for s in sensed}, volts,
                         {s: current[s][1] for s in sensed}, t0 + stamps)

    def _await_test(self, t0: float, expected: float, wait, now) -> None:
        """Poll `SP` until the test has finished (0 or 1), first once `expected` seconds have
        passed since `t0`, then every tenth of it; InstrumentTimeout after `timeout` more."""
        left = t0 + expected - now()
        if left > 0:
            wait(left)
        step, waited = max(expected / 10, 1e-3), 0.0
        while True:
            reply = self.query("SP")
            try:
                status = int(reply)
            except ValueError:
                raise InstrumentError("bad status byte", instrument=self.name, command="SP",
                                      reply=reply) from None
            if status & SP_SYNTAX:
                raise InstrumentError("the list sweep was refused (SP: syntax error)",
                                      instrument=self.name, command="SP", reply=reply)
            if status in (0, 1):
                return
            if waited > self.timeout:
                raise InstrumentTimeout("system-mode test still running", instrument=self.name,
                                        command="ME1")
            wait(step)
            waited += step

    def _readings(self, name: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`DO 'name'`: k readings `X±N.NNNNE±NN` (status letter, value), comma or CR/LF
        delimited (4200RM p.9-52); an overflow (status V, or a value over 1e37 as SM-4200
        reads it: KXCI's number is unconfirmed) becomes NaN with status V."""
        command = f"DO '{name}'"
        reply = self.query(command)
        items = [x.strip() for x in re.split(r"[,\r\n]+", reply) if x.strip()]
        try:
            status = np.array([x[0] if x[0].isalpha() else "N" for x in items])
            value = np.array([float(x[1:] if x[0].isalpha() else x) for x in items])
        except (ValueError, IndexError):
            raise InstrumentError(f"bad readings of {name}", instrument=self.name,
                                  command=command, reply=reply[:200]) from None
        if len(items) != k:
            raise InstrumentError(f"expected {k} readings of {name}, got {len(items)}",
                                  instrument=self.name, command=command, reply=reply[:200])
        over = (status == "V") | ~(np.abs(value) <= 1e37)
        status[over] = "V"
        value[over] = np.nan
        return value, status

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
        self._segments.clear()  # INIT clears the sequences
        self._mode = ""
        self.cmd(":PMU:INIT 1")
        for ch in channels:
            self.cmd(f":PMU:RPM:CONFIGURE PMU1-{ch}, 0")
            self.cmd(f":PMU:SOURCE:RANGE {ch}, {v_range}")
            self.cmd(f":PMU:MEASURE:RANGE {ch}, 2, {fmt(i_range)}")
            self.cmd(f":PMU:LOAD {ch}, {fmt(load)}")

    def send_setup(self, pairs: Sequence[tuple[str, str]]) -> int:
        """Send (key, command) pairs, skipping those unchanged since last sent. Refuses before
        sending any of them a set of SARB sequences a channel cannot hold (MAX_SEGMENTS)."""
        segments = dict(self._segments)
        for _, command in pairs:
            m = _SARB_TIME.match(command)
            if m:
                ch, seq = int(m.group(1)), int(m.group(2))
                segments[(ch, seq)] = m.group(3).count(",") + 1
                held = sum(n for (c, _), n in segments.items() if c == ch)
                if held > MAX_SEGMENTS:
                    raise InstrumentError(
                        f"PMU channel {ch} would hold {held} SARB segments (at most "
                        f"{MAX_SEGMENTS}, confirm on hardware)", instrument=self.name,
                        command=command[:80])
        sent = sum(self.cmd_cached(k, c) for k, c in pairs)
        self._segments = segments
        return sent

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
