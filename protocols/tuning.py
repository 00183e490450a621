"""Write-verify tuning of one device (Alibart et al. 2012) and a faster variant.

Functional core, imperative shell: `decide(state, g, target, cfg)` is a pure function that turns
the latest read into the next action (pulse at some amplitude, take confirmation reads, or stop).
`tune(rig, row, col, target, cfg)` is the thin loop that executes those actions on a rig and
records every pulse and read.

Algorithms (``TuneConfig.algorithm``):

``alibart``  physics.md §2.1. SET ramp when below the band, RESET ramp when above, each ramp
             restarted from its start value when the polarity changes, amplitudes left alone on
             in-band reads (``reset_on_inband=True`` reproduces the 3IT defect, §2.2).
``fast``     the same loop with two changes. (1) Warm start: a ramp restarted after a polarity
             change begins ``warm_margin`` volts short of the last amplitude of that polarity that
             visibly moved the device, instead of at the start value; this removes the 20-40
             sub-threshold steps per restart (also from one tuning of a device to its next:
             ``tune(..., warm=previous.warm)``). (2) Aimed steps: switching speed is roughly
             exponential in amplitude, so from the size of the last step the next amplitude is
             chosen to cover ``fast_aim`` (half) of the remaining error while far from the
             target and all of it near the target, where a pulse's fluctuator jump on the
             calibrated devices exceeds the band (bounded to ``fast_max_steps`` ramp steps);
             sub-threshold pulses far from the target climb ``fast_far_steps`` ramp steps at a
             time (SET), or as many more as the RESET branch is softer (fast_v0_reset /
             fast_v0_set), the same change of switching rate. Amplitudes stay on a grid
             (start + k ``fast_grid``, 40 mV: every other step of Alibart's ramps), so a tuning
             uses few distinct amplitudes (a PMU keeps each one's waveform loaded). (3) Reads
             again at the band's edge: an out-of-band read whose execution's reads average
             within ``fast_reread`` of the band (read noise,
             the device itself inside) is followed, once per pulse, by n_inband new reads
             instead of a pulse, which would draw the device's fluctuators anew; the criterion
             stays n_inband successive in-band reads. (4) Gives up (failed, ``gave_up``) after
             ``give_up_still`` pulses at a ramp cap that left the reads still: a stuck or
             clipped device reads the same whatever the pulse, while a working one pulsed at a
             cap steps or has its fluctuators jump (``give_up_at_cap`` still applies to both
             variants). The default: as precise as ``alibart``
             on the simulated devices with under half its pulses (docs/simulator.md, "Station
             time").
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols.errors import ConfigError

READ, PULSE = 0, 1  # history `kind` codes


class TuneConfig(BaseModel):
    """Write-verify settings, SI units. Defaults are the lab settings of the paper's data, but
    for the algorithm (the paper's data were taken with 'alibart')."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Literal["alibart", "fast"] = Field(
        "fast", description="tuning algorithm: 'fast' (default: as precise on the simulated "
        "devices with about a third of the pulses, docs/simulator.md) or 'alibart' (the "
        "paper's data)")
    read_volts: float = Field(0.2, gt=0, le=0.5, description="verify read voltage [V] (the rig's)")
    v_set_start: float = Field(1.1, gt=0, le=3.0, description="first SET amplitude [V] (project: 0.8)")
    v_set_max: float = Field(2.0, gt=0, le=3.0, description="SET ramp cap [V]")
    v_reset_start: float = Field(-1.1, lt=0, ge=-3.0, description="first RESET amplitude [V]")
    v_reset_min: float = Field(-2.4, lt=0, ge=-3.0, description="RESET ramp cap (most negative) [V]")
    v_step: float = Field(0.02, gt=0, le=0.5, description="ramp increment per pulse [V]")
    width: float = Field(200e-9, gt=0, le=1e-3, description="pulse width [s]")
    tolerance: float = Field(0.01, gt=0, lt=1, description="band half-width, fraction of target")
    n_inband: int = Field(10, ge=1, le=1000, description="successive in-band reads to finish")
    max_pulses: int = Field(1000, ge=1, description="pulse cap; a tuning that needs more fails")
    give_up_at_cap: int | None = Field(50, ge=1, description="stop early (failed) after this many "
                                       "successive pulses at a ramp cap: a stuck device; None = "
                                       "only the pulse cap ends a tuning")
    give_up_still: int | None = Field(8, ge=1, description="fast: stop early (failed) after this "
                                      "many successive pulses at a ramp cap that left the "
                                      "device's reads still (a stuck device; a working one shows "
                                      "a step or a fluctuator jump); None = off")
    reset_on_inband: bool = Field(False, description="reproduce the 3IT edge-trap defect")
    # fast variant
    warm_margin: float = Field(0.1, ge=0, le=1, description="fast: restart this far below the "
                               "last moving amplitude [V]")
    move_rel: float = Field(0.5, gt=0, description="fast: a pulse 'moved' the device when the read "
                            "changed by >= move_rel * tolerance * target in its direction")
    fast_v0_set: float = Field(0.08, gt=0, description="fast: assumed SET softness V0 [V]")
    fast_v0_reset: float = Field(0.17, gt=0, description="fast: assumed RESET softness V0 [V]")
    fast_aim: float = Field(0.5, gt=0, le=1, description="fast: aim each pulse at this fraction "
                            "of the remaining error")
    fast_max_steps: float = Field(10.0, gt=0, description="fast: largest amplitude change per "
                                  "pulse, in ramp steps")
    fast_far: float = Field(3.0, gt=0, description="fast: 'far from target' = remaining error "
                            "above this many band half-widths")
    fast_far_steps: int = Field(6, ge=1, le=20, description="fast: ramp steps per pulse while "
                                "sub-threshold and far from target")
    fast_grid: float = Field(0.04, gt=0, le=0.5, description="fast: amplitude grid [V]; aimed "
                             "amplitudes are rounded to the ramp start + k fast_grid")
    fast_reread: float = Field(0.85, ge=0, le=1, description="fast: an out-of-band read is read "
                               "again instead of pulsed (once per pulse) when the mean of its "
                               "execution's reads lies within this fraction of the band; 0 = never")

    @model_validator(mode="after")
    def _ordered(self) -> TuneConfig:
        if self.v_set_max < self.v_set_start:
            raise ValueError(f"v_set_max {self.v_set_max} V is below v_set_start {self.v_set_start} V")
        if self.v_reset_min > self.v_reset_start:
            raise ValueError(f"v_reset_min {self.v_reset_min} V is above v_reset_start "
                             f"{self.v_reset_start} V")
        return self


