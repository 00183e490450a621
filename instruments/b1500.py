"""Keysight B1500A over FLEX (instruments.md §2, dc-commands.md §2): identity, module map, SMU DC
source and spot measurement, error queue.

Commands of one batch are joined with `;` into one message (the 256-character input buffer is
respected) and followed by one `ERRX?`, so a batch costs two round trips however many commands it
holds. The WGFMU module is not programmed through FLEX; see `instruments.wgfmu`.

SMUs are objects, `b.smu(slot)`: force a voltage, measure (`TI`/`TV`, with the reply's status:
compliance, overflow), its measurement range (`RI`) and ADC (`AAD`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from instruments.errors import InstrumentError
from instruments.smu import Spot, parse_spot
from instruments.visa import NUM, MessageInstrument, allow_list, fmt

#: FLEX input buffer is 256 characters incl. terminator; stay where QCoDeS stays
MAX_MESSAGE = 250

#: modules (`UNT?` model names) that make their slot an SMU channel
SMU_MODELS = ("B1511B", "B1517A", "B1510A", "B1514A")

#: DV voltage ranges (code -> full scale in V) of the SMUs we use
V_RANGES = {0: None, 20: 2.0, 200: 20.0}
#: current range codes -> full scale [A] (dc-commands.md §2.3): RI takes +code (limited auto)
#: or -code (fixed), 0 = auto
I_RANGE_CODES = {8: 1e-12, 9: 10e-12, 10: 100e-12, 11: 1e-9, 12: 10e-9, 13: 100e-9, 14: 1e-6,
                 15: 10e-6, 16: 100e-6, 17: 1e-3, 18: 10e-3, 19: 100e-3}
#: ADC types of AAD/AIT: high-speed, high-resolution (dc-commands.md §2.2)
ADC_HS, ADC_HR = 0, 1


def range_code(amps: float) -> int:
    """The code of the smallest current range holding `amps` [A]."""
    for code, full in I_RANGE_CODES.items():
        if full >= amps * (1 - 1e-9):
            return code
    raise ValueError(f"no current range holds {amps!r} A")


def _smu_source(limits, m) -> None:
    """`DV ch,range,V,Icomp[,pol[,Irange]]` / `DI ch,range,I,Vcomp[,pol[,Vrange]]`. The
    compliance is required: without it the SMU would use a default the guard cannot check."""
    kind, ch, _rng, value, comp = m.groups()
    limits.check_source(kind, float(value), float(comp), where=f"B1500 raw D{kind} {ch}")


_CHANNELS = r"(?: \d+(?:,\s*\d+)*)?"
#: every FLEX command the raw guard knows (instruments.md §2, dc-commands.md §2), matched
#: upper-cased (FLEX headers are case-insensitive): DV and DI are parsed and checked, the others
#: set no level. Not listed (so refused): sweeps and pulsed sources (`WV`, `WI`, `PV`, `MV`...),
#: `RZ` (restores levels set earlier), `XE` (runs whatever was set up), and the rest. The DC
#: path measures point by point with DV/TI; the staircase sweep (WV/WT/WM/MM/XE) is not used.
RAW_COMMANDS = allow_list({
    "*IDN?": (r"\*IDN\?", None), "UNT?": (r"UNT\?", None), "*OPC?": (r"\*OPC\?", None),
    "ERRX?": (r"ERRX\?(?: [01])?", None), "ERR?": (r"ERR\?(?: [01])?", None),
    "*RST": (r"\*RST", None), "FMT": (r"FMT \d+(?:,\s*\d+)?", None),
    "CN": (f"CN{_CHANNELS}", None), "CL": (f"CL{_CHANNELS}", None),
    "DZ": (f"DZ{_CHANNELS}", None),
    "DV": (rf"D(V) ?(\d+),\s*(\d+),\s*({NUM}),\s*({NUM})(?:,\s*\d+(?:,\s*\d+)?)?",
           _smu_source),
    "DI": (rf"D(I) ?(\d+),\s*(\d+),\s*({NUM}),\s*({NUM})(?:,\s*\d+(?:,\s*\d+)?)?",
           _smu_source),
    "TI": (r"TI \d+(?:,\s*-?\d+)?", None), "TV": (r"TV \d+(?:,\s*-?\d+)?", None),
    "AIT": (rf"AIT [0-2],\s*[0-3](?:,\s*{NUM})?", None),
    "TIV": (r"TIV \d+(?:,\s*-?\d+,\s*-?\d+)?", None),
    "RI": (r"RI \d+,\s*-?\d+", None), "AAD": (r"AAD \d+,\s*[012]", None),
    "BC": ("BC", None), "TSR": (r"TSR(?: \d+)?", None),
}, re.ASCII)


class B1500Smu:
    """The SMU in slot `number` of a B1500 (its FLEX channel number)."""

    def __init__(self, b: B1500, number: int):
        self.b, self.number = b, int(number)

    def __repr__(self) -> str:
        return f"{self.b.name} SMU{self.number}"

    def dv(self, volts: float, compliance: float, vrange: int = 0) -> str:
        """The DV command for a level, after the station limits accepted it."""
        b = self.b
        b.limits.check_level(volts, where=f"{b.name} DV {self.number}")
        b.limits.check_compliance(compliance, where=f"{b.name} DV {self.number}")
        if vrange not in V_RANGES:
            raise InstrumentError(f"unsupported DV range {vrange}", instrument=b.name)
        return f"DV {self.number},{vrange},{fmt(volts)},{fmt(compliance)}"

    def force_voltage(self, volts: float, compliance: float) -> None:
        self.b.force_voltages({self: volts}, compliance)

    def measure_range(self, code: int) -> None:
        """`RI ch,code`: 0 auto, +code limited auto (never below), -code fixed
        (dc-commands.md §2.2, QC-C IMeasRange)."""
        if code and abs(code) not in I_RANGE_CODES:
            raise InstrumentError(f"unsupported current range code {code}", instrument=self.b.name)
        self.b.batch([f"RI {self.number},{int(code)}"])

    def adc(self, kind: int) -> None:
        """`AAD ch,type`: the ADC this SMU measures with (ADC_HS or ADC_HR)."""
        self.b.batch([f"AAD {self.number},{int(kind)}"])

    def measure_current(self) -> Spot:
        """`TI ch`: one current reading with its status (C compliance, V overflow...)."""
        return self._measure("I")

    def measure_voltage(self) -> Spot:
        return self._measure("V")

    def _measure(self, kind: str) -> Spot:
        command = f"T{kind} {self.number}"
        reply = self.b.query(command)
        try:
            return parse_spot(reply, kind)
        except ValueError:
            raise InstrumentError(f"bad {'current' if kind == 'I' else 'voltage'} reading",
                                  instrument=self.b.name, command=command, reply=reply) from None


class B1500(MessageInstrument):
    kind = "B1500"
    read_termination = "\r\n"
    write_termination = "\r\n"
    RAW_COMMANDS = RAW_COMMANDS
    RAW_CASE_SENSITIVE = False

    def __init__(self, resource, **kw):
        super().__init__(resource, **kw)
        self._enabled: set[int] = set()
        self._smus: dict[int, B1500Smu] = {}

    def smu(self, number: int) -> B1500Smu:
        """The SMU in slot `number` (one object per slot: usable as a dict key)."""
        if not 1 <= number <= 10:
            raise ValueError(f"a B1500 has slots 1..10, not {number!r}")
        return self._smus.setdefault(number, B1500Smu(self, number))

    def forget(self) -> None:
        self._enabled.clear()

    def snapshot(self) -> dict:
        return {"kind": self.kind, "name": self.name, "idn": self.idn(),
                "modules": [f"slot {i + 1} {m} rev {r}" for i, (m, r) in
                            enumerate(self.modules()) if m != "0"],
                "settings": "not read back (FLEX *LRN? types other than 32 unconfirmed)"}

    # -- identity ------------------------------------------------------------------------------
    def idn(self) -> str:
        return self.query("*IDN?")

    def modules(self) -> list[tuple[str, str]]:
        """`UNT?` as [(model, revision)] per slot 1..10; an empty slot is ('0', '0')."""
        reply = self.query("UNT?")
        out = []
        for item in reply.split(";"):
            fields = item.split(",")
            if len(fields) != 2:
                raise InstrumentError("malformed module list", instrument=self.name,
                                      command="UNT?", reply=reply)
            out.append((fields[0].strip(), fields[1].strip()))
        return out

    def connect(self) -> None:
        """Session start: ASCII data format, then check the error queue."""
        self.batch(["FMT 1,0"])

    def reset(self) -> None:
        self.batch(["*RST"])
        self.forget()

    # -- batches -------------------------------------------------------------------------------
    def batch(self, commands: Sequence[str]) -> None:
        """Send commands as few `;`-joined messages as the buffer allows, then one ERRX?."""
        msg = ""
        for cmd in commands:
            if len(cmd) > MAX_MESSAGE:
                raise InstrumentError("command longer than the input buffer",
                                      instrument=self.name, command=cmd)
            if msg and len(msg) + 1 + len(cmd) > MAX_MESSAGE:
                self.write(msg)
                msg = cmd
            else:
                msg = f"{msg};{cmd}" if msg else cmd
        if msg:
            self.write(msg)
        self.check_errors(";".join(commands))

    def errors(self) -> list[tuple[int, str]]:
        """Drain the error queue with ERRX? (code, message); empty list if none."""
        out = []
        for _ in range(31):  # queue holds 30
            reply = self.query("ERRX?")
            code, _, text = reply.partition(",")
            try:
                n = int(code)
            except ValueError:
                raise InstrumentError("malformed error reply", instrument=self.name,
                                      command="ERRX?", reply=reply) from None
            if n == 0:
                break
            out.append((n, text.strip().strip('"')))
        return out

    def check_errors(self, command: str = "") -> None:
        errs = self.errors()
        if errs:
            self.forget()  # a refused command: what the instrument holds now is unknown
            code, text = errs[0]
            more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
            raise InstrumentError(f"B1500 error {code}: {text}{more}", instrument=self.name,
                                  command=command, reply=f'{code},"{text}"')

    # -- SMU DC ----------------------------------------------------------------------------------
    def enable(self, smus: Iterable[B1500Smu]) -> None:
        chans = sorted({s.number for s in smus})
        self.batch(["CN " + ",".join(str(c) for c in chans)])
        self._enabled.update(chans)

    def disable(self, smus: Iterable[B1500Smu] | None = None) -> None:
        if smus is None:
            self.batch(["CL"])
            self._enabled.clear()
        else:
            chans = sorted({s.number for s in smus})
            self.batch(["CL " + ",".join(str(c) for c in chans)])
            self._enabled.difference_update(chans)

    def force_voltages(self, levels: dict[B1500Smu, float],
                       compliance: float | Mapping[B1500Smu, float]) -> None:
        """Set several SMUs in one batch (all levels and compliances, one for all or per SMU,
        checked before any byte is sent)."""
        comp = compliance if isinstance(compliance, Mapping) else dict.fromkeys(levels,
                                                                                 compliance)
        self.batch([smu.dv(v, comp[smu]) for smu, v in levels.items()])

    def integration(self, adc: int, plc: float) -> None:
        """`AIT adc,2,N`: the ADC integrates N power-line cycles (dc-commands.md §2.2; the
        QCoDeS test `AIT 0,2,3`)."""
        if not 1 <= plc <= 100 or plc != int(plc):
            raise InstrumentError(f"integration of {plc!r} PLC: 1..100 whole cycles",
                                  instrument=self.name)
        self.batch([f"AIT {int(adc)},2,{int(plc)}"])

    # -- the DC path's interface (instruments.dc) ------------------------------------------------
    def prepare_smus(self, smus: Sequence[B1500Smu], *, nplc: float, i_range: float | None,
                     fixed: bool) -> float:
        """Outputs on (CN), the high-resolution ADC integrating whole power-line cycles (at least
        `nplc`), and each SMU's current range: auto, limited auto from `i_range`, or fixed there.
        One batch. Returns the PLC used."""
        plc = float(min(100, max(1, math.ceil(nplc - 1e-9))))
        code = 0 if i_range is None else (-1 if fixed else 1) * range_code(i_range)
        chans = sorted({s.number for s in smus})
        self.batch(["CN " + ",".join(str(c) for c in chans)]
                   + [f"AAD {c},{ADC_HR}" for c in chans] + [f"RI {c},{code}" for c in chans]
                   + [f"AIT {ADC_HR},2,{int(plc)}"])
        self._enabled.update(chans)
        return plc

    def release_smus(self, smus: Sequence[B1500Smu]) -> None:
        """DZ then CL on the SMUs used: 0 V, then their output relays open."""
        chans = ",".join(str(c) for c in sorted({s.number for s in smus}))
        self.batch([f"DZ {chans}", f"CL {chans}"])
        self._enabled.difference_update(s.number for s in smus)

    def zero(self) -> None:
        """DZ: every channel to 0 V (setup stored)."""
        self.batch(["DZ"])

    def make_safe(self) -> None:
        # DZ then CL: outputs at 0 V, then relays of every channel open. `*OPC?` answers once
        # both are done, so a lost message or a lost instrument is noticed, never assumed away.
        try:
            self.write("DZ;CL")
            reply = self.query("*OPC?")
        finally:
            self.forget()
        if reply != "1":
            raise InstrumentError("outputs not confirmed off", instrument=self.name,
                                  command="*OPC?", reply=reply)
