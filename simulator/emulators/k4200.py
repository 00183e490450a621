"""Emulated Keithley 4200A-SCS over KXCI (Ethernet): every setter answers `ACK`.

Covers *IDN?, *OPT?, ID, BC, US/DE/UL, the SMU user mode (DVn, TIn, TVn, RG n, a, ITn: see
below), EX (pmuulib kxci_rpm_switch), GP,
:ERROR:LAST:GET/CLEAR and the 4225-PMU segment-ARB subset: :PMU:INIT, :PMU:RPM:CONFIGURE,
:PMU:SOURCE:RANGE, :PMU:MEASURE:RANGE, :PMU:LOAD, :PMU:SARB:SEQ:(TIME|STARTV|STOPV|MEAS:TYPE|
MEAS:START|MEAS:STOP), :PMU:SARB:WFM:SEQ:LIST, :PMU:OUTPUT:STATE, :PMU:EXECUTE,
:PMU:TEST:STATUS?, :PMU:DATA:COUNT?, :PMU:DATA:GET, :PMU:ABORT.

PMU channel n is the world terminal `pmun` (0 V while its output is on and idle, floating when
off). :PMU:EXECUTE plays the listed sequences through `LabWorld.run`, so the levels on the
707B-routed lines really pulse the simulated devices; spot-mean segments (MEAS:TYPE 1 or 3)
return one point each with the sensed current. Each channel holds sequences 1..512 with at most
2048 segments in all of them (the driver's limits, to confirm on hardware, as the error code
-122 for exceeding them is); :PMU:INIT clears them. A refused command answers the error text
instead of ACK (`<message> (<code>)`, the same text :ERROR:LAST:GET returns; the exact KXCI
format is to confirm on hardware). Unknown commands: -992 "Unrecognized command".

SMUs (dc-commands.md §1.2). SMU n is world terminal `ksmu<n>`; SMU1 and SMU2 reach the array
through the 4225-RPMs: with RPM n in SMU mode (`:PMU:RPM:CONFIGURE PMU1-n, 2` or
`kxci_rpm_switch(n,3)`) the PMU channel's cable (`pmu<n>`) carries SMU n (a world link). `DVn`
forces a voltage with its current compliance (the world's DC operating point clips the current
there); `TIn`/`TVn` answer `XYZ+N.NNNNE+NN` (4200RM p.9-53): status C when this SMU is in
compliance, T when another SMU of this 4200 is, N otherwise. The measure range autoranges from
the `RG` floor (default 100 nA, the 4200-SMU's lowest range without preamp) to 100 mA; a value is
quantised to 1e-4 of the range in use (this emulator's reading of the 5-digit reply, not a
datasheet figure), so the floor limits the resolution of small currents. `IT1/2/3` integrate
0.1 / 1 / 10 power-line cycles. Every SMU command is acknowledged over Ethernet and costs one
round trip of virtual time; a measurement adds the source settling and the integration.

System mode, list sweeps only (dc-commands.md §1.3): `DE` (channel page) with `CHn, 'Vn', 'In',
1, 1` (a voltage-source VAR1 channel; bare `CHn` = undefined), `SS` with `VLn, master, Icomp,
v1, ...` (one master, the others subordinate, equal lengths, <= 4096 points), `HT 0`, `DT s`,
`IT`, `RG`; `SM` with `DM2` and `LI 'name',...`; `MD` with `ME1`, `SP` and `DO 'name'`. Commands
of one message (`;`-separated) are run in turn and answered with one ACK (or the first error).
`ME1` runs the test at once: the k points through `LabWorld.dc_sweep` (one batched nodal solve
for the analog read-out, each point's DC stress for its hold), the clock charged one round
trip for the execution and per point the source settling, the `DT` delay and the integration;
the swept SMUs are off afterwards. `SP` then answers 1 (data ready; 0 before any test), `DO`
the readings `X±N.NNNNE±NN` comma-separated (status and quantisation as `TI`), timestamps
`CHnT` [s since the test started] as plain numbers; a query costs a round trip and a `DO`
reply its bytes at `data_rate`. `HT` other than 0 and any other system-mode command are refused
(not emulated).
"""