# -- the pure decision core --------------------------------------------------------------------

@dataclass(frozen=True)
class TuneState:
    """Everything the decision needs to remember between reads."""

    v_set: float
    v_reset: float
    ok: int = 0                 # successive in-band reads so far
    pulses: int = 0
    set_pulses: int = 0
    reset_pulses: int = 0
    last_volts: float = 0.0     # amplitude of the last pulse (0: none yet)
    g_before: float = math.nan  # read that led to the last pulse
    warm_set: float = math.nan  # fast: last SET amplitude that moved the device
    warm_reset: float = math.nan
    at_cap: int = 0             # successive pulses at a ramp cap
    still: int = 0              # fast: successive pulses at a ramp cap that left the reads still
    mean_before: float = math.nan  # fast: mean of the reads that led to the last pulse
    gave_up: bool = False       # stopped by give_up_at_cap (looks stuck)
    reread: bool = False        # fast: read again since the last pulse instead of pulsing


@dataclass(frozen=True)
class Action:
    kind: Literal["pulse", "confirm", "read", "done"]
    volts: float = 0.0          # pulse amplitude
    n: int = 0                  # confirmation reads still needed
    converged: bool = False


def initial_state(cfg: TuneConfig, warm: tuple[float, float] | None = None) -> TuneState:
    """Start of a tuning. `warm` = (SET, RESET) amplitudes that last moved this device in an
    earlier tuning (TuneResult.warm): the fast variant starts its ramps `warm_margin` short of
    them; Alibart always starts at the start values."""
    state = TuneState(v_set=cfg.v_set_start, v_reset=cfg.v_reset_start)
    if cfg.algorithm != "fast" or warm is None:
        return state
    state = replace(state, warm_set=float(warm[0]), warm_reset=float(warm[1]))
    return replace(state, v_set=_restart_set(state, cfg, True),
                   v_reset=_restart_reset(state, cfg, True))


