"""One simulated passive TiO2 crossbar: device states, pulses, nodal reads, save/restore.

The physics primitives here never advance the clock; whoever drives the crossbar (a rig, an
instrument emulator) books instrument time on `clock`. Volatile relaxation is evaluated lazily
against `clock.now`, so a crossbar left alone while the clock runs relaxes.

Random numbers: one `numpy.random.Generator` per crossbar, drawn in a fixed order:
construction (stuck classes, stuck conductances, initial states, D2D constants; only when
`unformed_rate` > 0, then the unformed devices, their forming voltages and formed conductances),
then one standard normal per device per pulse (C2C factor), then two normals per sensed read
(noise). The slow fluctuators (random telegraph noise) draw from a second generator derived from
the same seed, so switching them on or off leaves the draws above unchanged. Retention
(simulator/retention.py) draws its device constants from a third stream of its own and moves the
nonvolatile G lazily with the clock, like the volatile relaxation.

Unformed devices (`vform` finite) sit at `g_unformed` and do not switch (frozen, like stuck
devices) until a pulse or DC bias reaches their forming voltage; then they take their formed
conductance `gform` (programmed, for retention) and switch as any device from there on. Line
faults (`config.faults`) live in the nodal solver; a pulse reaches no device of a line cut off
its driver (the line floats). Same seed and same call sequence -> the same history, also across
`state_dict` round trips.
"""

from __future__ import annotations

import json
import math

import numpy as np

from simulator import physics
from simulator.clock import VirtualClock
from simulator.config import CrossbarConfig
from simulator.errors import SimulatorError
from simulator.nodal import NodalSolver
from simulator.retention import ARRAYS as _RET_ARRAYS
from simulator.retention import Retention

WORKING, STUCK_HRS, STUCK_LRS = 0, 1, 2
SCHEMES = ("grounded", "v2", "v3", "floating")
#: per-fluctuator arrays, shape (rows, cols, fluctuators per device)
_RTN_ARRAYS = ("rtn_amp", "rtn_tau", "rtn_state", "rtn_next")
_STATE_ARRAYS = ("G", "Gv", "stuck", "ds", "dr", "g0s", "g0r", "psi", "vform", "gform",
                 "dc_dose", "dc_g", *_RTN_ARRAYS, *_RET_ARRAYS)
#: arrays added after the first chip files were written: a state without them gets this value
#: (from the config, the arrays before it and the relaxation time stamp); a crossbar saved
#: before the fluctuators existed has none, one saved before retention existed does not drift,
#: one saved before forming existed has every device formed
_LATE_ARRAYS = {"psi": lambda cfg, a, t: np.full((cfg.rows, cfg.cols), cfg.device.volatile_cap),
                "vform": lambda cfg, a, t: np.full((cfg.rows, cfg.cols), np.nan),
                "gform": lambda cfg, a, t: np.full((cfg.rows, cfg.cols), cfg.device.init_median),
                "dc_dose": lambda cfg, a, t: np.zeros((2, cfg.rows, cfg.cols)),
                "dc_g": lambda cfg, a, t: a["G"].copy(),
                **{k: (lambda cfg, a, t: np.zeros((cfg.rows, cfg.cols, 0))) for k in _RTN_ARRAYS},
                **{k: (lambda cfg, a, t, k=k: Retention.missing(k, a["G"], t))
                   for k in _RET_ARRAYS}}
#: spawn-key tag of the fluctuators' generator ("RTN"; retention's is "RET")
_RTN_STREAM = 0x52544E


def _seed_sequence(seed) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


def _rtn_generator(ss: np.random.SeedSequence) -> np.random.Generator:
    """The fluctuators' own stream: a fixed child of the crossbar's seed sequence."""
    return np.random.default_rng(np.random.SeedSequence(
        ss.entropy, spawn_key=(*ss.spawn_key, _RTN_STREAM)))