from __future__ import annotations

import math
import re

import numpy as np

from simulator.emulators.world import Segment

_ARRAYS = ("TIME", "STARTV", "STOPV", "MEAS:TYPE", "MEAS:START", "MEAS:STOP")
_SARB = re.compile(r"^:PMU:SARB:SEQ:(TIME|STARTV|STOPV|MEAS:TYPE|MEAS:START|MEAS:STOP)\s+(.*)$")
_EX = re.compile(r"^EX (\w+) (\w+)\((.*)\)$")
_DV = re.compile(r"^DV(\d)(?:,\s*(\d+),\s*([-+.\deE]+),\s*([-+.\deE]+))?$")
_T = re.compile(r"^T([IV])(\d)$")
_RG = re.compile(r"^RG (\d),\s*([-+.\deE]+)$")
_CH = re.compile(r"^CH(\d)(?:,\s*'(\w{1,6})',\s*'(\w{1,6})',\s*(\d),\s*(\d))?$")
_VL = re.compile(r"^VL(\d),\s*([01]),\s*([-+.\deE]+)((?:,\s*[-+.\deE]+)+)$")
_NAMES = re.compile(r"'(\w{1,6})'")
#: list-sweep points per test (4200RM p.9-25)
MAX_LIST = 4096
#: SARB segments one channel holds in all its sequences (numbered 1..512); the 4225-PMU
#: datasheet figures as recalled, as the driver's (confirm on hardware, also the error code)
MAX_SEQUENCES, MAX_SEGMENTS = 512, 2048
#: 4200-SMU current ranges without preamp [A] (dc-commands.md §1.2, DI codes 3-9)
SMU_RANGES = (100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3)
#: IT code -> integration in power-line cycles (4200RM p.9-44)
IT_PLC = {1: 0.1, 2: 1.0, 3: 10.0}
#: RPM modes: `:PMU:RPM:CONFIGURE` code 2 and `kxci_rpm_switch` mode 3 are SMU (instruments.md §4)
RPM_SMU_CONFIGURE, RPM_SMU_SWITCH = 2, 3