def decide(state: TuneState, g: float, target: float, cfg: TuneConfig,
           g_mean: float | None = None) -> tuple[TuneState, Action]:
    """Next action after reading `g` [S]; pure (no I/O, no randomness). `g_mean`: the mean of
    every read of the execution `g` came from (the same device state), or None."""
    fast = cfg.algorithm == "fast"
    # What did the last pulse do? Only the fast variant uses it.
    moved = False
    step_done = 0.0
    if state.last_volts != 0.0 and math.isfinite(state.g_before):
        sign = 1.0 if state.last_volts > 0 else -1.0
        step_done = sign * (g - state.g_before)
        moved = step_done >= cfg.move_rel * cfg.tolerance * target
    if fast and state.last_volts != 0.0:
        state = replace(state, still=_still(state, g if g_mean is None else g_mean, target, cfg))
    if fast and moved:
        if state.last_volts > 0:
            state = replace(state, warm_set=state.last_volts)
        else:
            state = replace(state, warm_reset=state.last_volts)

    band = cfg.tolerance * target
    err = g - target
    if abs(err) <= band:
        ok = state.ok + 1
        new = replace(state, ok=ok, last_volts=0.0, g_before=math.nan)
        if cfg.reset_on_inband:  # the 3IT defect, kept on purpose as an option
            new = replace(new, v_set=cfg.v_set_start, v_reset=cfg.v_reset_start)
        if ok >= cfg.n_inband:
            return new, Action("done", converged=True)
        return new, Action("confirm", n=cfg.n_inband - ok)

    if state.pulses >= cfg.max_pulses:
        return replace(state, ok=0), Action("done", converged=False)
    if ((cfg.give_up_at_cap is not None and state.at_cap >= cfg.give_up_at_cap)
            or (fast and cfg.give_up_still is not None and state.still >= cfg.give_up_still)):
        return replace(state, ok=0, gave_up=True), Action("done", converged=False)
    if (fast and g_mean is not None and not state.reread
            and abs(g_mean - target) <= cfg.fast_reread * band):
        # read noise at the band's edge, the state itself inside: n_inband new successive
        # reads cost an execution like a pulse would, without a new draw of the fluctuators
        return replace(state, ok=0, reread=True), Action("read", n=cfg.n_inband)

    if err < 0:  # too low -> SET
        v = state.v_set  # already restarted by any RESET pulse in between
        if fast:
            v = _on_grid(_fast_amplitude(state, v, +1, moved, step_done, abs(err), band, cfg),
                         cfg.v_set_start, cfg)
        v = min(max(v, cfg.v_set_start), cfg.v_set_max)
        nxt = min(v + cfg.v_step, cfg.v_set_max)
        at_cap = state.at_cap + 1 if v >= cfg.v_set_max and state.last_volts > 0 else int(
            v >= cfg.v_set_max)
        new = replace(state, ok=0, pulses=state.pulses + 1, set_pulses=state.set_pulses + 1,
                      reread=False, mean_before=g if g_mean is None else g_mean,
                      at_cap=at_cap, v_set=nxt, v_reset=_restart_reset(state, cfg, fast),
                      last_volts=v, g_before=g)
        return new, Action("pulse", volts=v)
    # too high -> RESET
    v = state.v_reset
    if fast:
        v = _on_grid(_fast_amplitude(state, v, -1, moved, step_done, abs(err), band, cfg),
                     cfg.v_reset_start, cfg)
    v = max(min(v, cfg.v_reset_start), cfg.v_reset_min)
    nxt = max(v - cfg.v_step, cfg.v_reset_min)
    at_cap = state.at_cap + 1 if v <= cfg.v_reset_min and state.last_volts < 0 else int(
        v <= cfg.v_reset_min)
    new = replace(state, ok=0, pulses=state.pulses + 1, reset_pulses=state.reset_pulses + 1,
                  reread=False, mean_before=g if g_mean is None else g_mean,
                  at_cap=at_cap, v_reset=nxt, v_set=_restart_set(state, cfg, fast),
                  last_volts=v, g_before=g)
    return new, Action("pulse", volts=v)