class Crossbar:
    """An N x M passive crossbar of TiO2 devices (physics.md §3, §5)."""

    def __init__(self, config: CrossbarConfig | None = None,
                 seed: int | np.random.SeedSequence = 0, clock: VirtualClock | None = None):
        self.config = config or CrossbarConfig()
        self.clock = clock if clock is not None else VirtualClock()
        ss = _seed_sequence(seed)
        self.rng = np.random.default_rng(ss)
        self.rng_rtn = _rtn_generator(ss)
        cfg, p = self.config, self.config.device
        m, n = cfg.rows, cfg.cols
        self.shape = (m, n)
        rng = self.rng
        # stuck classes and their conductances
        u = rng.random((m, n))
        stuck = np.zeros((m, n), dtype=np.int8)
        stuck[u < cfg.stuck_hrs_rate] = STUCK_HRS
        stuck[(u >= cfg.stuck_hrs_rate) & (u < cfg.stuck_hrs_rate + cfg.stuck_lrs_rate)] = STUCK_LRS
        g_hrs = rng.uniform(p.stuck_hrs_min, p.stuck_hrs_max, (m, n))
        g_lrs = np.maximum(rng.normal(p.stuck_lrs_mean, p.stuck_lrs_std, (m, n)), p.g_min)
        # forming-free initial states
        g0 = p.init_median * np.exp(p.init_sigma * rng.standard_normal((m, n)))
        G = np.clip(g0, p.g_min, p.g_max)
        G = np.where(stuck == STUCK_HRS, g_hrs, np.where(stuck == STUCK_LRS, g_lrs, G))
        # device-to-device constants
        self._ds = p.sigma_vth * rng.standard_normal((m, n))
        self._dr = p.sigma_vth * rng.standard_normal((m, n))
        self._g0s = p.g0_set * np.exp(p.sigma_g0 * rng.standard_normal((m, n)))
        self._g0r = p.g0_reset * np.exp(p.sigma_g0 * rng.standard_normal((m, n)))
        # drawn last, so the draws above are what they were before this constant existed
        self._psi = p.volatile_cap * np.exp(p.sigma_volatile * rng.standard_normal((m, n)))
        # unformed devices: drawn only when configured, so forming-free chips keep their draws
        self._vform = np.full((m, n), np.nan)
        self._gform = np.full((m, n), p.init_median)
        if cfg.unformed_rate > 0:
            unformed = (rng.random((m, n)) < cfg.unformed_rate) & (stuck == WORKING)
            vf = p.v_form_mean + p.v_form_std * rng.standard_normal((m, n))
            gf = np.clip(p.init_median * np.exp(p.init_sigma * rng.standard_normal((m, n))),
                         p.g_min, p.g_max)
            self._vform = np.where(unformed, vf, np.nan)
            self._gform = gf
            G = np.where(unformed, p.g_unformed, G)
        self._G = G
        self._Gv = np.zeros((m, n))
        self._t_gv = self.clock.now      # time at which _Gv is valid
        # DC stress history of each device, SET and RESET branch (physics.dc_width), and the
        # conductance at which it began (`start_dc_hold`)
        self._dc_dose = np.zeros((2, m, n))
        self._dc_g = G.copy()
        self._stuck = stuck
        self._init_fluctuators()
        self._ret = Retention.new(p.retention, p.g_min, p.g_max, ss, G, stuck, self.clock.now)
        self._setup()

    def _init_fluctuators(self) -> None:
        """rtn_count fluctuators per working device: amplitude, dwell time, state, next switch
        time (stuck devices get zero amplitudes)."""
        p, (m, n), rng = self.config.device, self.shape, self.rng_rtn
        shape = (m, n, p.rtn_count if p.rtn_amplitude > 0 else 0)
        self._rtn_amp = p.rtn_amplitude * np.exp(p.rtn_sigma * rng.standard_normal(shape))
        # a stuck device is frozen: its read stays at its stuck value (the published model)
        self._rtn_amp[self._stuck != WORKING] = 0.0
        lo, hi = math.log(p.rtn_tau_min), math.log(p.rtn_tau_max)
        self._rtn_tau = np.exp(rng.uniform(lo, hi, shape))
        self._rtn_state = (rng.random(shape) < 0.5).astype(np.int8)
        self._rtn_next = self.clock.now + rng.exponential(self._rtn_tau)

    def _setup(self) -> None:
        """Derived, stateless helpers (rebuilt after a load)."""
        cfg, p = self.config, self.config.device
        unformed = np.isfinite(self._vform)
        self._any_unformed = bool(unformed.any())
        self._frozen = (self._stuck != WORKING) | unformed
        self._any_frozen = bool(self._frozen.any())
        self._solver = NodalSolver(cfg.rows, cfg.cols, cfg.r_line, cfg.r_source,
                                   v_nl=p.v_nl, v_ref=p.v_ref, faults=cfg.faults)
        self._variants: dict[tuple[bool, bool], NodalSolver] = {}  # effects switched off
        self._p = p
        self._sigma = p.sigma_c2c
        self._decay_k = 1.0 / p.tau_relax
        self._has_rtn = self._rtn_amp.shape[2] > 0
        self._stressed = self._has_rtn and p.rtn_stress_time > 0
        self._rtn_due = float(self._rtn_next.min()) if self._has_rtn else math.inf
        self._fluct = (self._rtn_amp * (self._rtn_state - 0.5)).sum(axis=2)

    # -- state ---------------------------------------------------------------------------------
    def _settle(self) -> None:
        """Bring the volatile excess up to clock.now."""
        now = self.clock.now
        dt = now - self._t_gv
        if dt != 0.0:
            if dt > 0.0:
                self._Gv *= math.exp(-dt * self._decay_k)
            self._t_gv = now
            self._ret.settle(self._G, now)
        if now >= self._rtn_due:
            self._switch_fluctuators(now)

    def _stress_fluctuators(self, age, where=Ellipsis) -> None:
        """A pulse ages the fluctuators of the pulsed devices by `age` seconds of dwell time:
        their next switch comes that much earlier (switched at the next access)."""
        self._rtn_next[where] -= age
        self._rtn_due = min(self._rtn_due, float(np.min(self._rtn_next[where])))

    def _switch_fluctuators(self, now: float) -> None:
        """Every fluctuator whose next switch time has passed switches once then, and an odd
        number of further times before `now` with the exact two-state probability; its next
        switch is drawn from `now` (memoryless). Exact at every access time, whatever the
        spacing of the accesses; only fluctuators that switched draw numbers."""
        nxt = self._rtn_next.reshape(-1)
        hit = np.flatnonzero(nxt <= now)
        tau = self._rtn_tau.reshape(-1)[hit]
        odd_more = self.rng_rtn.random(hit.size) < physics.telegraph_odd_flips(now - nxt[hit],
                                                                              tau)
        state = self._rtn_state.reshape(-1)
        state[hit] ^= ~odd_more
        nxt[hit] = now + self.rng_rtn.exponential(tau)
        self._rtn_due = float(nxt.min())
        n = self._rtn_amp.shape[2]
        dev = hit // n
        amp = self._rtn_amp.reshape(-1, n)[dev]
        self._fluct.reshape(-1)[dev] = (amp * (self._rtn_state.reshape(-1, n)[dev] - 0.5)).sum(1)

    @property
    def G(self) -> np.ndarray:
        """Nonvolatile conductance [S] at clock.now (copy; retention moves it with time)."""
        self._settle()
        return self._G.copy()

    @property
    def Gv(self) -> np.ndarray:
        """Volatile excess [S] at clock.now (copy)."""
        self._settle()
        return self._Gv.copy()

    @property
    def stuck(self) -> np.ndarray:
        """0 working, 1 stuck-HRS, 2 stuck-LRS (copy)."""
        return self._stuck.copy()

    @property
    def unformed(self) -> np.ndarray:
        """True where a device is not formed yet (copy)."""
        return np.isfinite(self._vform)

    @property
    def solver(self) -> NodalSolver:
        """The nodal solver of this crossbar's electrics (line resistance, faults)."""
        return self._solver

    def conductance(self) -> np.ndarray:
        """Conductance at clock.now [S] that a noise-free 0.2 V read would see: G + Gv, times
        the slow fluctuators' factor when the device has any."""
        self._settle()
        g = self._G + self._Gv
        if self._has_rtn:
            g = g * physics.fluctuation_factor(g, self._fluct, self._p)
        return g

    # -- pulses ----------------------------------------------------------------------------------
    def apply_device_voltages(self, v, seconds) -> None:
        """Every device (i, j) gets one pulse of amplitude v[i, j] [V] lasting `seconds` (one
        width, or one per device)."""
        if not np.all(np.asarray(seconds) >= 0):
            raise SimulatorError(f"pulse width must be >= 0 s, got {seconds!r}")
        self._settle()
        if self._G.size == 1:
            self._pulse_one(0, 0, float(np.asarray(v).reshape(-1)[0]),
                            float(np.asarray(seconds).reshape(-1)[0]))
            return
        self._pulse_array(self._voltage_map(v), seconds)

    # -- DC holds --------------------------------------------------------------------------------
    def start_dc_hold(self) -> None:
        """Begin holding new levels: the DC stress history of every device whose nonvolatile
        conductance has moved by more than retention's `reprogram_fraction` since its history
        began (a pulse, or switching under a hold) starts afresh; the others carry theirs
        on (`hold_devices`)."""
        self._settle()
        self._dc_dose, self._dc_g = self._dc_history()

    def _dc_history(self) -> tuple[np.ndarray, np.ndarray]:
        moved = np.abs(self._G - self._dc_g) > self._p.retention.reprogram_fraction * self._dc_g
        return np.where(moved, 0.0, self._dc_dose), np.where(moved, self._G, self._dc_g)

    def dc_widths(self, v_seq, seconds: float) -> np.ndarray:
        """Equivalent pulse widths [s], shape (k, rows, cols), of holding the k device-voltage
        maps `v_seq` one after the other for `seconds` each after `start_dc_hold`, at today's
        state (`physics.dc_width`): nothing changes."""
        self._settle()
        v_seq = np.asarray(v_seq, dtype=float).reshape(-1, *self.shape)
        dose = self._dc_history()[0]
        out = np.empty(v_seq.shape)
        for a, v in enumerate(v_seq):
            out[a] = self._dc_step(v, seconds, dose)
        return out

    def hold_devices(self, v, seconds: float) -> None:
        """Device voltages `v` held for `seconds`: the stress of a DC hold, continuing each
        device's DC stress history (`physics.dc_width`; `start_dc_hold` before new levels)."""
        self._settle()
        v = self._voltage_map(v)
        widths = self._dc_step(v, seconds, self._dc_dose)
        if self._G.size == 1:
            self._pulse_one(0, 0, float(v[0, 0]), float(widths[0, 0]))
        else:
            self._pulse_array(v, widths)

    def _dc_step(self, v: np.ndarray, seconds: float, dose: np.ndarray) -> np.ndarray:
        """Widths of one hold of `v` after `dose` (SET, RESET branch); `dose` updated in
        place."""
        p = self._p
        accel = physics.acceleration(self._G, self._Gv, v, self._ds, self._dr, p)
        up = v > 0.0
        widths = physics.dc_width(np.where(up, dose[0], dose[1]), accel, seconds, v, p)
        added = widths / p.t_ref * accel
        dose[0] += np.where(up, added, 0.0)
        dose[1] += np.where(up, 0.0, added)
        return widths

    def _voltage_map(self, v) -> np.ndarray:
        v = np.asarray(v, dtype=float)
        if v.shape != self.shape:
            raise SimulatorError(f"voltage map has shape {v.shape}, expected {self.shape}")
        return v

    def _pulse_array(self, v: np.ndarray, seconds) -> None:
        """The pulse update of every device (widths: one, or one per device)."""
        if self._any_unformed:
            self._form(v)
        xi = np.exp(self._sigma * self.rng.standard_normal(self.shape))
        drive = np.empty(self.shape) if self._stressed else None
        g_old = self._G
        self._G, self._Gv = physics.pulse_update(
            self._G, self._Gv, v, seconds, self._ds, self._dr, self._g0s, self._g0r, xi,
            self._frozen if self._any_frozen else None, self._p, self._psi, drive)
        self._ret.programmed(g_old, self._G, self.clock.now)
        if drive is not None:
            drive *= self._p.rtn_stress_time
            self._stress_fluctuators(drive[..., None])

    def pulse_device(self, row: int, col: int, volts: float, seconds: float) -> None:
        """A pulse on device (row, col) alone, every other device untouched (a single crosspoint
        wired on its own). The lean scalar path: one normal draw, plain float math."""
        self._settle()
        self._pulse_one(row, col, float(volts), float(seconds))

    def _pulse_one(self, r: int, c: int, v: float, seconds: float) -> None:
        if self._any_unformed:
            one = np.zeros(self.shape)
            one[r, c] = v
            self._form(one)
        xi = math.exp(self._sigma * self.rng.standard_normal())
        if self._stressed:
            self._stress_fluctuators(self._p.rtn_stress_time * physics.drive_scalar(
                float(self._G[r, c]), float(self._Gv[r, c]), v, seconds, float(self._ds[r, c]),
                float(self._dr[r, c]), self._p), (r, c))
        if self._stuck[r, c] != WORKING:
            return
        G, Gv = physics.pulse_update_scalar(
            float(self._G[r, c]), float(self._Gv[r, c]), v, seconds, float(self._ds[r, c]),
            float(self._dr[r, c]), float(self._g0s[r, c]), float(self._g0r[r, c]), xi, self._p,
            float(self._psi[r, c]))
        g_old = float(self._G[r, c])
        self._G[r, c] = G
        self._Gv[r, c] = Gv
        self._ret.programmed_one(self._G, (r, c), g_old, self.clock.now)

    def _form(self, v: np.ndarray) -> None:
        """Unformed devices whose voltage reaches their forming voltage are formed now."""
        now = np.isfinite(self._vform) & (v >= np.nan_to_num(self._vform, nan=np.inf))
        if now.any():
            g_old = self._G
            self._G = np.where(now, self._gform, self._G)
            self._ret.programmed(g_old, self._G, self.clock.now)
            self._Gv = np.where(now, 0.0, self._Gv)
            self._vform = np.where(now, np.nan, self._vform)
            self._setup()

    def predict_change(self, v, seconds: float) -> np.ndarray:
        """Change of G + Gv [S] that a pulse of device voltages `v` lasting `seconds` would make
        with the cycle-to-cycle factor at its median (1): no random draw, nothing changed.
        Forming is not predicted. Used to size the time steps of a DC hold (simulator.dc)."""
        self._settle()
        v = np.broadcast_to(np.asarray(v, dtype=float), self.shape)
        G, Gv = physics.pulse_update(
            self._G, self._Gv, v, seconds, self._ds, self._dr, self._g0s, self._g0r,
            np.ones(self.shape), self._frozen if self._any_frozen else None, self._p, self._psi)
        return (G + Gv) - (self._G + self._Gv)

    def noisy(self, current, averaging: float = 1.0):
        """`current` [A] as a measurement sees it: the read-noise model (two normal draws per
        value, relative and absolute; a float for a scalar). `averaging`: how many times longer
        than a read the measurement integrates (an SMU's power-line cycles against the 10 us
        read); the absolute (white) noise falls as its square root, the relative part does
        not."""
        p = self._p
        a = p.read_noise_abs / math.sqrt(averaging) if averaging > 1.0 else p.read_noise_abs
        if np.ndim(current) == 0:  # one sensed current (every emulated read): plain floats
            z0, z1 = self.rng.standard_normal(2).tolist()
            return float(current) * (1.0 + p.read_noise_rel * z0) + a * z1
        z = self.rng.standard_normal((2,) + np.shape(current))
        return current * (1.0 + p.read_noise_rel * z[0]) + a * z[1]

    def pulse_v3(self, row: int, col: int, volts: float, seconds: float) -> None:
        """V/3 write: selected row V, selected column 0, other rows V/3, other columns 2V/3.

        The selected device sees V, its row and column neighbours +V/3, all others -V/3, in one
        pulse. Line resistance is neglected while writing (ideal drivers)."""
        self._check(row, col)
        if self._solver.faulty:  # the line levels, so that a line cut off its driver floats
            third = volts / 3.0
            rv, cv = np.full(self.shape[0], third), np.full(self.shape[1], 2 * third)
            rv[row], cv[col] = volts, 0.0
            self.apply_line_pulse(rv, cv, seconds)
            return
        third = volts / 3.0
        v = np.full(self.shape, -third)
        v[row, :] = third
        v[:, col] = third
        v[row, col] = volts
        self.apply_device_voltages(v, seconds)

    def apply_line_pulse(self, row_v, col_v, seconds: float) -> None:
        """Pulse with line potentials row_v (rows,), col_v (cols,) [V]; device (i, j) sees
        row_v[i] - col_v[j]. NaN lines float: their potential is solved from the device network
        (sinh I-V at the pulse's levels, no line resistance) before the update."""
        row_v = np.asarray(row_v, dtype=float).reshape(self.shape[0])
        col_v = np.asarray(col_v, dtype=float).reshape(self.shape[1])
        if self._solver.faulty:
            row_v = np.where(self._solver.cut_rows, np.nan, row_v)
            col_v = np.where(self._solver.cut_cols, np.nan, col_v)
        if math.isnan(row_v.sum() + col_v.sum()):   # a NaN anywhere: a floating line
            ideal = NodalSolver(*self.shape, 0.0, 0.0, v_nl=self._p.v_nl, v_ref=self._p.v_ref)
            v = ideal.solve(self.conductance(), row_v, col_v).device_voltages
        else:
            v = row_v[:, None] - col_v[None, :]
        self.apply_device_voltages(v, seconds)

    # -- measurements ---------------------------------------------------------------------------
    def measure(self, row_v, col_v) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free nodal solve; returns currents [A] into the array at each driven row and
        column end (0 for floating lines, NaN voltage = floating)."""
        G = self.conductance()
        rv = np.asarray(row_v, dtype=float)
        cv = np.asarray(col_v, dtype=float)
        if not math.isnan(rv.sum() + cv.sum()):  # every line driven: the fixed-point solve
            out = self._solver.driven_currents(G, rv, cv)
            if out is not None:
                return out
        res = self._solver.solve(G, rv, cv)
        return res.row_currents, res.col_currents

    def column_currents(self, row_v, *, noise: bool = True, averaging: float = 1.0,
                        lines: bool = True,
                        nonlinear: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Analog read-out: word line i at row_v[a, i] [V] (0 = held at 0 V), every bit line at
        virtual ground, for each pattern a of row_v (k, rows). Returns (row currents (k, rows)
        [A] into the array, column currents (k, cols) [A] out of the array into the virtual
        ground), through the nodal solver (line resistance, sneak paths, sinh I-V).

        `noise`: each column current gets the read noise of a sensed current (two normals
        each from the crossbar's generator, as `read`), integrated `averaging` times a read's
        time (`noisy`). `lines=False` / `nonlinear=False`
        solve the same array without line and source resistance / with linear devices, to
        attribute an error to each effect (no random numbers are drawn for them unless
        `noise`)."""
        solver = self._solver
        if not (lines and nonlinear):
            key = (lines, nonlinear)
            solver = self._variants.get(key)
            if solver is None:
                cfg, p = self.config, self._p
                solver = self._variants[key] = NodalSolver(
                    cfg.rows, cfg.cols, cfg.r_line if lines else 0.0,
                    cfg.r_source if lines else 0.0, v_nl=p.v_nl if nonlinear else None,
                    v_ref=p.v_ref, faults=cfg.faults if lines else ())
        rc, cc = solver.readout_currents(self.conductance(), row_v)
        if noise:
            cc = self.noisy(cc, averaging)
        return rc, cc

    def _bias(self, row: int, col: int, volts: float, scheme: str):
        m, n = self.shape
        if scheme == "v2":
            rv, cv = np.full(m, volts / 2), np.full(n, volts / 2)
        elif scheme == "v3":
            rv, cv = np.full(m, volts / 3), np.full(n, 2 * volts / 3)
        elif scheme == "floating":
            rv, cv = np.full(m, np.nan), np.full(n, np.nan)
        elif scheme == "grounded":
            rv, cv = np.zeros(m), np.zeros(n)
        else:
            raise SimulatorError(f"unknown read scheme {scheme!r}; choose one of {SCHEMES}")
        rv[row] = volts
        cv[col] = 0.0
        return rv, cv

    def _sensed(self, row: int, col: int, volts: float, scheme: str) -> float:
        """Noise-free current [A] into the sense amplifier on bit line `col`."""
        if scheme == "grounded":
            return float(self._solver.grounded_column_currents(self.conductance(), volts,
                                                               rows=[row])[0, col])
        rv, cv = self._bias(row, col, volts, scheme)
        return float(-self._solver.solve(self.conductance(), rv, cv).col_currents[col])

    def read(self, row: int, col: int, volts: float = 0.2, scheme: str = "grounded") -> float:
        """Measured conductance [S] = sensed current / volts, incl. read noise and sneak paths."""
        self._check(row, col)
        if volts == 0:
            raise SimulatorError("read voltage must not be 0 V")
        if scheme == "grounded":
            # the verify read of every tuning step: straight to the solver
            cur = float(self._solver.grounded_row_currents(self.conductance(), volts, row)[col])
        elif scheme in SCHEMES:
            cur = self._sensed(row, col, volts, scheme)
        else:
            raise SimulatorError(f"unknown read scheme {scheme!r}; choose one of {SCHEMES}")
        # the same two draws as noisy, in plain floats
        z0, z1 = self.rng.standard_normal(2).tolist()
        p = self._p
        return (cur * (1.0 + p.read_noise_rel * z0) + p.read_noise_abs * z1) / volts

    def read_map(self, volts: float = 0.2, scheme: str = "grounded",
                 noise: bool = True) -> np.ndarray:
        """Measured conductance [S] of every device, each read as `read` would (one bias each)."""
        if volts == 0:
            raise SimulatorError("read voltage must not be 0 V")
        if scheme == "grounded":
            cur = self._solver.grounded_column_currents(self.conductance(), volts)
        elif scheme in SCHEMES:
            m, n = self.shape
            cur = np.array([[self._sensed(i, j, volts, scheme) for j in range(n)]
                            for i in range(m)])
        else:
            raise SimulatorError(f"unknown read scheme {scheme!r}; choose one of {SCHEMES}")
        if noise:
            cur = self.noisy(cur)
        return cur / volts

    def _check(self, row: int, col: int) -> None:
        m, n = self.shape
        if not (0 <= row < m and 0 <= col < n):
            raise SimulatorError(f"device ({row},{col}) outside the {m}x{n} crossbar")

    # -- save / restore ----------------------------------------------------------------------
    def state_dict(self, include_clock: bool = True) -> dict:
        """Everything needed to continue identically: config, arrays, RNG state, (clock)."""
        self._settle()
        d = {"config": self.config.model_dump(mode="json"),
             "rng": json.dumps(self.rng.bit_generator.state),
             "rng_rtn": json.dumps(self.rng_rtn.bit_generator.state),
             "t_gv": self._t_gv}
        for k in _STATE_ARRAYS:
            if k not in _RET_ARRAYS:
                d[k] = getattr(self, "_" + k).copy()
        d.update(self._ret.state())
        if include_clock:
            d["clock"] = self.clock.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a `state_dict`; the clock too when the dict carries one."""
        try:
            cfg = CrossbarConfig.model_validate(d["config"])
            t_gv = float(d["t_gv"])
            arrays: dict[str, np.ndarray] = {}
            for k in _STATE_ARRAYS:
                arrays[k] = (np.array(d[k]) if k in d or k not in _LATE_ARRAYS
                             else _LATE_ARRAYS[k](cfg, arrays, t_gv))
            rng_state = json.loads(str(d["rng"]))
            # a state saved before the fluctuators existed has none, so never draws from it
            rtn_state = json.loads(str(d["rng_rtn"])) if "rng_rtn" in d else None
        except (KeyError, ValueError, TypeError) as e:
            raise SimulatorError(f"bad crossbar state: {e}") from e
        shape = (cfg.rows, cfg.cols)
        n_rtn = arrays["rtn_amp"].shape[2:3]
        for k, a in arrays.items():
            want = shape + n_rtn if k in _RTN_ARRAYS else (2, *shape) if k == "dc_dose" else shape
            if a.shape != want:
                raise SimulatorError(f"bad crossbar state: {k} has shape {a.shape}, expected {want}")
        self.config = cfg
        self.shape = shape
        self.rng.bit_generator.state = rng_state
        if rtn_state is not None:
            self.rng_rtn.bit_generator.state = rtn_state
        for k, a in arrays.items():
            if k not in _RET_ARRAYS:
                dtype = np.int8 if k in ("stuck", "rtn_state") else float
                setattr(self, "_" + k, a.astype(dtype))
        self._ret = Retention(cfg.device.retention, cfg.device.g_min,
                              {k: arrays[k] for k in _RET_ARRAYS})
        if "clock" in d and d["clock"] is not None:
            self.clock.load_state_dict(d["clock"])
        self._t_gv = t_gv
        self._setup()

    @classmethod
    def from_state_dict(cls, d: dict, clock: VirtualClock | None = None) -> Crossbar:
        xb = cls(CrossbarConfig.model_validate(d["config"]), seed=0, clock=clock)
        xb.load_state_dict(d)
        return xb
