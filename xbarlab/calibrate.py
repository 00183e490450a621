"""Fit the simulated device to a measured non-ideality database.

The fit replays, on simulated crossbars, the characterisation campaigns behind a non-ideality
database (tuning/untuning on single devices, V/3 disturbance and stuck screening on crossbars of the
model's geometry),
builds a database from those runs with the same builder a lab uses (`database.build`), and
moves the device parameters until that database matches the target:

- tuning: sigma per level (within device), mean offset, per-device offset spread (and the mean
  offset per level where the target measured levels);
- disturbance: the distribution of the change per k bin, compared through the empirical CDF of
  the simulated samples at the target's quantiles (the quantity the two-sample KS statistic
  takes the maximum of);
- stuck devices: the rates and value models are taken from the target as they are (the
  screening finds them; `fidelity` shows how well).

How the target was measured matters for the time-dependent physics (volatile relaxation, slow
fluctuations): `Setup.round_trip` is the station's time per closed-loop step and `settle_s` the
wait before the settled tuning read. Every evaluation uses the same seeds (common random
numbers), so the objective is a deterministic function of the parameters. The optimiser is a
bounded Levenberg-Marquardt on normalised parameters with one finite-difference Jacobian and
Broyden updates after it: about `1 + n_params + steps` evaluations.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from scipy import stats

from simulator.config import CrossbarConfig, DeviceParams, LatencyConfig
from simulator.crossbar import Crossbar
from simulator.errors import SimulatorError

MODEL_FORMAT = "xbarlab-chip-model/1"

#: k bins of the disturbance comparison (k = devices programmed after)
K_BINS = ((1, 1), (2, 8), (9, 16), (17, 24), (25, 40), (41, 63))
#: target quantiles at which the simulated CDF is compared
_PROBS = np.array([0.01, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97, 0.99])
#: tolerances that make one residual unit (the fidelity goals of docs/simulator.md)
TOL_KS = 0.10
TOL_SIGMA = 0.0005      # 0.05 percentage points of G
TOL_OFFSET = 0.001      # 0.1 percentage points
TOL_STUCK = 0.002       # 0.2 percentage points
#: a bin needs this many target samples to enter the fit; bins above FULL_WEIGHT count fully
MIN_BIN, FULL_WEIGHT = 50, 300


@dataclass(frozen=True)
class Bound:
    lo: float
    hi: float
    log: bool = False

    def to_unit(self, x: float) -> float:
        x = min(max(x, self.lo), self.hi)
        if self.log:
            return (math.log(x) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        return (x - self.lo) / (self.hi - self.lo)

    def from_unit(self, u: float) -> float:
        u = min(max(u, 0.0), 1.0)
        if self.log:
            return math.exp(math.log(self.lo) + u * (math.log(self.hi) - math.log(self.lo)))
        return self.lo + u * (self.hi - self.lo)


#: the parameters the fit may move, with their physical ranges (docs/simulator.md, "Calibration")
BOUNDS: dict[str, Bound] = {
    "v0_reset": Bound(0.12, 0.25),
    "sigma_vth": Bound(0.03, 0.15),
    "volatile_cap": Bound(1e-3, 5e-2, log=True),
    "sigma_volatile": Bound(0.0, 1.5),
    "tau_relax": Bound(0.3, 300.0, log=True),
    "rtn_amplitude": Bound(1e-3, 0.1, log=True),
    "rtn_sigma": Bound(0.2, 2.0),
    "rtn_tau_min": Bound(10.0, 1e6, log=True),
    "rtn_stress_time": Bound(10.0, 1e7, log=True),
    "rtn_exponent": Bound(0.0, 1.5),
    "read_noise_abs": Bound(20e-9, 400e-9, log=True),
}
#: fitted by default: every bounded parameter except the shortest dwell time, which the
#: published data do not pin down (it only has to stay well above the minutes of a settled
#: read; see docs/simulator.md)
DEFAULT_PARAMS = tuple(n for n in BOUNDS if n != "rtn_tau_min")


class Setup(BaseModel):
    """How the target database was measured (replayed on the simulator) and how large each
    evaluation of the fit is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- the measurement the target came from ------------------------------------------------
    round_trip: float = Field(3e-3, gt=0, le=10, description="station time per closed-loop "
                              "step (pulse + verify read) and per device of a read map [s]")
    settle_s: float = Field(60.0, ge=0, description="wait between a tuning and its settled "
                            "read [s]")
    algorithm: Literal["alibart", "fast"] = Field(
        "alibart", description="write-verify the target was measured with (the published "
        "data: Alibart's; xbarlab's own default is the fast variant)")
    cut: float | None = Field(None, gt=0, description="disturbance samples with |delta| above "
                              "this were dropped from the target [S]; the same cut is applied "
                              "to the simulated samples")
    levels: int = Field(8, ge=2, le=64, description="tuning levels when the target holds only "
                        "a fitted line (no measured levels)")
    g_low: float = Field(100e-6, gt=0, description="lowest level then [S]")
    g_high: float = Field(400e-6, gt=0, description="highest level then [S]")
    # -- size of one evaluation ---------------------------------------------------------------
    tuning_devices: int = Field(12, ge=2, description="single devices tuned")
    tuning_repeats: int = Field(5, ge=1, description="tunings per device and level")
    disturbance_crossbars: int = Field(8, ge=1, description="crossbars (the model's geometry) "
                                       "programmed in raster order")
    stuck_crossbars: int = Field(0, ge=0, description="crossbars screened (0: rates from the "
                                 "disturbance flags)")
    seed: int = Field(0, ge=0, description="seed of every simulated chip and campaign")
    # -- the fit ------------------------------------------------------------------------------
    params: tuple[str, ...] = Field(DEFAULT_PARAMS, description="parameters to fit")
    max_evals: int = Field(30, ge=1, description="campaign replays at most")

    @field_validator("params")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if p not in BOUNDS]
        if bad:
            raise ValueError(f"cannot fit {bad[0]!r}; choose from {', '.join(BOUNDS)}")
        return v

    def latency(self) -> LatencyConfig:
        return LatencyConfig(round_trip=self.round_trip)