def _still(state: TuneState, g_mean: float, target: float, cfg: TuneConfig) -> int:
    """Fast variant, after a pulse: successive pulses at a ramp cap whose reads (the mean of each
    execution's) moved by less than `move_rel` band half-widths of the larger of read and
    target. A working device pulsed at a cap either steps or, through the same drive, has its
    fluctuators jump by percents; a stuck or clipped one reads the same within read noise."""
    at_cap = state.last_volts >= cfg.v_set_max or state.last_volts <= cfg.v_reset_min
    quiet = abs(g_mean - state.mean_before) < cfg.move_rel * cfg.tolerance * max(g_mean, target)
    return state.still + 1 if at_cap and quiet else 0


def _fast_amplitude(state: TuneState, v_ramp: float, sign: int, moved: bool, step_done: float,
                    remaining: float, band: float, cfg: TuneConfig) -> float:
    """Fast variant: the next amplitude of a ramp that continues in the same polarity.

    The switching rate is ~exp(|V| / V0), so from the last step size we can aim the next pulse
    at a fraction `fast_aim` of the remaining error: |V'| = |V| + V0 ln(aim * remaining / step).
    The change is bounded to `fast_max_steps` ramp steps either way. A pulse that did not move
    the device (sub-threshold) is followed by `fast_far_steps` ramp steps while far from the
    target.
    """
    same = state.last_volts != 0.0 and (state.last_volts > 0) == (sign > 0)
    if not same:
        return v_ramp  # first pulse of this polarity: start value or warm start
    last = abs(state.last_volts)
    dv = cfg.v_step
    if moved and step_done > 0:
        v0 = cfg.fast_v0_set if sign > 0 else cfg.fast_v0_reset
        # near the target a pulse's fluctuator jump is larger than the band: aim at the whole
        # remaining error there, at a fraction of it only while far (overshoot costs a ramp)
        aim = cfg.fast_aim if remaining > cfg.fast_far * band else 1.0
        want = max(aim * max(remaining, band), 1e-30)
        delta = v0 * math.log(want / step_done)
        delta = min(max(delta, -cfg.fast_max_steps * dv), cfg.fast_max_steps * dv)
        return sign * (last + delta)
    if remaining <= cfg.fast_far * band:
        return sign * (last + dv)
    # far: climb by the same change of switching rate in either polarity, fast_far_steps ramp
    # steps of the sharper SET branch, proportionally more of the softer RESET branch
    steps = cfg.fast_far_steps * (1.0 if sign > 0 else cfg.fast_v0_reset / cfg.fast_v0_set)
    return sign * (last + round(steps) * dv)


def _on_grid(v: float, start: float, cfg: TuneConfig) -> float:
    """`v` rounded to the fast variant's amplitude grid, start + k `fast_grid`: the amplitudes a
    tuning uses are few, so a rig keeps each one's waveform loaded (PmuRig, which pays six
    messages to define each new one). The caller clamps the result to the ramp caps."""
    q = cfg.fast_grid
    return round(start + round((v - start) / q) * q, 9)


def _restart_set(state: TuneState, cfg: TuneConfig, fast: bool) -> float:
    """SET amplitude to use after a RESET pulse: the start value, or the warm start."""
    if fast and math.isfinite(state.warm_set):
        return min(max(cfg.v_set_start, state.warm_set - cfg.warm_margin), cfg.v_set_max)
    return cfg.v_set_start


def _restart_reset(state: TuneState, cfg: TuneConfig, fast: bool) -> float:
    if fast and math.isfinite(state.warm_reset):
        return max(min(cfg.v_reset_start, state.warm_reset + cfg.warm_margin), cfg.v_reset_min)
    return cfg.v_reset_start


# -- the imperative shell ----------------------------------------------------------------------

HISTORY_FIELDS = ("kind", "volts", "width", "g", "t", "used")