class KxciError(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code, self.text = code, text


class K4200Emulator:
    #: `*IDN?` answers the IEEE-488.2 form, manufacturer, model, serial, version (as 4200A
    #: drivers' fixtures record it, e.g. hephy-dd/diode-measurement); KXCI's own `ID` answers
    #: `KI4200A V4.6.0` (pymeasure's fixture). Exact strings to confirm on the instrument.
    idn = "KEITHLEY INSTRUMENTS,KI4200A,1234567,V1.13"
    id_reply = "KI4200A V4.6.0"

    def __init__(self, world=None, smus: int = 4):
        self.world = world
        self.smus = int(smus)
        self.options = ",".join([f"SMU{n}" for n in range(1, self.smus + 1)]
                                + ["PMU1", "RPM1", "RPM2"])
        self.last_error = (0, "No error.")
        self.mode = ""
        #: SMU channel -> forced voltage (absent: output off)
        self.smu: dict[int, float] = {}
        self.smu_compliance: dict[int, float] = {}
        self.smu_floor: dict[int, float] = {}   # RG: lowest autorange [A]
        self.plc = 1.0                           # IT2
        self.rpm: dict[int, int] = {1: 0, 2: 0}  # RPM channel -> :PMU:RPM:CONFIGURE mode
        self.ul_params: list[float] = []
        self._reset_pmu()
        self.sarb = False
        self.executions = 0
        self._reset_system()

    def _reset_system(self) -> None:
        self.page = ""
        self.channels: dict[int, tuple[str, str]] = {}       # CH: channel -> (V name, I name)
        self.lists: dict[int, tuple[int, float, list[float]]] = {}  # VL: master, comp, levels
        self.delay = 0.0
        self.listed: list[str] = []
        self.readings: dict[str, str] = {}
        self.status_byte = 0
        self.tests = 0

    def _reset_pmu(self) -> None:
        self.sarb = False
        self.seqs: dict[tuple[int, int], dict[str, list[float]]] = {}
        self.seq_list: dict[int, list[tuple[int, int]]] = {}
        self.outputs: dict[int, bool] = {1: False, 2: False}
        self.ranges: dict[int, tuple] = {}
        self.data: dict[int, list[tuple[float, float, float, float]]] = {1: [], 2: []}
        # execution plans keyed by what they were built from (the sequence lists and the text
        # that defined every sequence they play): a tuning loop replays the same few waveforms
        self._seq_src: dict[tuple[int, int], dict[str, str]] = {}
        self._seq_key: dict[tuple[int, int], tuple] = {}
        self._plans: dict[tuple, object] = {}
        self._publish()

    def output_levels(self) -> dict[str, float]:
        """Idle output of each PMU channel and SMU [V]; NaN = output off."""
        out = {f"pmu{ch}": (0.0 if on else math.nan) for ch, on in self.outputs.items()}
        out.update({f"ksmu{ch}": v for ch, v in self.smu.items()})
        return out

    def _publish(self) -> None:
        if self.world is None:
            return
        w = self.world
        w.settle_dc()
        for ch, on in self.outputs.items():
            w.static[f"pmu{ch}"] = 0.0 if on else math.nan
        for ch in range(1, self.smus + 1):
            w.static[f"ksmu{ch}"] = self.smu.get(ch, math.nan)
            w.compliance[f"ksmu{ch}"] = self.smu_compliance.get(ch, 0.1)
        for ch, mode in self.rpm.items():
            if mode == RPM_SMU_CONFIGURE and ch <= self.smus:
                w.links[f"pmu{ch}"] = f"ksmu{ch}"
            else:
                w.links.pop(f"pmu{ch}", None)

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, msg: str) -> str | None:
        msg = msg.strip()
        try:
            reply = None
            for part in msg.split(";"):  # one message, one ACK (dc-commands.md §1.1)
                reply = self._dispatch(part.strip()) or reply
        except KxciError as e:
            self.last_error = (e.code, e.text)
            return f"{e.text} ({e.code})"
        except (ValueError, IndexError):
            self.last_error = (-122, "Illegal parameter")
            return "Illegal parameter (-122)"
        return "ACK" if reply is None else reply

    def _dispatch(self, msg: str) -> str | None:
        if msg.startswith(":PMU:"):
            return self._pmu(msg)
        if msg == "*IDN?":
            return self.idn
        if msg == "ID":
            return self.id_reply
        if msg == "*OPT?":
            return self.options
        if msg == ":ERROR:LAST:GET":
            code, text = self.last_error
            return f"{text} ({code})"
        if msg == ":ERROR:LAST:CLEAR":
            self.last_error = (0, "No error.")
            return None
        if msg == "BC":
            self.readings, self.status_byte = {}, 0
            return None
        if msg == "US":
            self.mode = "US"
            return None
        if msg == "UL":
            self.mode = "UL"
            return None
        if msg in ("DE", "SS", "SM", "MD"):
            self.mode, self.page = "SY", msg
            return None
        if self.mode == "SY" and msg[:2] in ("CH", "VL", "HT", "DT", "IT", "RG", "DM", "LI",
                                             "ME", "SP", "DO"):
            return self._system(msg)
        if msg == "SP":
            self._query_time()
            return str(self.status_byte)
        if msg[:2] in ("DV", "TI", "TV", "RG", "IT"):
            return self._smu_command(msg)
        m = _EX.match(msg)
        if m:
            if self.mode != "UL":
                raise KxciError(-992, "Failure")
            lib, mod, params = m.groups()
            if (lib, mod) != ("pmuulib", "kxci_rpm_switch"):
                raise KxciError(-990, f"Module {lib}.{mod} not found")
            vals = [float(x) for x in params.split(",")]
            if len(vals) != 2 or vals[0] not in (1, 2) or vals[1] not in (0, 1, 2, 3):
                raise KxciError(-122, "Illegal parameter")
            self.ul_params = vals
            # kxci_rpm_switch modes: 0 pulse, 1 CVU-2W, 2 CVU-4W, 3 SMU
            self.rpm[int(vals[0])] = RPM_SMU_CONFIGURE if vals[1] == RPM_SMU_SWITCH else 0
            self._publish()
            return "RETURN VALUE = 0"
        m = re.match(r"^GP (\d+)(?: (\d+))?$", msg)
        if m:
            i, n = int(m.group(1)), int(m.group(2) or 1)
            if not 1 <= i <= len(self.ul_params):
                raise KxciError(-122, "Illegal parameter")
            return "PARAM VALUE = " + ",".join(f"{self.ul_params[i - 1]:g}" for _ in range(n))
        raise KxciError(-992, "Unrecognized command")

    # -- SMU user mode ------------------------------------------------------------------------
    def _smu_command(self, msg: str, charge: bool = True) -> str | None:
        if self.world is not None and charge:  # acknowledged over Ethernet: one round trip each
            self.world.clock.advance(self.world.latency.round_trip, "round_trip")
        if msg[:2] == "IT":
            if msg[2:] not in ("1", "2", "3"):
                raise KxciError(-122, "Illegal parameter")
            self.plc = IT_PLC[int(msg[2:])]
            return None
        if self.mode != "US" and not (self.mode == "SY" and msg[:2] == "RG"):
            raise KxciError(-992, "Failure")
        m = _DV.match(msg)
        if m:
            ch = self._smu_ch(m.group(1))
            if m.group(2) is None:
                self.smu.pop(ch, None)
            else:
                rng, v, comp = int(m.group(2)), float(m.group(3)), float(m.group(4))
                if rng not in (0, 1, 2, 3) or not 0 < abs(comp) <= 0.105 or abs(v) > 210:
                    raise KxciError(-122, "Illegal parameter")
                self.smu[ch] = v
                self.smu_compliance[ch] = abs(comp)
            self._publish()
            return None
        m = _RG.match(msg)
        if m:
            ch, amps = self._smu_ch(m.group(1)), float(m.group(2))
            if not 0 < amps <= SMU_RANGES[-1]:
                raise KxciError(-122, "Illegal parameter")
            self.smu_floor[ch] = amps
            return None
        m = _T.match(msg)
        if not m:
            raise KxciError(-992, "Unrecognized command")
        kind, ch = m.group(1), self._smu_ch(m.group(2))
        volts, amps, mine, other = 0.0, 0.0, False, False
        if self.world is not None:
            lat = self.world.latency
            t_int = self.plc / lat.line_frequency
            self.world.clock.advance(lat.smu_settle + t_int, "dc")
            if ch in self.smu:
                siblings = {f"ksmu{n}" for n in self.smu if n != ch}
                volts, amps, mine, other = self.world.smu_reading(f"ksmu{ch}", siblings, t_int)
        status = "C" if mine else ("T" if other else "N")
        if kind == "V":
            letter = "ABCD"[ch - 1] if ch <= 4 else "GHIJ"[ch - 5]
            return f"{status}{letter}V{volts:+.4E}"
        return f"{status}{'ABCDEFGH'[ch - 1]}I{self._quantise(ch, amps):+.4E}"

    # -- system mode: list sweeps --------------------------------------------------------------
    def _query_time(self) -> None:
        if self.world is not None:
            self.world.clock.advance(self.world.latency.round_trip, "round_trip")

    def _system(self, msg: str) -> str | None:
        head = msg[:2]
        need = {"CH": "DE", "VL": "SS", "HT": "SS", "DT": "SS", "IT": "SS", "RG": "SS",
                "DM": "SM", "LI": "SM", "ME": "MD"}.get(head)
        if need is not None and self.page != need:
            raise KxciError(-992, "Failure")
        if head == "CH":
            m = _CH.match(msg)
            if not m:
                raise KxciError(-122, "Illegal parameter")
            ch = self._smu_ch(m.group(1))
            if m.group(2) is None:
                self.channels.pop(ch, None)
                self.lists.pop(ch, None)
                return None
            if (m.group(4), m.group(5)) != ("1", "1"):  # V source, VAR1: all that is emulated
                raise KxciError(-122, "Illegal parameter")
            self.channels[ch] = (m.group(2), m.group(3))
            return None
        if head == "VL":
            m = _VL.match(msg)
            if not m:
                raise KxciError(-122, "Illegal parameter")
            ch, comp = self._smu_ch(m.group(1)), float(m.group(3))
            vals = [float(x) for x in m.group(4).split(",")[1:]]
            if (ch not in self.channels or len(vals) > MAX_LIST or not 0 < abs(comp) <= 0.105
                    or any(abs(v) > 210 for v in vals)):
                raise KxciError(-122, "Illegal parameter")
            self.lists[ch] = (int(m.group(2)), abs(comp), vals)
            return None
        if head in ("HT", "DT"):
            seconds = float(msg[2:])
            if not 0 <= seconds <= 1000 or (head == "HT" and seconds != 0):
                raise KxciError(-122, "Illegal parameter")  # HT > 0: not emulated
            self.delay = seconds if head == "DT" else self.delay
            return None
        if head in ("IT", "RG"):
            return self._smu_command(msg, charge=False)
        if msg == "DM2":
            return None
        if head == "LI":
            self.listed = _NAMES.findall(msg)
            return None
        if msg == "ME1":
            self._run_test()
            return None
        if msg == "SP":
            self._query_time()
            return str(self.status_byte)
        m = re.match(r"^DO '(\w{1,6})'$", msg)
        if not m or m.group(1) not in self.readings:
            raise KxciError(-122, "Illegal parameter")
        reply = self.readings[m.group(1)]
        if self.world is not None:
            self._query_time()
            self.world.clock.advance(len(reply) / self.world.latency.data_rate, "transfer")
        return reply

    def _run_test(self) -> None:
        chans = sorted(self.channels)
        masters = [ch for ch in chans if self.lists.get(ch, (0,))[0] == 1]
        if not chans or any(ch not in self.lists for ch in chans) or len(masters) != 1:
            raise KxciError(-804, "list sweep: every channel needs a list, one the master")
        k = len(self.lists[masters[0]][2])
        if any(len(self.lists[ch][2]) != k for ch in chans):
            raise KxciError(-804, "list sweep: lists of unequal length")
        names = {n: ch for ch in chans for n in self.channels[ch]}
        names.update({f"CH{ch}T": ch for ch in chans})
        if any(n not in names for n in self.listed):
            raise KxciError(-804, "list sweep: a listed name is not defined")
        self.tests += 1
        self.readings = {}
        volts = {ch: np.asarray(self.lists[ch][2]) for ch in chans}
        cur = {ch: np.zeros(k) for ch in chans}
        lim = {ch: np.zeros(k, bool) for ch in chans}
        held = 0.0
        if self.world is not None:
            lat = self.world.latency
            t_int = self.plc / lat.line_frequency
            held = lat.smu_settle + self.delay + t_int
            self.world.clock.advance(lat.round_trip, "round_trip")   # arming the test
            for ch in chans:
                self.smu_compliance[ch] = self.lists[ch][1]
                self.world.compliance[f"ksmu{ch}"] = self.lists[ch][1]
            res = self.world.dc_sweep({f"ksmu{ch}": volts[ch] for ch in chans}, held, t_int)
            for ch in chans:
                volts[ch], cur[ch], lim[ch] = res[f"ksmu{ch}"]
            for ch in chans:  # after the test the swept SMUs are off
                self.smu.pop(ch, None)
            self._publish()
        any_lim = np.any([lim[ch] for ch in chans], axis=0)
        for ch in chans:
            other = any_lim & ~lim[ch]
            status = np.where(lim[ch], "C", np.where(other, "T", "N"))
            vname, iname = self.channels[ch]
            self.readings[vname] = ",".join(f"{s}{v:+.4E}"
                                            for s, v in zip(status, volts[ch], strict=True))
            self.readings[iname] = ",".join(f"{s}{self._quantise(ch, i):+.4E}"
                                            for s, i in zip(status, cur[ch], strict=True))
            self.readings[f"CH{ch}T"] = ",".join(f"{(a + 1) * held:.6E}" for a in range(k))
        self.status_byte = 1

    def _quantise(self, ch: int, amps: float) -> float:
        """A reading on the range autoranging picks from the `RG` floor (see the docstring)."""
        floor = self.smu_floor.get(ch, SMU_RANGES[0])
        rng = min((r for r in SMU_RANGES if r >= max(abs(amps), floor)), default=SMU_RANGES[-1])
        step = rng * 1e-4
        return round(amps / step) * step

    def _smu_ch(self, text: str) -> int:
        ch = int(text)
        if not 1 <= ch <= self.smus:
            raise KxciError(-122, "Illegal parameter")
        return ch

    # -- PMU -----------------------------------------------------------------------------------
    def _ch(self, s: str) -> int:
        ch = int(s)
        if ch not in (1, 2):
            raise KxciError(-122, "Illegal parameter")
        return ch

    def _pmu(self, msg: str) -> str | None:
        m = _SARB.match(msg) if msg.startswith(":PMU:SARB:SEQ:") else None
        if m:
            if not self.sarb:
                raise KxciError(-804, "not in SARB mode")
            name, body = m.groups()
            vals = [x.strip() for x in body.split(",")]
            ch, seq = self._ch(vals[0]), int(vals[1])
            arr = [float(x) for x in vals[2:]]
            if not 1 <= len(arr) <= 128 or not 1 <= seq <= MAX_SEQUENCES:
                raise KxciError(-122, "Illegal parameter")
            if name == "TIME" and any(t < 20e-9 - 1e-15 for t in arr):
                raise KxciError(-824, "invalid pulse timing")
            if name == "TIME" and sum(
                    len(d["TIME"]) for (c, q), d in self.seqs.items()
                    if c == ch and q != seq and "TIME" in d) + len(arr) > MAX_SEGMENTS:
                raise KxciError(-122, f"too many segments on channel {ch}")
            self.seqs.setdefault((ch, seq), {})[name] = arr
            src = self._seq_src.setdefault((ch, seq), {})
            src[name] = body
            self._seq_key[(ch, seq)] = tuple(src.items())
            return None
        head, _, rest = msg.partition(" ")
        # the commands of every pulse / read step first
        if head == ":PMU:TEST:STATUS?":
            return "0"
        if head == ":PMU:EXECUTE":
            self._execute()
            return None
        args = [a.strip() for a in rest.split(",")] if rest.strip() else []
        if head == ":PMU:INIT":
            if args not in (["0"], ["1"]):
                raise KxciError(-122, "Illegal parameter")
            self._reset_pmu()
            self.sarb = args == ["1"]
            return None
        if head == ":PMU:RPM:CONFIGURE":
            if not re.match(r"^PMU1-[12]$", args[0]) or args[1] not in ("0", "1", "2", "3"):
                raise KxciError(-122, "Illegal parameter")
            self.rpm[int(args[0][-1])] = int(args[1])
            self._publish()
            return None
        if head == ":PMU:SOURCE:RANGE":
            ch = self._ch(args[0])
            if float(args[1]) not in (10.0, 40.0):
                raise KxciError(-122, "Illegal parameter")
            self.ranges[ch] = (float(args[1]),) + self.ranges.get(ch, (0, 0, 0))[1:]
            return None
        if head == ":PMU:MEASURE:RANGE":
            self._ch(args[0])
            if args[1] != "2" and self.sarb:
                raise KxciError(-122, "SegArb needs fixed ranges")
            if float(args[2]) not in (0.2, 10e-3, 1e-3, 100e-6, 10e-6, 1e-6, 100e-9):
                raise KxciError(-122, "Illegal parameter")
            return None
        if head == ":PMU:LOAD":
            self._ch(args[0])
            if not 1 <= float(args[1]) <= 1e7:
                raise KxciError(-122, "Illegal parameter")
            return None
        if head == ":PMU:SARB:WFM:SEQ:LIST":
            if not self.sarb:
                raise KxciError(-804, "not in SARB mode")
            ch = self._ch(args[0])
            pairs = [(int(args[i]), int(float(args[i + 1]))) for i in range(1, len(args) - 1, 2)]
            if not pairs or len(args) % 2 == 0 or any(n < 1 for _, n in pairs):
                raise KxciError(-122, "Illegal parameter")
            self.seq_list[ch] = pairs
            return None
        if head == ":PMU:OUTPUT:STATE":
            ch = self._ch(args[0])
            if args[1] not in ("0", "1"):
                raise KxciError(-122, "Illegal parameter")
            self.outputs[ch] = args[1] == "1"
            self._publish()
            return None
        if head == ":PMU:ABORT":
            return None
        if head == ":PMU:DATA:COUNT?":
            return str(len(self.data[self._ch(args[0])]))
        if head == ":PMU:DATA:GET":
            ch, start, count = self._ch(args[0]), int(args[1]), int(args[2])
            pts = self.data[ch]
            if start < 0 or count < 1 or count > 2048 or start + count > len(pts):
                raise KxciError(-122, "Illegal parameter")
            return ";".join(f"{v:.6E},{i:.6E},{t:.6E},{int(s)}"
                            for v, i, t, s in pts[start:start + count])
        raise KxciError(-992, "Unrecognized command")

    def _segments_of(self, ch: int) -> list[tuple[float, float, float, int, float, float]]:
        out = []
        for seq, loops in self.seq_list[ch]:
            d = self.seqs.get((ch, seq))
            if d is None or any(k not in d for k in ("TIME", "STARTV", "STOPV")):
                raise KxciError(-804, f"sequence {seq} of channel {ch} not defined")
            n = len(d["TIME"])
            mt = d.get("MEAS:TYPE", [0] * n)
            ms, me = d.get("MEAS:START", [0] * n), d.get("MEAS:STOP", [0] * n)
            if not all(len(x) == n for x in (d["STARTV"], d["STOPV"], mt, ms, me)):
                raise KxciError(-122, f"sequence {seq}: arrays of unequal length")
            for k in range(1, n):
                if abs(d["STARTV"][k] - d["STOPV"][k - 1]) > 1e-9:
                    raise KxciError(-122, f"sequence {seq}: segment {k + 1} does not start "
                                          "where the previous stopped")
            rows = list(zip(d["TIME"], d["STARTV"], d["STOPV"], mt, ms, me, strict=True))
            out.extend(rows * loops)
        return out

    def _execute(self) -> None:
        if not self.sarb:
            raise KxciError(-804, "not in SARB mode")
        active = [ch for ch, on in self.outputs.items() if on]
        if not active:
            raise KxciError(-122, "no channel output enabled")
        for ch in active:
            if ch not in self.seq_list:
                raise KxciError(-804, f"no sequence list for channel {ch}")
            if self.rpm.get(ch, 0) != 0:
                raise KxciError(-804, f"RPM {ch} is not in PMU mode")
        key = tuple((ch, tuple(self.seq_list[ch]),
                     tuple(self._seq_key.get((ch, sq)) for sq, _ in self.seq_list[ch]))
                    for ch in active)
        plan = self._plans.get(key)
        if plan is None:
            segs = self._plan(active)
            plan = segs if self.world is None else self.world.compile(segs)
            if len(self._plans) >= 4096:
                self._plans.clear()
            self._plans[key] = plan
        for ch in (1, 2):
            self.data[ch] = []
        self.executions += 1
        if self.world is None:
            return
        self.world.clock.advance(self.world.latency.round_trip, "round_trip")
        res = self.world.run(plan)
        for ch in active:
            for t, v, i in res.get(f"pmu{ch}", []):
                self.data[ch].append((v, i, t, 0))

    def _plan(self, active: list[int]) -> list[Segment]:
        """The world segments of one execution of the loaded sequence lists (checked)."""
        per = {ch: self._segments_of(ch) for ch in active}
        lens = {len(v) for v in per.values()}
        times = {tuple(round(s[0] / 1e-9) for s in v) for v in per.values()}
        if len(lens) != 1 or len(times) != 1:
            # one card shares its timing: both channels need identical segment times
            raise KxciError(-824, "invalid pulse timing")
        nseg = lens.pop()
        segs: list[Segment] = []
        for k in range(nseg):
            t = per[active[0]][k][0]
            v0 = {f"pmu{ch}": per[ch][k][1] for ch in active}
            v1 = {f"pmu{ch}": per[ch][k][2] for ch in active}
            meas = [(f"pmu{ch}", per[ch][k][4], per[ch][k][5]) for ch in active
                    if per[ch][k][3] in (1, 3)]
            segs.append(Segment(t, v0, v1, meas))
        return segs