#: the published database (Drolet et al. 2023): measured on a 3IT-style station (the WGFMU
#: opened and closed around each operation, physics.md §6.1: 0.2-1 s per operation; 0.3 s
#: assumed here), settled read 60 s after a tuning (physics.md §4.2), samples cut at +-40 uS
PUBLISHED = Setup(round_trip=0.3, settle_s=60.0, cut=40e-6)


# -- replaying the campaigns -------------------------------------------------------------------

def _seed(setup: Setup, kind: int, i: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([setup.seed, kind, i])


def tuning_levels(target, setup: Setup) -> np.ndarray:
    """Levels the replayed tuning campaign uses: the target's measured ones, else the setup's."""
    if target is not None and np.all(target.tuning_counts > 0):
        lv = np.asarray(target.tuning_levels, float)
        return np.linspace(lv.min(), lv.max(), lv.size)
    return np.linspace(setup.g_low, setup.g_high, setup.levels)


def simulate_db(config: CrossbarConfig, setup: Setup, workdir: str | os.PathLike,
                levels: np.ndarray):
    """Run the campaigns on simulated crossbars of `config` and build their non-ideality DB."""
    from database.build import build_nonideality
    from protocols.campaigns import disturbance, stuck, tuning_untuning
    from protocols.tuning import TuneConfig
    from simulator.direct_rig import SimulatedRig

    work = Path(workdir)
    lat = setup.latency()
    files = []
    one = config.model_copy(update={"rows": 1, "cols": 1, "stuck_hrs_rate": 0.0,
                                    "stuck_lrs_rate": 0.0})
    levels = np.asarray(levels, float)
    tcfg = tuning_untuning.TuningUntuningConfig(
        levels=levels.size, g_low=float(levels[0]), g_high=float(levels[-1]),
        repeats=setup.tuning_repeats, settle_s=setup.settle_s, record_history=False,
        tune=TuneConfig(algorithm=setup.algorithm))
    for d in range(setup.tuning_devices):
        rig = SimulatedRig(Crossbar(one, seed=_seed(setup, 1, d)), latency=lat)
        f = work / f"tuning-{d}.h5"
        tuning_untuning.run(rig, tcfg, f, seed=d, progress=False, overwrite=True)
        files.append(f)
    # disturbance and stuck screening on crossbars of the model's own geometry (8 x 8 default)
    dcfg = disturbance.DisturbanceConfig(record_history=False,
                                         tune=TuneConfig(algorithm=setup.algorithm))
    for x in range(setup.disturbance_crossbars):
        rig = SimulatedRig(Crossbar(config, seed=_seed(setup, 2, x)), latency=lat)
        f = work / f"disturbance-{x}.h5"
        disturbance.run(rig, dcfg, f, seed=x, progress=False, overwrite=True)
        files.append(f)
    for s in range(setup.stuck_crossbars):
        rig = SimulatedRig(Crossbar(config, seed=_seed(setup, 3, s)), latency=lat)
        f = work / f"stuck-{s}.h5"
        stuck.run(rig, stuck.StuckConfig(), f, seed=s, progress=False, overwrite=True)
        files.append(f)
    return build_nonideality(files, disturbance_cut=setup.cut)


# -- comparing two databases ----------------------------------------------------------------------

def _bin(db, lo: int, hi: int) -> np.ndarray:
    k = db.disturbance_keys
    return db.disturbance_delta[(k >= lo) & (k <= hi)]


def target_sigma(target, levels: np.ndarray) -> np.ndarray:
    """The target's tuning sigma at `levels`: measured values, or its fitted line."""
    if np.all(target.tuning_counts > 0):
        return np.interp(levels, target.tuning_levels, target.tuning_sigma_rel)
    return target.sigma_rel(levels)


def residuals(sim, target, levels: np.ndarray) -> np.ndarray:
    """Each entry ~1 at the fidelity goal's tolerance; the fit minimises their sum of squares."""
    return np.concatenate(list(residual_groups(sim, target, levels).values()))


def residual_groups(sim, target, levels: np.ndarray) -> dict[str, np.ndarray]:
    """`residuals` by goal: 'disturbance', 'sigma', 'offset'."""
    out = []
    for lo, hi in K_BINS:
        t = _bin(target, lo, hi)
        if t.size < MIN_BIN:
            continue
        s = np.sort(_bin(sim, lo, hi))
        w = 1.0 if t.size >= FULL_WEIGHT else 0.5
        q = np.quantile(t, _PROBS)
        cdf = np.searchsorted(s, q, side="right") / max(s.size, 1) if s.size else np.ones_like(q)
        out.extend(w * (cdf - _PROBS) / TOL_KS / math.sqrt(_PROBS.size))
    sig_sim = np.interp(levels, sim.tuning_levels, sim.tuning_sigma_rel)
    sig_t = target_sigma(target, levels)
    off = [(sim.offset_mean_rel - target.offset_mean_rel) / TOL_OFFSET,
           (sim.offset_std_rel - target.offset_std_rel) / TOL_OFFSET]
    if np.all(target.tuning_counts > 0):
        off_sim = np.interp(levels, sim.tuning_levels, sim.tuning_offset_rel)
        off_t = np.interp(levels, target.tuning_levels, target.tuning_offset_rel)
        off.extend(0.5 * (off_sim - off_t) / TOL_OFFSET / math.sqrt(levels.size))
    return {"disturbance": np.asarray(out, float),
            "sigma": (sig_sim - sig_t) / TOL_SIGMA / math.sqrt(levels.size),
            "offset": np.asarray(off, float)}


def fidelity(sim, target, levels: np.ndarray) -> dict:
    """Simulated vs target, per goal (JSON-able, SI units and fractions)."""
    rows = []
    for lo, hi in K_BINS:
        s, t = _bin(sim, lo, hi), _bin(target, lo, hi)
        row = {"k": [lo, hi], "n_sim": int(s.size), "n_target": int(t.size)}
        for name, x in (("sim", s), ("target", t)):
            if x.size:
                p1, p25, p75 = np.percentile(x, [1, 25, 75])
                row[name] = {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1
                             else 0.0, "p1": float(p1), "p25": float(p25), "p75": float(p75)}
        row["ks"] = (float(stats.ks_2samp(s, t).statistic) if s.size and t.size else None)
        row["goal"] = bool(t.size < FULL_WEIGHT or (row["ks"] is not None
                                                    and row["ks"] <= TOL_KS))
        rows.append(row)
    sig_sim = np.interp(levels, sim.tuning_levels, sim.tuning_sigma_rel)
    sig_t = target_sigma(target, levels)
    off_sim = np.interp(levels, sim.tuning_levels, sim.tuning_offset_rel)
    return {
        "disturbance": rows,
        "tuning": {"levels_S": levels.tolist(), "sigma_sim": sig_sim.tolist(),
                   "sigma_target": sig_t.tolist(), "offset_sim": off_sim.tolist(),
                   "sigma_goal": bool(np.all(np.abs(sig_sim - sig_t) <= TOL_SIGMA)),
                   "offset_mean_sim": sim.offset_mean_rel,
                   "offset_mean_target": target.offset_mean_rel,
                   "offset_mean_goal": bool(abs(sim.offset_mean_rel - target.offset_mean_rel)
                                            <= TOL_OFFSET),
                   "offset_std_sim": sim.offset_std_rel, "offset_std_target":
                   target.offset_std_rel,
                   "offset_std_goal": bool(abs(sim.offset_std_rel - target.offset_std_rel)
                                           <= TOL_OFFSET),
                   "failure_rate_sim": sim.provenance.get("statistics", {}).get(
                       "tuning_failure_rate")},
        "stuck": {"hrs_sim": sim.stuck_hrs_rate, "hrs_target": target.stuck_hrs_rate,
                  "lrs_sim": sim.stuck_lrs_rate, "lrs_target": target.stuck_lrs_rate,
                  "goal": bool(abs(sim.stuck_hrs_rate - target.stuck_hrs_rate) <= TOL_STUCK
                               and abs(sim.stuck_lrs_rate - target.stuck_lrs_rate)
                               <= TOL_STUCK)},
    }


def format_fidelity(fid: dict) -> str:
    """The fidelity table as text (uS and %), one goal per block, 'yes'/'NO' per goal."""
    yn = {True: "yes", False: "NO"}
    lines = ["V/3 disturbance by k (uS): simulated | target; two-sample KS (goal <= 0.10 where "
             f"the target has >= {FULL_WEIGHT} samples)",
             "  k       n_sim  mean    sd     p1     p25    p75  |  n_tgt  mean    sd     p1  "
             "   p25    p75  |  KS    goal"]
    for r in fid["disturbance"]:
        lo, hi = r["k"]
        parts = [f"  {lo:2d}-{hi:<2d}  {r['n_sim']:6d}"]
        for name, n in (("sim", None), ("target", r["n_target"])):
            if n is not None:
                parts.append(f" | {n:6d}")
            v = r.get(name)
            parts.append("  " + (" ".join(f"{v[x] * 1e6:+6.1f}" if x != "sd" else
                                          f"{v[x] * 1e6:6.1f}"
                                          for x in ("mean", "sd", "p1", "p25", "p75"))
                                 if v else " " * 34))
        ks = "  -  " if r["ks"] is None else f"{r['ks']:.3f}"
        parts.append(f" | {ks}  {yn[r['goal']] if r['n_target'] >= FULL_WEIGHT else '(few)'}")
        lines.append("".join(parts))
    t = fid["tuning"]
    lines.append("Tuning sigma within device (% of G, goal: within 0.05 pp at every level)")
    lines.append("  level (uS)  " + " ".join(f"{x * 1e6:6.0f}" for x in t["levels_S"]))
    lines.append("  simulated   " + " ".join(f"{x * 100:6.3f}" for x in t["sigma_sim"]))
    lines.append("  target      " + " ".join(f"{x * 100:6.3f}" for x in t["sigma_target"]))
    lines.append("  difference  " + " ".join(f"{(a - b) * 100:+6.3f}" for a, b in
                                             zip(t["sigma_sim"], t["sigma_target"],
                                                 strict=True))
                 + f"   goal {yn[t['sigma_goal']]}")
    lines.append("  mean offset " + " ".join(f"{x * 100:+6.3f}" for x in t["offset_sim"])
                 + "   (simulated, per level)")
    lines.append(f"Tuning offset: mean {t['offset_mean_sim'] * 100:+.3f} % vs "
                 f"{t['offset_mean_target'] * 100:+.3f} % (goal 0.1 pp: "
                 f"{yn[t['offset_mean_goal']]}); per-device sd {t['offset_std_sim'] * 100:.3f} "
                 f"% vs {t['offset_std_target'] * 100:.3f} % (goal 0.1 pp: "
                 f"{yn[t['offset_std_goal']]})")
    if t.get("failure_rate_sim") is not None:
        lines.append(f"Tuning failures (simulated): {t['failure_rate_sim'] * 100:.2f} %")
    s = fid["stuck"]
    lines.append(f"Stuck: HRS {s['hrs_sim'] * 100:.2f} % vs {s['hrs_target'] * 100:.2f} %, "
                 f"LRS {s['lrs_sim'] * 100:.2f} % vs {s['lrs_target'] * 100:.2f} % "
                 f"(goal 0.2 pp: {yn[s['goal']]})")
    return "\n".join(lines)


# -- the fit ---------------------------------------------------------------------------------------

@dataclass
class CalibrationResult:
    config: CrossbarConfig
    params: dict[str, float]
    cost: float                       # sum of squared residuals at the result
    start_cost: float
    evals: int
    cpu_s: float
    wall_s: float
    fidelity: dict
    history: list[dict] = field(default_factory=list)


def with_params(config: CrossbarConfig, params: dict[str, float]) -> CrossbarConfig:
    dev = config.device.model_copy(update=params)
    return config.model_copy(update={"device": DeviceParams.model_validate(dev.model_dump())})


def from_target(config: CrossbarConfig, target) -> CrossbarConfig:
    """Stuck rates and value models taken from the target as they are."""
    lo, hi = target.stuck_hrs_range
    dev = config.device.model_dump() | {
        "stuck_hrs_min": float(lo), "stuck_hrs_max": float(max(hi, lo)),
        "stuck_lrs_mean": float(target.stuck_lrs_mean),
        "stuck_lrs_std": float(target.stuck_lrs_std)}
    return config.model_copy(update={"device": DeviceParams.model_validate(dev),
                                     "stuck_hrs_rate": float(target.stuck_hrs_rate),
                                     "stuck_lrs_rate": float(target.stuck_lrs_rate)})


def calibrate(target, setup: Setup, start: CrossbarConfig | None = None,
              progress: Callable[[str], None] | None = None) -> CalibrationResult:
    """Fit `setup.params` of `start` (default: the shipped defaults) so that the replayed
    campaigns' database matches `target` (a NonIdealityDB)."""
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    base = from_target(start or CrossbarConfig(), target)
    dev0 = base.device
    if dev0.rtn_count == 0 and "rtn_amplitude" in setup.params:
        # fitting the fluctuators of a model without any: give it the default population
        base = base.model_copy(update={"device": dev0.model_copy(
            update={"rtn_count": DeviceParams().rtn_count})})
    names = list(setup.params)
    bounds = [BOUNDS[n] for n in names]
    levels = tuning_levels(target, setup)
    say = progress or (lambda _m: None)
    history: list[dict] = []
    cache: dict[tuple, tuple[np.ndarray, object]] = {}

    def params_of(u: np.ndarray) -> dict[str, float]:
        return {n: b.from_unit(float(x)) for n, b, x in zip(names, bounds, u, strict=True)}

    def evaluate(u: np.ndarray) -> tuple[np.ndarray, object]:
        key = tuple(np.round(u, 12))
        if key in cache:
            return cache[key]
        p = params_of(u)
        with tempfile.TemporaryDirectory(prefix="xbarlab-cal-") as d:
            sim = simulate_db(with_params(base, p), setup, d, levels)
        groups = residual_groups(sim, target, levels)
        r = np.concatenate(list(groups.values()))
        cost = float(r @ r)
        parts = {g: float(v @ v) for g, v in groups.items()}
        history.append({"params": p, "cost": cost, "parts": parts})
        say(f"eval {len(history):3d}: cost {cost:7.2f} (" +
            ", ".join(f"{g} {c:.2f}" for g, c in parts.items()) + ")  " +
            " ".join(f"{n}={v:.4g}" for n, v in p.items()))
        cache[key] = (r, sim)
        return r, sim

    u = np.array([b.to_unit(float(getattr(dev0, n))) for n, b in zip(names, bounds,
                                                                         strict=True)])
    u = np.clip(u, 0.0, 1.0)
    r, sim = evaluate(u)
    start_cost = float(r @ r)
    best = (start_cost, u, sim)
    if names and setup.max_evals > 1 + len(names):
        u, r, best = _levenberg_marquardt(evaluate, u, r, best, setup.max_evals)
    cost, u_best, sim = best
    params = params_of(u_best)
    cfg = with_params(base, params)
    return CalibrationResult(cfg, params, cost, start_cost, len(history),
                             time.process_time() - t_cpu, time.perf_counter() - t_wall,
                             fidelity(sim, target, levels), history)


def _levenberg_marquardt(evaluate, u, r, best, max_evals: int):
    """Bounded LM in the unit cube: one forward-difference Jacobian (steps of 0.1, large
    against the evaluation noise), then Broyden rank-one updates from every evaluation."""
    n = u.size
    h = 0.1
    J = np.empty((r.size, n))
    evals = 1
    for j in range(n):
        du = np.zeros(n)
        du[j] = h if u[j] + h <= 1.0 else -h
        rj, sim = evaluate(u + du)
        evals += 1
        J[:, j] = (rj - r) / du[j]
        c = float(rj @ rj)
        if c < best[0]:
            best = (c, u + du, sim)
    lam = 1e-2
    while evals < max_evals:
        A = J.T @ J
        g = J.T @ r
        step = np.linalg.solve(A + lam * (np.diag(np.diag(A)) + 1e-9 * np.eye(n)), -g)
        u_new = np.clip(u + step, 0.0, 1.0)
        du = u_new - u
        if np.max(np.abs(du)) < 1e-3:
            if lam > 1e3:
                break
            lam *= 4.0
            continue
        r_new, sim = evaluate(u_new)
        evals += 1
        # Broyden: the secant through the new point replaces J's prediction along du
        J += np.outer((r_new - r) - J @ du, du) / float(du @ du)
        c_new, c_old = float(r_new @ r_new), float(r @ r)
        if c_new < best[0]:
            best = (c_new, u_new, sim)
        if c_new < c_old:
            u, r = u_new, r_new
            lam = max(lam / 3.0, 1e-4)
        else:
            lam *= 4.0
    return u, r, best


# -- chip-model files ------------------------------------------------------------------------------

def save_chip_model(path: str | os.PathLike, config: CrossbarConfig,
                    fit: dict | None = None) -> Path:
    """Write a chip model (the crossbar configuration, SI units) as YAML; `fit` describes how
    it was obtained (target, setup, fitted values, cost, time)."""
    path = Path(path)
    doc = {"format": MODEL_FORMAT, "crossbar": json.loads(config.model_dump_json())}
    if fit is not None:
        doc["fit"] = json.loads(json.dumps(fit, default=float))
    head = ("# xbarlab chip model: the simulated crossbar's parameters (SI units: S, V, s, ohm).\n"
            "# Use it with `xbarlab sim show --model FILE` or a station's `sim: {model: FILE}`.\n")
    path.write_text(head + yaml.safe_dump(doc, sort_keys=False))
    return path


def load_chip_model(path: str | os.PathLike) -> CrossbarConfig:
    """The crossbar configuration in a chip-model file; SimulatorError with one line if the file
    is missing, not a chip model, or has a bad field."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SimulatorError(f"chip model not found: {path}") from None
    except yaml.YAMLError as e:
        raise SimulatorError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise SimulatorError(f"{path}: not a chip model (format {got!r}, expected "
                             f"{MODEL_FORMAT!r})")
    try:
        return CrossbarConfig.model_validate(doc.get("crossbar") or {})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise SimulatorError(f"{path}: crossbar.{loc}: {err['msg']}") from None