@dataclass
class TuneResult:
    """Outcome of one tuning. Conductances in S, times in s (instrument time)."""

    row: int
    col: int
    target: float
    converged: bool
    pulses: int
    set_pulses: int
    reset_pulses: int
    g_initial: float
    final_reads: np.ndarray          # the in-band confirmation reads (or the last read on failure)
    t_start: float
    t_end: float
    gave_up: bool = False            # stopped early at a ramp cap (the device looks stuck)
    #: (SET, RESET) amplitudes [V] that last moved the device (fast variant; NaN = none):
    #: pass as `warm` to the next tuning of the same device
    warm: tuple[float, float] = (math.nan, math.nan)
    #: every pulse and read, in order: kind (0 read, 1 pulse + verify read), volts, width [s],
    #: g [S] (the read), t [s] (instrument time after it), used (False: a confirmation read taken
    #: in the same execution after an out-of-band read, recorded but not acted on)
    history: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def g_final(self) -> float:
        return float(np.mean(self.final_reads)) if self.final_reads.size else math.nan

    @property
    def error_rel(self) -> float:
        return (self.g_final - self.target) / self.target

    @property
    def polarity(self) -> np.ndarray:
        return np.sign(self.history["volts"]).astype(np.int8)


def check_tune(cfg: TuneConfig, limits, read) -> None:
    """ConfigError unless the ramp caps and the width fit the station `limits` and the config
    reads at the station's read voltage (`read`: a ReadSettings)."""
    for v in (cfg.v_set_max, cfg.v_reset_min):
        try:
            limits.check_pulse(v, cfg.width)
        except Exception as e:
            raise ConfigError(f"tuning ramp cap outside the station limits: {e}") from None
    if abs(cfg.read_volts - read.volts) > 1e-9:
        raise ConfigError(f"tune config reads at {cfg.read_volts} V but the station reads at "
                          f"{read.volts} V")


def verifiable_range(tolerance: float, read) -> tuple[float, float]:
    """[lo, hi): the targets [S] a station can verify with a band of +-`tolerance` (a fraction):
    the whole band target * (1 +- tolerance) inside the read range, above the smallest
    conductance a read resolves (`read.floor_S`) and below the conductance where reads clip
    (`read.ceiling_S`; a clipped read would pass for an in-band one)."""
    return read.floor_S / (1 - tolerance), read.ceiling_S / (1 + tolerance)


def describe_range(tolerance: float, read) -> str:
    """The verifiable range in words, for refusals."""
    lo, hi = verifiable_range(tolerance, read)
    return (f"reads resolve {read.floor_S * 1e6:.3g} to {read.ceiling_S * 1e6:.3g} uS, so with a "
            f"{100 * tolerance:.3g} % band targets must lie in [{lo * 1e6:.5g}, {hi * 1e6:.5g}) uS")


def check_target(target: float, tolerance: float, read) -> None:
    """ConfigError unless the station can verify `target` [S] (`verifiable_range`)."""
    lo, hi = verifiable_range(tolerance, read)
    if not (math.isfinite(target) and lo <= target < hi):
        raise ConfigError(f"tuning target {target!r} S is outside what the station can verify: "
                          f"{describe_range(tolerance, read)}")


