"""The two instrument-backed rigs: `PmuRig` (4200A PMU + pulse divider + 707B) and `WgfmuRig`
(B1500A + B1530A WGFMU, single crosspoint or crossbar through the 707B).

Both implement the V/3 write scheme (selected row V, selected column 0, other rows V/3, other
columns 2V/3) and grounded reads (selected row Vr, the selected column held at 0 V by the
current-sensing channel, every other line at 0 V). Any exception inside a rig operation,
Ctrl-C included, puts every instrument in its safe state before it propagates.

PmuRig. Matrix rows carry the instrument terminals: A = PMU ch1 (drive, also feeding the
divider), B = PMU ch2 (sense, 0 V), C = divider V/3, D = divider 2V/3, E = ground. The 707B
selects a device with ONE `channel.exclusiveclose` per configuration. The divider's taps follow
ch1, so a grounded read needs the unselected lines on E instead of C/D: a pulse + read is
therefore two PMU executions (write routing, then read routing), and the routing is only re-sent
when it changes (n confirmation reads or a read map cost one selection per device).

WgfmuRig. Channel 101 drives the top electrode (row), 102 holds the bottom electrode (column) at
0 V and senses. On a single crosspoint, pulse + n reads are one WGFMU execution. On a crossbar,
the 707B routes row r to 101 (row A), column c to 102 (row B), the other rows to SMU `v3` (row C)
and the other columns to SMU `2v3` (row D). Choice: the B1500 SMUs supply V/3 and 2V/3 as DC
levels set just before the pulse execution and returned to 0 V right after it, so the read
execution that follows is a grounded read with the same routing (one selection per device).
The cost, and it is large: while the SMUs hold their levels the WGFMU channels idle at 0 V, so
the half-selected devices on the selected row see -2V/3 (and those on the selected column
+V/3) for the whole hold time, about one execution round trip (milliseconds), not only for the
pulse. The simulator charges that DC stress, and on the simulated chip it visibly RESETs or SETs
half-selected devices. Use PmuRig (divider levels pulsed in lock-step) for crossbars; the WGFMU
crossbar mode is for occasional single-device work on a routed array.

DC (`rig.dc`, the seam's line-level request): both rigs take the SMUs of their instrument as
`instruments.dc.SmuPort`s. On the PMU rig, SMU1 and SMU2 reach the cables of PMU channels 1 and 2
through the 4225-RPMs (switched to their SMU path for the request; the next pulse re-initialises
the PMU, RPMs back on the pulse path) and further SMUs sit on matrix rows of their own; grounded
lines go to the matrix row on ground. On the WGFMU rig the B1500 SMUs are the V/3 and 2V/3
sources (and any others on matrix rows); on a single crosspoint they reach the two electrodes
through the WGFMU channels' RSUs in SMU mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instruments import wgfmu as W
from instruments.b1500 import B1500
from instruments.dc import DcBank, SmuPort
from instruments.errors import InstrumentError
from instruments.k707b import K707B
from instruments.k4200 import K4200, RPM_SMU
from instruments.limits import SafetyLimits
from instruments.wgfmu import Wgfmu
from instruments.wiring import Wiring
from protocols.rig import CrossbarRig, DcCapacity, DcGroup, DcMeasured, DcRequest, Lab, ReadSettings


def _make_all_safe(*instruments) -> None:
    """Ask every instrument (None = absent) to go safe, even if an earlier one fails, so one
    lost instrument never leaves the others biased; then raise the failure (one error naming
    every instrument that failed when there are several)."""
    failed: list[Exception] = []
    for inst in instruments:
        if inst is None:
            continue
        try:
            inst.make_safe()
        except Exception as e:
            failed.append(e)
    if len(failed) == 1:
        raise failed[0]
    if failed:
        raise InstrumentError("; ".join(str(e) for e in failed)) from failed[0]


class _GuardedRig(CrossbarRig):
    """Runs every hardware operation under a guard that leaves the rig safe on any exception."""

    #: the rig's DC path (None: no SMUs configured)
    dc_bank: DcBank | None = None

    @property
    def dc_capacity(self) -> DcCapacity | None:
        return None if self.dc_bank is None else self.dc_bank.capacity

    def _dc_pass(self, groups: list[DcGroup], request: DcRequest) -> list[DcMeasured]:
        return self._guard(self.dc_bank.run, groups, request, self.lab)

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except BaseException:
            try:
                self.safe_state()
            except Exception:
                pass
            raise


# -- PMU rig -------------------------------------------------------------------------------------
class PmuRig(_GuardedRig):
    name = "pmu"
    #: matrix roles used by this rig
    ROLES = ("drive", "sense", "v3", "2v3", "gnd")

    def __init__(self, pmu: K4200, matrix: K707B, wiring: Wiring,
                 limits: SafetyLimits | None = None, read: ReadSettings | None = None,
                 lab: Lab | None = None, edge: float = 20e-9, i_range: float = 100e-6,
                 smus: Sequence[SmuPort] = ()):
        super().__init__((len(wiring.rows), len(wiring.cols)), limits or SafetyLimits(),
                         read=read, lab=lab)
        missing = [r for r in self.ROLES if r not in wiring.letters]
        if missing:
            raise ValueError(f"PmuRig wiring lacks matrix rows for {missing}")
        self.pmu, self.matrix, self.wiring = pmu, matrix, wiring
        if smus:
            self.dc_bank = DcBank(pmu, smus, matrix=matrix, wiring=wiring,
                                  ground_letter=wiring.letters["gnd"],
                                  connect=self._rpms_to_smus, release=self._after_dc)
        self.edge = max(20e-9, edge)
        self.i_range = i_range
        self._ready = False
        self._routes: dict[tuple[str, int, int], list[str]] = {}
        self._fire_cmds: dict[tuple[float, float], list[tuple[str, str]]] = {}
        self.executions = 0

    # -- setup -----------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self._ready:
            return
        p, rs = self.pmu, self.read_settings
        p.pmu_init(channels=(1, 2), i_range=self.i_range)
        # read sequence (2): rise, plateau with spot-mean from 2 us to 95 % of the plateau, fall
        e = 100e-9
        t = [e, rs.seconds, e, 100e-9]
        start = min(2e-6, 0.2 * rs.seconds)
        ms, me = [0, start, 0, 0], [0, 0.95 * rs.seconds, 0, 0]
        mt = [0, 1, 0, 0]
        v1 = ([0, rs.volts, rs.volts, 0], [rs.volts, rs.volts, 0, 0])
        z = [0] * 4  # only the sense channel measures
        drive, sense = p.pmu(1), p.pmu(2)
        p.send_setup(drive.sarb(2, t, v1[0], v1[1], z, z, z)
                     + sense.sarb(2, t, [0] * 4, [0] * 4, mt, ms, me))
        drive.output(True)
        sense.output(True)
        self._ready = True

    def _route(self, kind: str, row: int, col: int) -> list[str]:
        key = (kind, row, col)
        sel = self._routes.get(key)
        if sel is None:
            w = self.wiring
            other_row, other_col = ("v3", "2v3") if kind == "write" else ("gnd", "gnd")
            sel = [w.name(w.rows[row], "drive"), w.name(w.cols[col], "sense")]
            sel += [w.name(w.rows[i], other_row) for i in range(self.shape[0]) if i != row]
            sel += [w.name(w.cols[j], other_col) for j in range(self.shape[1]) if j != col]
            self._routes[key] = sel
        return sel

    def _fire(self, volts: float, seconds: float) -> None:
        p, e = self.pmu, self.edge
        # a tuning ramp revisits the same amplitudes: build (format and check) each waveform's
        # commands once; send_setup still sends only what changed on the instrument
        key = (volts, seconds)
        cmds = self._fire_cmds.get(key)
        if cmds is None:
            t = [100e-9, e, seconds, e, 100e-9]
            a = [0.0, 0.0, volts, volts, 0.0]
            b = [0.0, volts, volts, 0.0, 0.0]
            z = [0] * 5
            drive, sense = p.pmu(1), p.pmu(2)
            cmds = (drive.sarb(1, t, a, b, z, z, z)
                    + sense.sarb(1, t, [0.0] * 5, [0.0] * 5, z, z, z)
                    + [drive.seq_list([(1, 1)]), sense.seq_list([(1, 1)])])
            if len(self._fire_cmds) >= 4096:
                self._fire_cmds.clear()
            self._fire_cmds[key] = cmds
        p.send_setup(cmds)
        p.execute()
        self.executions += 1

    def _write(self, row: int, col: int, volts: float, seconds: float) -> None:
        self._setup()
        self.matrix.exclusive_close(self._route("write", row, col))
        self._fire(volts, seconds)

    def _reads(self, row: int, col: int, n: int) -> np.ndarray:
        self._setup()
        p = self.pmu
        self.matrix.exclusive_close(self._route("read", row, col))
        p.send_setup([p.pmu(1).seq_list([(2, n)]), p.pmu(2).seq_list([(2, n)])])
        p.execute()
        self.executions += 1
        d = p.pmu(2).data(0, n)
        g = -d[:, 1] / self.read_settings.volts
        return np.minimum(g, self.read_settings.ceiling_S)

    def _pulse(self, row, col, volts, seconds):
        self._guard(self._write, row, col, volts, seconds)

    def _read_repeated(self, row, col, n):
        return self._guard(self._reads, row, col, n)

    def _pulse_and_read(self, row, col, volts, seconds, n):
        def both():
            self._write(row, col, volts, seconds)
            return self._reads(row, col, n)
        return self._guard(both)

    def _rpms_to_smus(self, ports: list[SmuPort]) -> None:
        """SMU1 / SMU2 reach their cables through RPM1 / RPM2: switch those used to SMU."""
        self._ready = False
        for port in ports:
            if port.smu.number in (1, 2):
                self.pmu.pmu(port.smu.number).rpm(RPM_SMU)

    def _after_dc(self) -> None:
        self._ready = False  # the next pulse or read re-initialises the PMU (RPMs to pulse)

    def snapshot(self) -> dict:
        slots = [s for s, _ in self.wiring.rows + self.wiring.cols]
        return {"rig": self.name, "instruments": {"k4200": self.pmu.snapshot(),
                                                  "k707b": self.matrix.snapshot(slots)}}

    def _safe_state(self) -> None:
        self._ready = False
        _make_all_safe(self.pmu, self.matrix)

    def close(self) -> None:
        try:
            self.safe_state()
        finally:
            try:  # a lost PMU must not keep the matrix session open (and vice versa)
                self.pmu.close()
            finally:
                self.matrix.close()


# -- WGFMU rig -----------------------------------------------------------------------------------
class WgfmuRig(_GuardedRig):
    name = "wgfmu"

    def __init__(self, wgfmu: Wgfmu, address: str, b1500: B1500 | None = None,
                 matrix: K707B | None = None, wiring: Wiring | None = None,
                 top: int = 101, bottom: int = 102, smu_v3: int = 2, smu_2v3: int = 3,
                 limits: SafetyLimits | None = None, read: ReadSettings | None = None,
                 lab: Lab | None = None, edge: float = 10e-9, compliance: float = 10e-3,
                 smus: Sequence[SmuPort] = (), rsu_smus: dict[int, int] | None = None):
        shape = (len(wiring.rows), len(wiring.cols)) if matrix is not None and wiring else (1, 1)
        super().__init__(shape, limits or SafetyLimits(), read=read, lab=lab)
        if matrix is not None and (wiring is None or b1500 is None):
            raise ValueError("a crossbar WgfmuRig needs the 707B wiring and the B1500 SMUs")
        self.wgfmu, self.b1500, self.matrix, self.wiring = wgfmu, b1500, matrix, wiring
        self.address, self.top, self.bottom = address, top, bottom
        self.smu_v3, self.smu_2v3 = smu_v3, smu_2v3
        self.edge = max(W.GRID, edge)
        self.compliance = compliance
        self._open = False
        self._ready = False
        self._loaded: tuple | None = None
        self._bias_on = False
        self.executions = 0
        #: WGFMU channel -> the B1500 SMU slot cabled to its RSU (SMU pass-through)
        self.rsu_smus = dict(rsu_smus or {})
        if smus:
            if b1500 is None:
                raise ValueError("the WGFMU rig's DC path needs the B1500")
            ground = wiring.letters.get("gnd") if self.crossbar_mode else None
            self.dc_bank = DcBank(b1500, smus, matrix=matrix, wiring=wiring,
                                  ground_letter=ground, connect=self._rsus_to_smus,
                                  release=self._after_dc)

    @property
    def crossbar_mode(self) -> bool:
        return self.matrix is not None

    def _rsus_to_smus(self, ports: list[SmuPort]) -> None:
        """On a probe card the SMUs reach the electrodes through the RSUs: channels whose SMU
        is used go to SMU mode and connect, the others disconnect (their line floats)."""
        self._ready = False
        self._loaded = None
        if not self.rsu_smus:
            return
        if not self._open:
            self.wgfmu.open(self.address)
            self._open = True
        used = {p.smu.number for p in ports}
        for ch, slot in self.rsu_smus.items():
            channel = self.wgfmu.channel(ch)
            if slot in used:
                channel.setup(mode=W.OPERATION_MODE_SMU, force_range=None)
                channel.connect()
            else:
                channel.disconnect()

    def _after_dc(self) -> None:
        self._ready = False  # the next pulse or read sets the channels up again
        self._loaded = None

    def snapshot(self) -> dict:
        out = {"rig": self.name, "instruments": {"wgfmu": self.wgfmu.snapshot()}}
        if self.b1500 is not None:
            out["instruments"]["b1500"] = self.b1500.snapshot()
        if self.matrix is not None:
            slots = [s for s, _ in self.wiring.rows + self.wiring.cols]
            out["instruments"]["k707b"] = self.matrix.snapshot(slots)
        return out

    def _setup(self) -> None:
        if self._ready:
            return
        w = self.wgfmu
        if not self._open:
            w.open(self.address)
            self._open = True
        self._channels()
        if self.crossbar_mode:
            self.b1500.enable([self.b1500.smu(self.smu_v3), self.b1500.smu(self.smu_2v3)])
        self._loaded = None
        self._ready = True

    def _channels(self) -> None:
        top, bottom = self.wgfmu.channel(self.top), self.wgfmu.channel(self.bottom)
        top.setup()
        bottom.setup(measure_current_range=W.MEASURE_CURRENT_RANGE_100UA)
        top.connect()
        bottom.connect()

    def _load(self, volts: float | None, seconds: float, n: int) -> None:
        """Build the patterns for an optional pulse followed by n reads (host side), unless
        the same waveform is already loaded."""
        key = (volts, seconds, n)
        if key == self._loaded:
            return
        w, rs, e = self.wgfmu, self.read_settings, self.edge
        self._loaded = None
        w.clear()
        vec: list[tuple[float, float]] = []
        if volts is not None:
            vec += [(e, volts), (W.on_grid(seconds), volts), (e, 0.0), (1e-6, 0.0)]
        t_read0 = sum(dt for dt, _ in vec)
        rise = 100e-9
        period = rise + rs.seconds + rise + 1e-6
        for _ in range(n):
            vec += [(rise, rs.volts), (W.on_grid(rs.seconds), rs.volts), (rise, 0.0),
                    (1e-6, 0.0)]
        total = sum(dt for dt, _ in vec)
        w.create_pattern("top", 0.0)
        w.add_vectors("top", vec)
        w.create_pattern("bottom", 0.0)
        w.add_vectors("bottom", [(W.on_grid(total), 0.0)])
        if n:
            # average over the plateau after the 100 uA range has settled (>= 1 us)
            settle = min(2e-6, 0.2 * rs.seconds)
            avg = W.on_grid(rs.seconds - settle - 0.5e-6)
            w.set_measure_event("bottom", "read", t_read0 + rise + settle, n,
                                W.on_grid(period), avg)
        w.channel(self.top).add_sequence("top", 1)
        w.channel(self.bottom).add_sequence("bottom", 1)
        self._channels()  # re-apply setup after clear() (instruments.md §3.5)
        self._loaded = key

    def _run(self, n: int) -> np.ndarray:
        w = self.wgfmu
        w.execute()
        w.wait()
        self.executions += 1
        if not n:
            return np.zeros(0)
        _, cur = w.channel(self.bottom).measured()
        if cur.size != n:
            raise W.InstrumentError(f"expected {n} read points, got {cur.size}",
                                    instrument=w.name, command="WGFMU_getMeasureValues")
        g = -cur / self.read_settings.volts
        return np.minimum(g, self.read_settings.ceiling_S)

    def _select(self, row: int, col: int) -> None:
        if not self.crossbar_mode:
            return
        wi = self.wiring
        sel = [wi.name(wi.rows[row], "top"), wi.name(wi.cols[col], "bottom")]
        sel += [wi.name(wi.rows[i], "v3") for i in range(self.shape[0]) if i != row]
        sel += [wi.name(wi.cols[j], "2v3") for j in range(self.shape[1]) if j != col]
        self.matrix.exclusive_close(sel)

    def _bias(self, volts: float) -> None:
        if volts == 0.0 and not self._bias_on:
            return
        b = self.b1500
        b.force_voltages({b.smu(self.smu_v3): volts / 3, b.smu(self.smu_2v3): 2 * volts / 3},
                         self.compliance)
        self._bias_on = volts != 0.0

    def _do(self, row: int, col: int, volts: float | None, seconds: float, n: int) -> np.ndarray:
        self._setup()
        self._select(row, col)
        if not self.crossbar_mode:
            self._load(volts, seconds, n)
            return self._run(n)
        out = np.zeros(0)
        if volts is not None:
            self._load(volts, seconds, 0)
            self._bias(volts)
            self._run(0)
            self._bias(0.0)
        if n:
            self._load(None, 0.0, n)
            out = self._run(n)
        return out

    def _pulse(self, row, col, volts, seconds):
        self._guard(self._do, row, col, volts, seconds, 0)

    def _read_repeated(self, row, col, n):
        return self._guard(self._do, row, col, None, 0.0, n)

    def _pulse_and_read(self, row, col, volts, seconds, n):
        return self._guard(self._do, row, col, volts, seconds, n)

    def _safe_state(self) -> None:
        self._ready = False
        self._bias_on = False
        self._loaded = None
        _make_all_safe(self.wgfmu, self.b1500, self.matrix)

    def close(self) -> None:
        try:
            self.safe_state()
        finally:
            self.wgfmu.close()
            self._open = False
            for inst in (self.b1500, self.matrix):
                if inst is not None:
                    inst.close()
