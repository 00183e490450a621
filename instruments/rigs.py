"""The two instrument-backed rigs: `PmuRig` (4200A PMU + pulse divider + 707B) and `WgfmuRig`
(B1500A + B1530A WGFMU, single crosspoint or crossbar through the 707B).

Both implement the V/3 write scheme (selected row V, selected column 0, other rows V/3, other
columns 2V/3) and grounded reads (selected row Vr, the selected column held at 0 V by the
current-sensing channel, every other line at 0 V). Any exception inside a rig operation,
Ctrl-C included, puts every instrument in its safe state before it propagates.

PmuRig. Matrix rows carry the instrument terminals: A = PMU ch1 (drive, also feeding the
divider), B = PMU ch2 (sense), C = divider V/3, D = divider 2V/3, E = ground. The 707B selects a
device with ONE `channel.exclusiveclose` per configuration. The divider's taps follow ch1, so a
grounded read needs the unselected lines on E instead of C/D (the read routing). The station's
`read.scheme` chooses how the verify read after a pulse is taken: `grounded` (pulse in the write
routing, read after reselecting the read routing: two selections and two executions per step)
or `write-routing` (pulse and read in one SARB sequence and one execution, no reselection; see
PmuRig). Each pulse amplitude and width has its own SARB sequence on channel 1, defined on first
use and kept until the next `:PMU:INIT` (at most what the 4225-PMU holds, `k4200.MAX_SEQUENCES`
and `MAX_SEGMENTS`, to confirm on hardware): a step at an amplitude already loaded sends only
the sequence list. The sequence lists and the selection are re-sent when the rig moves to
another device; the loaded sequences are part of the state a resumed run re-instates.

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
from instruments.k4200 import K4200, MAX_SEGMENTS, MAX_SEQUENCES, RPM_SMU
from instruments.limits import SafetyLimits
from instruments.visa import fmt
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
#: sequence numbers of the PMU waveforms. SEQ_READ and SEQ_LIFTED are the same on both
#: channels; a pulse is channel 1's pulse sequence for its amplitude and width (SEQ_SLOT0 on, see
#: PmuRig._pulse_slot) played against channel 2's SEQ_PULSE (0 V, the same timing)
SEQ_PULSE, SEQ_READ, SEQ_LIFTED = 1, 2, 3
SEQ_SLOT0 = 4
#: segments of one pulse sequence (`PmuRig._pulse_block`)
PULSE_SEGMENTS = 5


class PmuRig(_GuardedRig):
    """4200A PMU + pulse divider + 707B (module docstring). `read_scheme`:

    ``grounded``       the pulse in the write routing, the read after reselecting the read
                       routing: two 707B reselections and two executions per step.
    ``write-routing``  pulse and verify read in ONE execution (the pulse's sequence, then the
                       lifted read's) under the write routing: the selected row at 1.5 Vr,
                       the unselected rows at the V/3 tap (0.5 Vr), the unselected columns at
                       the 2V/3 tap (Vr) and the sensed column lifted to 0.5 Vr by PMU
                       channel 2. The selected device sees
                       Vr and the other devices of the sensed column nominally 0 V, so their
                       half-select current stays out of the sense channel. What is left (IR
                       drop on the lines, the divider's real ratio, offsets of the PMU levels:
                       +1 % on average and up to +4 % on the simulated array, more with an
                       imperfect divider) is measured and removed: whenever the rig routes a
                       device for writing it compares `n_cal` grounded reads (the device's last
                       ones when no pulse came since, within REF_MAX_AGE) with `n_cal`
                       write-routing reads taken right after the reselection (first in the
                       execution of its step, before the pulse) and subtracts the difference of
                       the means from every read of that device until it is routed elsewhere
                       or the calibration is CAL_MAX_AGE old. Reads
                       without a pulse (`read`, `read_repeated`) of that device keep its routing
                       (the tuning's confirmation reads); of any other device they are grounded,
                       and `read_array` (the read-back) is always grounded. The corrected read
                       equals the grounded read within 0.6 % (systematic, typically 0.1 %;
                       bench/station_time.py) with the same noise.
    """

    name = "pmu"
    #: matrix roles used by this rig
    ROLES = ("drive", "sense", "v3", "2v3", "gnd")
    READ_SCHEMES = ("grounded", "write-routing")
    #: grounded reads older than this [s] are no reference (the device relaxes meanwhile)
    REF_MAX_AGE = 1.0
    #: a calibration older than this [s] is renewed (the other devices of the column and the
    #: instruments drift): the next read is grounded, the next pulse recalibrates
    CAL_MAX_AGE = 10.0

    def __init__(self, pmu: K4200, matrix: K707B, wiring: Wiring,
                 limits: SafetyLimits | None = None, read: ReadSettings | None = None,
                 lab: Lab | None = None, edge: float = 20e-9, i_range: float = 100e-6,
                 read_scheme: str = "write-routing", n_cal: int = 16, width: float = 200e-9,
                 smus: Sequence[SmuPort] = (), pulse_slots: int | None = None):
        super().__init__((len(wiring.rows), len(wiring.cols)), limits or SafetyLimits(),
                         read=read, lab=lab)
        missing = [r for r in self.ROLES if r not in wiring.letters]
        if missing:
            raise ValueError(f"PmuRig wiring lacks matrix rows for {missing}")
        if read_scheme not in self.READ_SCHEMES:
            raise ValueError(f"PmuRig read scheme {read_scheme!r}: choose one of "
                             f"{', '.join(self.READ_SCHEMES)}")
        if n_cal < 1:
            raise ValueError(f"PmuRig n_cal must be >= 1, got {n_cal}")
        self.pmu, self.matrix, self.wiring = pmu, matrix, wiring
        if smus:
            self.dc_bank = DcBank(pmu, smus, matrix=matrix, wiring=wiring,
                                  ground_letter=wiring.letters["gnd"],
                                  connect=self._rpms_to_smus, release=self._after_dc)
        self.read_scheme = read_scheme
        self.n_cal = int(n_cal)
        vr = self.read_settings.volts
        #: write-routing read: drive (ch1) and sensed-column (ch2) levels [V]
        self.lifted = (1.5 * vr, 0.5 * vr)
        if read_scheme == "write-routing":
            self.limits.check_bias(self.lifted[0], where=f"{self.name} write-routing read drive")
        self.edge = max(20e-9, edge)
        self.i_range = i_range
        self.width = width  # the pulse width SEQ_PULSE is defined with at set-up [s]
        # channel 1 holds READ and LIFTED besides the pulse sequences
        fixed = 2 * len(self._read_block(0.0, 0.0)[0])
        room = min(MAX_SEQUENCES - SEQ_SLOT0 + 1, (MAX_SEGMENTS - fixed) // PULSE_SEGMENTS)
        if pulse_slots is not None and not 1 <= pulse_slots <= room:
            raise ValueError(f"PmuRig pulse_slots must be 1..{room}, got {pulse_slots}")
        #: channel 1 pulse sequences kept loaded (as many as the PMU holds unless given)
        self.pulse_slots = room if pulse_slots is None else int(pulse_slots)
        self._ready = False
        self._routes: dict[tuple[str, int, int], list[str]] = {}
        #: loaded pulse sequences: (amplitude, width) as sent -> slot, least recently used first
        self._slots: dict[tuple[str, str], int] = {}
        self._routed: tuple[str, int, int] | None = None
        self._device: tuple[int, int] | None = None  # device of the last operation
        self._pulses = 0                       # pulses sent so far (any device)
        #: last grounded reads: (row, col, pulses sent before them, time [s], their mean [S])
        self._ref: tuple[int, int, int, float, float] | None = None
        #: device whose write-routing reads are calibrated, when [s], the offset [S] to subtract
        self._cal: tuple[int, int] | None = None
        self._cal_t = 0.0
        self._offset = 0.0
        self.executions = 0

    @property
    def calibration(self) -> tuple[int, int, float] | None:
        """(row, col, offset [S]) of the device whose write-routing reads are corrected now
        (the offset is subtracted from them), or None."""
        return None if self._cal is None else (*self._cal, self._offset)

    # -- waveforms -----------------------------------------------------------------------------
    def _read_block(self, v_drive: float, v_sense: float) -> tuple[list, ...]:
        """One read: rise, plateau (spot mean on ch2 from 2 us to 95 % of it), fall, rest.
        Returns times, ch1 start/stop, ch2 start/stop, measure type/start/stop."""
        rs = self.read_settings
        rise = 100e-9
        t = [rise, rs.seconds, rise, 100e-9]
        start = min(2e-6, 0.2 * rs.seconds)
        a1, b1 = [0.0, v_drive, v_drive, 0.0], [v_drive, v_drive, 0.0, 0.0]
        a2, b2 = [0.0, v_sense, v_sense, 0.0], [v_sense, v_sense, 0.0, 0.0]
        return t, a1, b1, a2, b2, [0, 1, 0, 0], [0, start, 0, 0], [0, 0.95 * rs.seconds, 0, 0]

    def _sequence(self, seq: int, blocks: list[tuple[list, ...]]) -> list[tuple[str, str]]:
        """Checked commands defining `seq` on both channels from consecutive blocks."""
        t, a1, b1, a2, b2, mt, ms, me = ([x for blk in blocks for x in blk[k]] for k in range(8))
        z = [0] * len(t)
        p = self.pmu
        return (p.pmu(1).sarb(seq, t, a1, b1, z, z, z)
                + p.pmu(2).sarb(seq, t, a2, b2, mt, ms, me))

    def _pulse_block(self, volts: float, seconds: float) -> tuple[list, ...]:
        """The pulse, then a rest at 0 V: 1 us with the write-routing read, which lets the sense
        channel recover from the pulse current before the verify read (SEQ_LIFTED) follows;
        100 ns otherwise."""
        e = self.edge
        rest = 1e-6 if self.read_scheme == "write-routing" else 100e-9
        t = [100e-9, e, seconds, e, rest]
        z = [0.0] * 5
        return (t, [0.0, 0.0, volts, volts, 0.0], [0.0, volts, volts, 0.0, 0.0], z, z,
                [0] * 5, z, z)

    def _setup(self) -> None:
        if self._ready:
            return
        p, vr = self.pmu, self.read_settings.volts
        p.pmu_init(channels=(1, 2), i_range=self.i_range)
        self._slots.clear()  # INIT cleared every sequence
        cmds = self._sequence(SEQ_READ, [self._read_block(vr, 0.0)])
        if self.read_scheme == "write-routing":
            cmds += self._sequence(SEQ_LIFTED, [self._read_block(*self.lifted)])
        p.send_setup(cmds + self._sense_pulse(self.width))
        p.pmu(1).output(True)
        p.pmu(2).output(True)
        self._ready = True

    def __enter__(self) -> PmuRig:
        # Set the instruments up now, not at the first operation: a campaign restores a
        # simulated chip (and its clock) after entering the rig, so the set-up a resumed run
        # repeats is charged before the point it resumes from, as the kill is.
        self._guard(self._setup)
        return self

    def _on_device(self, device: tuple[int, int] | None) -> None:
        """Start an operation on `device` (None: the whole array). On a change of device the
        sequence lists and the 707B selection are treated as unknown and sent again. The pulse
        sequences stay loaded from device to device (`_pulse_slot`); they are part of the state
        a resumed run re-instates, so it sends exactly what the uninterrupted one did."""
        self._setup()
        if device is None or device != self._device:
            self.pmu.forget(["L1", "L2"])
            self.matrix.forget()
        self._device = device

    def _sense_pulse(self, seconds: float) -> list[tuple[str, str]]:
        """Channel 2's SEQ_PULSE: 0 V with the timing of a pulse `seconds` wide."""
        t, _, _, a, b, mt, ms, me = self._pulse_block(0.0, seconds)
        return self.pmu.pmu(2).sarb(SEQ_PULSE, t, a, b, mt, ms, me)

    def _pulse_slot(self, volts: float, seconds: float) -> int:
        """Channel 1's sequence holding the pulse (volts, seconds), loaded on first use and kept
        until the next INIT, so a tuning that returns to an amplitude only names its sequence in
        the sequence list. When `pulse_slots` are loaded the least recently used slot is
        redefined (only its two level arrays are sent when the width is the same). The
        amplitudes are the caller's, never rounded here: the fast tuning keeps them on its ramp
        grid (protocols/tuning.py), which bounds how many slots a tuning uses."""
        p = self.pmu
        p.send_setup(self._sense_pulse(seconds))
        key = (fmt(volts), fmt(seconds))
        slot = self._slots.pop(key, None)
        if slot is None:
            if len(self._slots) < self.pulse_slots:
                slot = SEQ_SLOT0 + len(self._slots)
            else:
                slot = self._slots.pop(next(iter(self._slots)))
            t, a, b, _, _, mt, ms, me = self._pulse_block(volts, seconds)
            p.send_setup(p.pmu(1).sarb(slot, t, a, b, mt, ms, me))
        self._slots[key] = slot
        return slot

    # -- routing and executions ----------------------------------------------------------------
    def _route(self, kind: str, row: int, col: int) -> None:
        key = (kind, row, col)
        sel = self._routes.get(key)
        if sel is None:
            w = self.wiring
            other_row, other_col = ("v3", "2v3") if kind == "write" else ("gnd", "gnd")
            sel = [w.name(w.rows[row], "drive"), w.name(w.cols[col], "sense")]
            sel += [w.name(w.rows[i], other_row) for i in range(self.shape[0]) if i != row]
            sel += [w.name(w.cols[j], other_col) for j in range(self.shape[1]) if j != col]
            self._routes[key] = sel
        self.matrix.exclusive_close(sel)
        self._routed = key

    def _run(self, seqs: list[tuple[int, int]], points: int, slot: int = 0) -> np.ndarray:
        """Play the sequence list `seqs` ((sequence, loops) in order) on both channels in one
        execution, channel 1 playing its pulse sequence `slot` where the list names SEQ_PULSE;
        the `points` spot means of channel 2 as conductances [S] at the read voltage (not
        clipped)."""
        p = self.pmu
        ch1 = [(slot if s == SEQ_PULSE else s, n) for s, n in seqs]
        p.send_setup([p.pmu(1).seq_list(ch1), p.pmu(2).seq_list(seqs)])
        p.execute()
        self.executions += 1
        if not points:
            return np.zeros(0)
        return -p.pmu(2).data(0, points)[:, 1] / self.read_settings.volts

    def _grounded(self, row: int, col: int, n: int) -> np.ndarray:
        """n grounded reads in the read routing; at least n_cal in the write-routing scheme,
        kept as the device's calibration reference."""
        self._route("read", row, col)
        k = max(n, self.n_cal) if self.read_scheme == "write-routing" else n
        g = self._run([(SEQ_READ, k)], k)
        self._ref = (row, col, self._pulses, self.clock, float(np.mean(g)))
        return g[:n]

    def _calibrate(self, row: int, col: int) -> list[tuple[int, int]]:
        """Route (row, col) for writing with a grounded reference of its state (the device's
        last grounded reads when still valid, else new ones) and return the sequence list of its
        write-routing calibration reads, to be played in the next execution (`_calibrated_run`)."""
        ref = self._ref
        if (ref is None or ref[:3] != (row, col, self._pulses)
                or self.clock - ref[3] > self.REF_MAX_AGE):
            self._grounded(row, col, self.n_cal)
        self._route("write", row, col)
        self._cal = None
        return [(SEQ_LIFTED, self.n_cal)]

    def _calibrated_run(self, row: int, col: int, cal: list[tuple[int, int]],
                        seqs: list[tuple[int, int]], points: int, slot: int) -> np.ndarray:
        """One execution: the calibration reads `cal` (none when empty), then `seqs` (pulse
        sequence `slot`); sets the offset from the calibration reads and returns the `points`
        reads after them."""
        k = sum(n for _, n in cal)
        g = self._run(cal + seqs, k + points, slot)
        if cal:
            self._offset = float(np.mean(g[:k])) - self._ref[4]
            self._cal, self._cal_t = (row, col), self.clock
        return g[k:]

    def _calibrated(self, row: int, col: int) -> bool:
        """(row, col) is routed for writing with a calibration young enough to use."""
        return (self._cal == (row, col) and self._routed == ("write", row, col)
                and self.clock - self._cal_t <= self.CAL_MAX_AGE)

    def _step(self, row: int, col: int, volts: float, seconds: float, n: int) -> np.ndarray:
        """A pulse on (row, col) and, in the write-routing scheme, n corrected verify reads, all
        in one execution (with the device's calibration reads first when it needs them)."""
        self._on_device((row, col))
        wr = self.read_scheme == "write-routing"
        cal: list[tuple[int, int]] = []
        if wr and n and not self._calibrated(row, col):
            cal = self._calibrate(row, col)
        else:
            self._route("write", row, col)
        slot = self._pulse_slot(volts, seconds)
        self._pulses += 1
        seqs = [(SEQ_PULSE, 1)] + ([(SEQ_LIFTED, n)] if wr and n else [])
        g = self._calibrated_run(row, col, cal, seqs, n if wr else 0, slot)
        if not (wr and n):
            return np.zeros(0)
        return self._clip(g - self._offset)

    def _reads(self, row: int, col: int, n: int) -> np.ndarray:
        """n reads without a pulse: corrected write-routing reads while the device is routed
        and calibrated for writing (confirmation reads keep the routing), else grounded."""
        self._on_device((row, col))
        if self._calibrated(row, col):
            return self._clip(self._run([(SEQ_LIFTED, n)], n) - self._offset)
        return self._clip(self._grounded(row, col, n))

    def _clip(self, g: np.ndarray) -> np.ndarray:
        return np.minimum(g, self.read_settings.ceiling_S)

    def _pulse(self, row, col, volts, seconds):
        self._guard(self._step, row, col, volts, seconds, 0)

    def _read_repeated(self, row, col, n):
        return self._guard(self._reads, row, col, n)

    def _read_array(self) -> np.ndarray:
        # the read-back is the reference: grounded, whatever device is routed for writing
        rows, cols = self.shape

        def read_all():
            self._on_device(None)
            return np.array([[self._clip(self._grounded(r, c, 1))[0] for c in range(cols)]
                             for r in range(rows)])
        return self._guard(read_all)

    def _pulse_and_read(self, row, col, volts, seconds, n):
        if self.read_scheme == "write-routing":
            return self._guard(self._step, row, col, volts, seconds, n)

        def both():
            self._step(row, col, volts, seconds, 0)
            return self._clip(self._grounded(row, col, n))
        return self._guard(both)

    def _rpms_to_smus(self, ports: list[SmuPort]) -> None:
        """SMU1 / SMU2 reach their cables through RPM1 / RPM2: switch those used to SMU."""
        self._after_dc()
        for port in ports:
            if port.smu.number in (1, 2):
                self.pmu.pmu(port.smu.number).rpm(RPM_SMU)

    def _after_dc(self) -> None:
        # the next pulse or read re-initialises the PMU (RPMs to pulse) and routes its device
        # again; the DC levels may have changed the devices: no grounded reference or
        # write-routing calibration taken before them is used after them
        self._ready = False
        self._routed = self._device = self._ref = self._cal = None

    def snapshot(self) -> dict:
        slots = [s for s, _ in self.wiring.rows + self.wiring.cols]
        return {"rig": self.name, "instruments": {"k4200": self.pmu.snapshot(),
                                                  "k707b": self.matrix.snapshot(slots)}}

    def _safe_state(self) -> None:
        self._ready = False
        self._routed = self._device = None
        _make_all_safe(self.pmu, self.matrix)

    def _instrument_state(self) -> dict | None:
        # everything the next operation's messages and reads depend on: the PMU's settings,
        # the routing, the device of the last operation and the write-routing calibration
        # with its grounded reference (a resumed run recalibrates exactly when the
        # uninterrupted one does, with the offset it measured)
        if not self._ready:
            return None
        return {"pmu": self.pmu.settings(), "routed": self._routed, "device": self._device,
                "pulses": self._pulses, "ref": self._ref, "cal": self._cal,
                "cal_t": self._cal_t, "offset": self._offset,
                "slots": [[*k, s] for k, s in self._slots.items()]}

    def _reinstate(self, state: dict) -> None:
        def tup(x):
            return None if x is None else tuple(x)

        def again():
            self._setup()
            self.pmu.reinstate(state["pmu"])
            routed = tup(state["routed"])
            if routed is not None:
                self._route(str(routed[0]), int(routed[1]), int(routed[2]))
            self._device, self._pulses = tup(state["device"]), int(state["pulses"])
            self._ref, self._cal = tup(state["ref"]), tup(state["cal"])
            self._cal_t, self._offset = float(state["cal_t"]), float(state["offset"])
            # a state saved before the rig kept pulse sequences has none loaded
            self._slots = {(str(v), str(w)): int(s) for v, w, s in state.get("slots", ())}
        self._guard(again)

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
        self._selected: tuple[int, int] | None = None  # the matrix routing now closed
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
        # the SMU mode reaches the RSUs only with `update` (no sequence runs in DC), else
        # they stay on the WGFMU that the last pulse left in FASTIV
        self.wgfmu.update()

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

    def __enter__(self) -> WgfmuRig:
        self._guard(self._setup)  # set up when entered, as PmuRig (see there)
        return self

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
        _, cur = w.channel(self.bottom).measured(n)
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
        self._selected = None  # unknown if the command fails half-way
        self.matrix.exclusive_close(sel)
        self._selected = (row, col)

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
        self._selected = None
        _make_all_safe(self.wgfmu, self.b1500, self.matrix)

    def _instrument_state(self) -> dict | None:
        if not self._open:
            return None
        # the routing and the waveform loaded: an operation that needs the same waveform does
        # not load it again, in a resumed run as in the uninterrupted one
        return {"select": None if self._selected is None else list(self._selected),
                "loaded": None if self._loaded is None else list(self._loaded)}

    def _reinstate(self, state: dict) -> None:
        def again():
            self._setup()  # opens the session
            if state.get("select") is not None:
                self._select(*(int(x) for x in state["select"]))
            if state.get("loaded") is not None:
                volts, seconds, n = state["loaded"]
                self._load(None if volts is None else float(volts), float(seconds), int(n))
        self._guard(again)

    def close(self) -> None:
        try:
            self.safe_state()
        finally:
            self.wgfmu.close()
            self._open = False
            for inst in (self.b1500, self.matrix):
                if inst is not None:
                    inst.close()