def tune(rig, row: int, col: int, target: float, cfg: TuneConfig | None = None,
         record: Callable[[dict], None] | list | None = None,
         warm: tuple[float, float] | None = None) -> TuneResult:
    """Tune device (row, col) of `rig` to `target` siemens with write-verify.

    Refuses (ConfigError) before the first read or pulse a config that leaves the station limits
    and a target the station cannot verify (`check_tune`, `check_target`).

    Every pulse goes with its verify read in one execution (`rig.pulse_and_read`), with the fast
    variant also the n_inband - 1 confirmation reads a landing in band needs; with Alibart's
    the confirmation reads once in band are taken together (`rig.read_repeated`). Either way
    they are judged one by one exactly as single reads would be (recorded unused after an
    out-of-band read that leads to a pulse), so the result is the same algorithm with fewer
    round trips; the fast variant's decision also sees the mean of the execution's reads
    (`decide`'s g_mean: read again instead of pulsing at the band's edge). `record`
    (a callable or a list) receives every event as a dict with HISTORY_FIELDS. `warm`: the
    `TuneResult.warm` of this device's previous tuning (fast variant: ramps start near the
    amplitudes that moved it then).
    """
    cfg = cfg or TuneConfig()
    fast = cfg.algorithm == "fast"
    rows, cols = rig.shape
    if not (0 <= row < rows and 0 <= col < cols):
        raise ConfigError(f"device ({row},{col}) is outside the {rows}x{cols} crossbar")
    # refuse the whole tuning up front, not half-way through or after pulsing to a ramp cap
    check_tune(cfg, rig.limits, rig.read_settings)
    check_target(target, cfg.tolerance, rig.read_settings)
    sink = record.append if isinstance(record, list) else record
    hist: dict[str, list] = {k: [] for k in HISTORY_FIELDS}

    def log(kind: int, volts: float, width: float, g: float, t: float) -> int:
        hist["kind"].append(kind)
        hist["volts"].append(volts)
        hist["width"].append(width)
        hist["g"].append(g)
        hist["t"].append(t)
        hist["used"].append(True)
        if sink is not None:
            sink(dict(kind=kind, volts=volts, width=width, g=g, t=t, used=True, row=row, col=col))
        return len(hist["g"]) - 1

    t_start = float(rig.clock)
    g0 = float(rig.read(row, col))
    # (read, its history index, the mean of its execution's reads)
    pending: deque[tuple[float, int, float]] = deque(
        [(g0, log(READ, 0.0, 0.0, g0, float(rig.clock)), g0)])
    state = initial_state(cfg, warm)
    inband: list[float] = []
    converged = False
    last = g0
    while pending:
        g, idx, g_mean = pending.popleft()
        last = g
        state, act = decide(state, g, target, cfg, g_mean)
        if act.kind in ("confirm", "read"):
            if act.kind == "confirm":
                inband.append(g)
            else:
                inband.clear()
            if not pending:
                t0 = float(rig.clock)
                reads = rig.read_repeated(row, col, act.n)
                t1 = float(rig.clock)
                m = float(np.mean(reads))
                for i, r in enumerate(reads):
                    t = t0 + (t1 - t0) * (i + 1) / len(reads)
                    pending.append((float(r), log(READ, 0.0, 0.0, float(r), t), m))
            continue
        if act.kind == "done":
            if act.converged:
                inband.append(g)
                converged = True
            break
        # pulse: reads queued after this out-of-band one are stale, recorded but unused
        for _, j, _ in pending:
            hist["used"][j] = False
        pending.clear()
        inband.clear()
        # fast: the pulse's execution also takes the confirmation reads it would need if its
        # verify read lands in band (judged one by one like separate reads, unused otherwise);
        # Alibart's reads stay as the paper's data were taken (a separate confirmation)
        t0 = float(rig.clock)
        reads = np.atleast_1d(rig.pulse_and_read(row, col, act.volts, cfg.width,
                                                 n_reads=cfg.n_inband if fast else 1))
        t1 = float(rig.clock)
        r, m = float(reads[0]), float(np.mean(reads))
        pending.append((r, log(PULSE, act.volts, cfg.width, r,
                               t0 + (t1 - t0) / len(reads)), m))
        for i, x in enumerate(reads[1:], start=2):
            pending.append((float(x), log(READ, 0.0, 0.0, float(x),
                                          t0 + (t1 - t0) * i / len(reads)), m))

    final = np.asarray(inband if converged else [last], dtype=float)
    history = {k: np.asarray(v, dtype=bool if k == "used" else (np.int8 if k == "kind" else float))
               for k, v in hist.items()}
    return TuneResult(row=row, col=col, target=float(target), converged=converged,
                      pulses=state.pulses, set_pulses=state.set_pulses,
                      reset_pulses=state.reset_pulses, g_initial=g0, gave_up=state.gave_up, final_reads=final,
                      t_start=t_start, t_end=float(rig.clock), history=history,
                      warm=(state.warm_set, state.warm_reset))
