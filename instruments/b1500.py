"""Keysight B1500A over FLEX (instruments.md §2): identity, module map, SMU DC bias, error queue.

Commands of one batch are joined with `;` into one message (the 256-character input buffer is
respected) and followed by one `ERRX?`, so a batch costs two round trips however many commands it
holds. The WGFMU module is not programmed through FLEX; see `instruments.wgfmu`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from instruments.errors import InstrumentError
from instruments.visa import MessageInstrument, fmt

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


def _floats(fields: Sequence[str]) -> list[float]:
    out = []
    for f in fields:
        try:
            out.append(float(f))
        except ValueError:
            pass  # not a number: the instrument refuses the command itself
    return out


#: FLEX commands that set an output voltage: head -> indices of the voltage fields
#: (DV ch,range,V; DI ch,range,I,Vcomp; PV ch,range,base,pulse; WV ch,mode,range,start,stop)
_LEVEL_FIELDS = {"DV": (2,), "DI": (3,), "PV": (2, 3), "WV": (3, 4), "TDV": (2,)}
_HEAD = re.compile(r"^\s*([A-Za-z]+)\s*(.*)$")  # `DV 1,...` and `DV1,...` alike


class B1500(MessageInstrument):
    kind = "B1500"
    read_termination = "\r\n"
    write_termination = "\r\n"

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

    def check_outgoing(self, command: str) -> None:
        """Refuse a raw FLEX message holding an output voltage beyond the station limits."""
        for part in command.split(";"):
            m = _HEAD.match(part)
            if m is None:
                continue
            head, rest = m.groups()
            idx = _LEVEL_FIELDS.get(head.upper())
            if idx is None:
                continue
            fields = [x.strip() for x in rest.split(",")]
            for v in _floats([fields[i] for i in idx if i < len(fields)]):
                try:
                    self.limits.check_level(v, where=f"{self.name} {head.upper()}")
                except InstrumentError as e:
                    raise type(e)(str(e), instrument=self.name, command=command) from None

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
        # DZ then CL: outputs at 0 V, then relays of every channel open. Errors are reported
        # by the caller's own check; here we only make sure both commands go out.
        try:
            self.write("DZ;CL")
        finally:
            self._enabled.clear()
