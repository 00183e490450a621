"""Keysight B1500A over FLEX (instruments.md §2): identity, module map, SMU DC bias, error queue.

Commands of one batch are joined with `;` into one message (the 256-character input buffer is
respected) and followed by one `ERRX?`, so a batch costs two round trips however many commands it
holds. The WGFMU module is not programmed through FLEX; see `instruments.wgfmu`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from instruments.errors import InstrumentError
from instruments.visa import NUM, MessageInstrument, allow_list, check_current, fmt

#: FLEX input buffer is 256 characters incl. terminator; stay where QCoDeS stays
MAX_MESSAGE = 250

#: modules (`UNT?` model names) that make their slot an SMU channel
SMU_MODELS = ("B1511B", "B1517A", "B1510A", "B1514A")

#: DV voltage ranges (code -> full scale in V) of the SMUs we use
V_RANGES = {0: None, 20: 2.0, 200: 20.0}


def parse_spot(reply: str) -> float:
    """One FLEX spot value `NAI+000.005E-09` -> float; raise on over-range or malformed."""
    part = reply.strip().split(",")[0]
    if len(part) < 4:
        raise ValueError(f"malformed FLEX value {reply!r}")
    status, value = part[0], float(part[3:])
    if status == "V" or abs(value) > 1e99:
        raise ValueError(f"over range {reply!r}")
    return value


def _smu_source(limits, m) -> None:
    """`DV ch,range,V,Icomp[,pol[,Irange]]` / `DI ch,range,I,Vcomp[,pol[,Vrange]]`. The
    compliance is required: without it the SMU would use a default the guard cannot check."""
    kind, ch, _rng, value, comp = m.groups()
    where = f"B1500 raw D{kind} {ch}"
    value, comp = float(value), float(comp)
    if kind == "V":
        limits.check_level(value, where=where)
        limits.check_compliance(abs(comp), where=where)
    else:  # forcing a current: the output swings up to the voltage compliance, its sign
        check_current(limits, value, where)
        limits.check_level(math.copysign(abs(comp), value), where=where)


_CHANNELS = r"(?: \d+(?:,\s*\d+)*)?"
#: every FLEX command the raw guard knows (instruments.md §2, dc-commands.md §2), matched
#: upper-cased (FLEX headers are case-insensitive): DV and DI are parsed and checked, the others
#: set no level. Not listed (so refused): sweeps and pulsed sources (`WV`, `WI`, `PV`, `MV`...),
#: `RZ` (restores levels set earlier), `XE` (runs whatever was set up), and the rest.
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
    "TIV": (r"TIV \d+(?:,\s*-?\d+,\s*-?\d+)?", None),
    "RI": (r"RI \d+,\s*-?\d+", None), "AAD": (r"AAD \d+,\s*[012]", None),
    "BC": ("BC", None), "TSR": (r"TSR(?: \d+)?", None),
}, re.ASCII)


class B1500(MessageInstrument):
    kind = "B1500"
    read_termination = "\r\n"
    write_termination = "\r\n"
    RAW_COMMANDS = RAW_COMMANDS
    RAW_CASE_SENSITIVE = False

    def __init__(self, resource, **kw):
        super().__init__(resource, **kw)
        self._enabled: set[int] = set()

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
        self._enabled.clear()

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
            code, text = errs[0]
            more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
            raise InstrumentError(f"B1500 error {code}: {text}{more}", instrument=self.name,
                                  command=command, reply=f'{code},"{text}"')

    # -- SMU DC ----------------------------------------------------------------------------------
    def enable(self, channels: Iterable[int]) -> None:
        chans = sorted(set(int(c) for c in channels))
        self.batch(["CN " + ",".join(str(c) for c in chans)])
        self._enabled.update(chans)

    def disable(self, channels: Iterable[int] | None = None) -> None:
        if channels is None:
            self.batch(["CL"])
            self._enabled.clear()
        else:
            chans = sorted(set(int(c) for c in channels))
            self.batch(["CL " + ",".join(str(c) for c in chans)])
            self._enabled.difference_update(chans)

    def dv_command(self, channel: int, volts: float, compliance: float, vrange: int = 0) -> str:
        """The DV string for a bias level, after the station limits accepted it."""
        self.limits.check_level(volts, where=f"{self.name} DV {channel}")
        self.limits.check_compliance(compliance, where=f"{self.name} DV {channel}")
        if vrange not in V_RANGES:
            raise InstrumentError(f"unsupported DV range {vrange}", instrument=self.name)
        return f"DV {int(channel)},{vrange},{fmt(volts)},{fmt(compliance)}"

    def force_voltages(self, levels: dict[int, float], compliance: float) -> None:
        """Set several SMU channels in one batch (all levels checked before any byte is sent)."""
        cmds = [self.dv_command(ch, v, compliance) for ch, v in levels.items()]
        self.batch(cmds)

    def force_voltage(self, channel: int, volts: float, compliance: float) -> None:
        self.force_voltages({channel: volts}, compliance)

    def measure_current(self, channel: int) -> float:
        reply = self.query(f"TI {int(channel)}")
        try:
            return parse_spot(reply)
        except ValueError:
            raise InstrumentError("bad current reading", instrument=self.name,
                                  command=f"TI {channel}", reply=reply) from None

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
            self._enabled.clear()
        if reply != "1":
            raise InstrumentError("outputs not confirmed off", instrument=self.name,
                                  command="*OPC?", reply=reply)
