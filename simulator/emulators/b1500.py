"""Emulated Keysight B1500A, FLEX subset: *IDN?, *RST, *OPC?, UNT?, FMT, CN, CL, DV, DZ, TI, TV,
AAD, AIT, RI, MM, BC, TSR, ERRX?, ERR?.

SMU channel N is the world terminal `smuN`: floating while disabled (CL), 0 V once enabled
(CN), its DV level after DV, with DV's current compliance (the world's DC operating point clips
the current there). DV range codes are output ranges in "limited auto": the SMU uses the
smallest of its ranges that holds the value, never below the one named. Commands of one message
are split at `;`. A bad command or parameter puts an entry in the error queue (read by
ERRX?/ERR?) and does nothing; a bad query also produces no reply (the caller times out), as the
instrument does. Error codes are this emulator's choice where the guide was not at hand: 100
undefined command, 120 bad parameter, 150 channel not installed or not enabled.

Measurements (dc-commands.md §2.2-2.4): `TI ch[,range]` / `TV ch[,range]` answer one FMT1
element `ABC+DDD.DDDE+XX` (status, channel letter A-J for slots 1-10, I or V, 12 characters).
Status C: this channel is in compliance; T: another channel is; V: over range (the value is then
199.999E+99); N otherwise. The current measurement range is `RI ch,code` (0 auto, +code limited
auto: never below that range, -code fixed: a current beyond it overflows), or the range given
with TI; codes 8-19 are 1 pA to 100 mA (§2.3). The value is written in the engineering unit of
the range in use (1 nA .. 100 nA ranges in E-09, 1 uA .. 100 uA in E-06, ...), so its last digit,
a thousandth of that unit, is the resolution (the field width is from E52PG p.1-25; the choice
of unit is this emulator's). Integration: `AIT type,2,N` = N power-line cycles for ADC type 0
(high-speed) or 1 (high-resolution), chosen per channel with `AAD ch,type`; other AIT modes
are refused here (default: 1 PLC).

Virtual time: a message that is answered (a query) costs one round trip, one that is not one
bus command; a measurement adds the source settling and its integration time.
"""

from __future__ import annotations

import math

from instruments.b1500 import SMU_MODELS

#: FLEX voltage output range codes -> full scale [V] (dc-commands.md §2.3); 11..15 are the
#: legacy forms of 20..2000. In DI the same numbers are *current* ranges (11 = 1 nA).
V_RANGE_FULL = {2: 0.2, 5: 0.5, 11: 2.0, 20: 2.0, 50: 5.0, 12: 20.0, 200: 20.0, 13: 40.0,
                400: 40.0, 14: 100.0, 1000: 100.0, 15: 200.0, 2000: 200.0}
#: voltage range codes each SMU model accepts (0 = auto)
_HR = {0, 5, 11, 20, 50, 12, 200, 13, 400, 14, 1000}
MODULE_V_CODES = {"B1517A": _HR, "B1511B": _HR,
                  "B1510A": {0, 11, 20, 12, 200, 13, 400, 14, 1000, 15, 2000},
                  "B1514A": {0, 2, 11, 20, 12, 200, 13, 400}}


#: FLEX current range codes -> full scale [A] (dc-commands.md §2.3)
I_RANGE_FULL = {8: 1e-12, 9: 10e-12, 10: 100e-12, 11: 1e-9, 12: 10e-9, 13: 100e-9, 14: 1e-6,
                15: 10e-6, 16: 100e-6, 17: 1e-3, 18: 10e-3, 19: 100e-3, 20: 1.0}
#: current measurement range codes per SMU model (PM-B; without ASU)
MODULE_I_CODES = {"B1517A": range(9, 20), "B1511B": range(11, 20), "B1510A": range(11, 21),
                  "B1514A": range(15, 21)}
OVERFLOW = 199.999e99


def output_range(model: str, code: int, volts: float) -> float | None:
    """Full scale [V] the SMU outputs `volts` on for DV range `code`, or None if it cannot.

    Output range codes are "limited auto": the smallest range of the module that holds the
    value, never below the range named (0 = full auto)."""
    codes = MODULE_V_CODES[model]
    if code not in codes:
        return None
    floor = V_RANGE_FULL.get(code, 0.0)
    fits = [V_RANGE_FULL[c] for c in codes if c and V_RANGE_FULL[c] >= max(floor, abs(volts))]
    return min(fits) if fits else None


class B1500Emulator:
    idn = "Agilent Technologies,B1500A,0,A.04.03.2010.0130"

    def __init__(self, world=None, modules: list[str] | None = None):
        self.world = world
        # slot 1 WGFMU (channels 101/102), slots 2-3 medium-power SMUs, rest empty
        self.modules = (modules or ["B1530A", "B1517A", "B1517A"]) + ["0"] * 10
        self.modules = self.modules[:10]
        self.errors: list[tuple[int, str]] = []
        self.enabled: set[int] = set()
        self.levels: dict[int, float] = {}
        self.vranges: dict[int, float] = {}   # output range in use per channel [V full scale]
        self.compliance: dict[int, float] = {}  # DV current compliance per channel [A]
        self.irange: dict[int, int] = {}      # RI code per channel (0 auto)
        self.adc: dict[int, int] = {}         # AAD: ADC type per channel (0 high-speed)
        self.plc: dict[int, float] = {0: 1.0, 1: 1.0}  # AIT: PLC per ADC type
        self.fmt = (1, 0)
        self._publish()

    @property
    def smu_channels(self) -> list[int]:
        return [i + 1 for i, m in enumerate(self.modules) if m in SMU_MODELS]

    def output_levels(self) -> dict[int, float]:
        """Voltage at each SMU output [V]; NaN = output relay open (disabled)."""
        return {ch: (self.levels.get(ch, 0.0) if ch in self.enabled else math.nan)
                for ch in self.smu_channels}

    def _publish(self) -> None:
        if self.world is None:
            return
        self.world.settle_dc()
        for ch, v in self.output_levels().items():
            self.world.static[f"smu{ch}"] = v
            self.world.compliance[f"smu{ch}"] = self.compliance.get(ch, 0.1)

    def _err(self, code: int, text: str) -> None:
        if len(self.errors) < 30:
            self.errors.append((code, text))

    def _chans(self, args: list[str], need_enabled: bool = False) -> list[int] | None:
        try:
            chans = [int(a) for a in args if a.strip()]
        except ValueError:
            self._err(120, "Incorrect parameter.")
            return None
        for c in chans:
            if c not in self.smu_channels or (need_enabled and c not in self.enabled):
                self._err(150, f"Channel {c} not installed or not enabled.")
                return None
        return chans

    def handle(self, msg: str) -> str | None:
        reply = self._handle(msg)
        if self.world is not None:
            lat = self.world.latency
            self.world.clock.advance(lat.gpib_cmd if reply is None else lat.round_trip,
                                     "bus" if reply is None else "round_trip")
        return reply

    def _handle(self, msg: str) -> str | None:
        replies: list[str] = []
        for part in msg.split(";"):
            part = part.strip()
            if not part:
                continue
            head, _, rest = part.partition(" ")
            head = head.upper()
            args = [a.strip() for a in rest.split(",")] if rest.strip() else []
            r = self._one(head, args)
            if r is not None:
                replies.append(r)
        return ",".join(replies) if replies else None

    def _one(self, head: str, args: list[str]) -> str | None:
        if head == "*IDN?":
            return self.idn
        if head == "*OPC?":
            return "1"
        if head == "UNT?":
            return ";".join("0,0" if m == "0" else f"{m},0" for m in self.modules)
        if head == "ERRX?":
            if not self.errors:
                return '+0,"No Error."'
            code, text = self.errors.pop(0)
            return f'{code},"{text}"'
        if head == "ERR?":
            codes = [c for c, _ in self.errors[:4]] + [0] * 4
            self.errors.clear()
            return ",".join(str(c) for c in codes[:4])
        if head == "*RST":
            self.enabled.clear()
            self.levels.clear()
            self.vranges.clear()
            self.compliance.clear()
            self.irange.clear()
            self.adc.clear()
            self.plc = {0: 1.0, 1: 1.0}
            self._publish()
            return None
        if head == "FMT":
            if args[:1] not in (["1"], ["2"], ["3"], ["4"], ["5"]):
                self._err(120, "Incorrect FMT parameter.")
                return None
            self.fmt = tuple(int(a) for a in args)
            return None
        if head in ("CN", "CL"):
            chans = self._chans(args)
            if chans is None:
                return None
            if head == "CN":
                self.enabled |= set(chans or self.smu_channels)
            else:
                for c in chans or list(self.enabled):
                    self.enabled.discard(c)
                    self.levels.pop(c, None)
                    self.vranges.pop(c, None)
                    self.compliance.pop(c, None)
            self._publish()
            return None
        if head == "DZ":
            chans = self._chans(args)
            if chans is None:
                return None
            for c in chans or self.smu_channels:
                self.levels[c] = 0.0
            self._publish()
            return None
        if head == "DV":
            if len(args) < 3:
                self._err(120, "Incorrect parameter count for DV.")
                return None
            chans = self._chans(args[:1], need_enabled=True)
            if chans is None:
                return None
            try:
                vrange, v = int(args[1]), float(args[2])
                icomp = float(args[3]) if len(args) > 3 else 0.1
            except ValueError:
                self._err(120, "Incorrect numeric parameter.")
                return None
            full = output_range(self.modules[chans[0] - 1], vrange, v)
            if full is None or not 0 < abs(icomp) <= 0.1:
                self._err(120, "Parameter out of range.")
                return None
            self.levels[chans[0]] = v
            self.vranges[chans[0]] = full
            self.compliance[chans[0]] = abs(icomp)
            self._publish()
            return None
        if head in ("TI", "TV"):
            chans = self._chans(args[:1], need_enabled=True)
            if not chans:
                if chans == []:
                    self._err(120, "Channel required.")
                return None
            ch = chans[0]
            try:
                rng = int(args[1]) if len(args) > 1 else None
            except ValueError:
                self._err(120, "Incorrect numeric parameter.")
                return None
            return self._measure(head[1], ch, rng)
        if head == "RI":
            chans = self._chans(args[:1])
            if not chans or len(args) != 2:
                if chans == []:
                    self._err(120, "Channel required.")
                return None
            try:
                code = int(args[1])
            except ValueError:
                self._err(120, "Incorrect numeric parameter.")
                return None
            if code and abs(code) not in MODULE_I_CODES[self.modules[chans[0] - 1]]:
                self._err(120, "Parameter out of range.")
                return None
            self.irange[chans[0]] = code
            return None
        if head == "AAD":
            chans = self._chans(args[:1])
            if not chans or len(args) != 2 or args[1] not in ("0", "1", "2"):
                self._err(120, "Incorrect parameter.")
                return None
            self.adc[chans[0]] = int(args[1])
            return None
        if head == "AIT":
            try:
                adc, mode, n = int(args[0]), int(args[1]), float(args[2]) if len(args) > 2 else 1.0
            except (ValueError, IndexError):
                self._err(120, "Incorrect parameter.")
                return None
            if adc not in (0, 1) or mode != 2 or not 1 <= n <= 100:
                self._err(120, "Parameter out of range (this emulator: PLC mode only).")
                return None
            self.plc[adc] = n
            return None
        if head in ("MM", "BC", "TSR", "XE", "RZ"):
            return None  # accepted; no effect on the emulated physics
        self._err(100, f"Undefined GPIB command {head}.")
        return None

    # -- measurement -------------------------------------------------------------------------
    def _measure(self, kind: str, ch: int, rng: int | None) -> str:
        letter = "ABCDEFGHIJ"[ch - 1]
        volts, amps, mine, other = 0.0, 0.0, False, False
        if self.world is not None:
            lat = self.world.latency
            t_int = self.plc[min(self.adc.get(ch, 0), 1)] / lat.line_frequency
            self.world.clock.advance(lat.smu_settle + t_int, "dc")
            siblings = {f"smu{c}" for c in self.enabled if c != ch}
            volts, amps, mine, other = self.world.smu_reading(f"smu{ch}", siblings, t_int)
        status = "C" if mine else ("T" if other else "N")
        if kind == "V":
            return f"{status}{letter}V{_fmt(volts, self.vranges.get(ch, 2.0))}"
        code = self.irange.get(ch, 0) if rng is None else rng
        codes = MODULE_I_CODES[self.modules[ch - 1]]
        comp_range = min((I_RANGE_FULL[c] for c in codes
                          if I_RANGE_FULL[c] >= self.compliance.get(ch, 0.1)),
                         default=I_RANGE_FULL[codes[-1]])
        if code < 0:  # fixed
            full = I_RANGE_FULL.get(-code, comp_range)
            if abs(amps) > full:
                return f"V{letter}I{_fmt(OVERFLOW, 1.0)}"
        else:  # auto (0) or limited auto: the smallest range holding the value, >= the floor
            floor = I_RANGE_FULL.get(code, 0.0)
            full = min((I_RANGE_FULL[c] for c in codes
                        if I_RANGE_FULL[c] >= max(abs(amps), floor)), default=comp_range)
        return f"{status}{letter}I{_fmt(amps, full)}"


def _fmt(value: float, full_scale: float) -> str:
    """An FMT1 data field, 12 characters `+DDD.DDDE+XX`, in the engineering unit of the range
    (the overflow value in its own)."""
    if abs(value) >= 1e99:
        return f"{value / 1e99:+08.3f}E+99"
    e = 3 * math.floor(math.log10(full_scale) / 3 + 1e-9)
    return f"{value / 10.0 ** e:+08.3f}E{e:+03d}"
