"""Build the non-ideality database from raw campaign runs.

- Tuning imprecision (tuning-untuning runs): per level, the relative error of converged tunings,
  err = (g_settled - target) / target; offset = its mean; sigma = its std within devices (each
  device's mean error over all its tunings removed first), and a least-squares line
  sigma_rel(G) over the levels. The per-device offset distribution N(mean, std) is the mean and
  std over devices of each device's mean error. Training draws the offset per device and sigma
  per tuning, the paper's model. Failed tunings are counted, not used.
- Disturbance (disturbance runs): every sample not marked `excluded` by the campaign (devices
  whose own tuning failed or that look stuck, reads at the range ceiling), keyed by k. Outlier
  rule: optionally drop |delta| > `disturbance_cut` [S] (the published database applied a
  +-40 uS cut); the rule actually applied is written into the database text.
- Stuck devices (stuck runs): rates = class counts / devices screened; samples = initial reads of
  stuck devices that did not hit the range ceiling; the parametric models (HRS uniform range,
  LRS normal) are fitted when there are at least 3 samples, else the published values are kept.
- I-V thresholds (DC `iv` runs, optional): the SET and RESET voltage of every cycle that
  switched (the campaign's own extraction, protocols/campaigns/iv.py), with the devices that never
  switched counted in the provenance.
- Shapiro-Wilk normality (scipy) of the tuning error per level and of the per-device offsets,
  where the paper models them as normal; results go into provenance["statistics"].
- Retention (retention runs, optional): the drift (read - g_final) / g_final of every device
  whose programming converged, at every scheduled read. A device reading more than its run's
  `up_threshold` above its programmed value is drifting up. Cells (scheduled read time, level),
  merged over runs with the same schedule: median age, count, the share drifting up, mean and
  std of the drift of the others and of the ones drifting up. Reads at the current-range
  ceiling enter with their clipped value (a lower bound of their drift).

Provenance: every part names the files and runs (with their seeds) it came from.

Every column used is checked before it is used (SchemaError naming file, run, table, column and
row): targets finite and positive, conductances finite where they are used, classes known,
device indices inside the run, and the disturbance key consistent with its run
(k = after - device, 0 <= device < after < devices done). A damaged file therefore cannot steer
the result or the memory it takes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from database.display import duration
from database.errors import DatabaseError, SchemaError
from database.nonideality import MAX_DRIFT_REL, NonIdealityDB, RetentionStats
from database.runs import RunInfo, list_runs, read_table

_DEFAULT_HRS = (10e-6, 100e-6)
_DEFAULT_LRS = (573e-6, 99e-6)


def _shapiro(x: np.ndarray) -> dict:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size < 3 or np.ptp(x) == 0:
        return {"n": int(x.size), "W": None, "p": None}
    w, p = stats.shapiro(x[:5000])
    return {"n": int(x.size), "W": float(w), "p": float(p)}


def _collect(run_files) -> dict[str, list[tuple[Path, RunInfo]]]:
    found: dict[str, list] = {}
    for f in run_files:
        f = Path(f)
        for info in list_runs(f):
            if info.units_done == 0:
                continue
            found.setdefault(info.protocol, []).append((f, info))
    return found


def _src(items) -> list[str]:
    return [f"{p.name}:{info.name} (seed {info.seed})" for p, info in items]


def _require(df: pd.DataFrame, where: str, col: str, ok, what: str) -> None:
    ok = np.asarray(ok, bool)
    if not ok.all():
        i = int(np.argmin(ok))
        raise SchemaError(f"{where}/{col}: {what} (row {i}: {df[col].iloc[i]!r})")


def _table(item: tuple[Path, RunInfo], table: str) -> pd.DataFrame:
    """A table of a run, its columns checked (see the module docstring)."""
    path, info = item
    df = read_table(path, table, info.name)
    where = f"{path}: {info.name}/{table}"
    n = info.units_done
    if (info.protocol, table) == ("tuning-untuning", "tunings"):
        _require(df, where, "target", np.isfinite(df.target) & (df.target > 0),
                 "target must be finite and > 0")
        for col in ("g_settled", "g_final"):
            _require(df, where, col, np.isfinite(df[col]) | ~df.converged,
                     "converged tuning without a finite conductance")
        _require(df, where, "device", (df.device >= 0) & (df.device < info.units_total),
                 f"device outside the run's {info.units_total} devices")
    elif (info.protocol, table) == ("disturbance", "devices"):
        _require(df, where, "device", df.device.to_numpy() == np.arange(len(df)),
                 "devices not in programming order")
        _require(df, where, "status", df.status.isin([0, 1, 2, 3]), "unknown class")
    elif (info.protocol, table) == ("disturbance", "samples"):
        _require(df, where, "after", (df["after"] >= 1) & (df["after"] < n),
                 f"programming step outside 1..{n - 1}")
        _require(df, where, "device", (df.device >= 0) & (df.device < df["after"]),
                 "sample of a device not programmed before")
        _require(df, where, "k", df.k == df["after"] - df.device,
                 "key is not the devices programmed after the device")
        for col in ("g", "delta"):
            _require(df, where, col, np.isfinite(df[col]) | df.excluded, "not a finite number")
    elif (info.protocol, table) == ("iv", "cycles"):
        _require(df, where, "v_set", ~df.set_switched | (np.isfinite(df.v_set) & (df.v_set > 0)),
                 "not a positive voltage")
        _require(df, where, "v_reset", ~df.reset_switched
                 | (np.isfinite(df.v_reset) & (df.v_reset < 0)), "not a negative voltage")
    elif (info.protocol, table) == ("retention", "programming"):
        _require(df, where, "device", df.device.to_numpy() == np.arange(len(df)),
                 "devices not in programming order")
        _require(df, where, "target", np.isfinite(df.target) & (df.target > 0),
                 "target must be finite and > 0")
        _require(df, where, "g_final", (np.isfinite(df.g_final) & (df.g_final > 0))
                 | ~df.converged, "converged programming without a positive conductance")
    elif (info.protocol, table) == ("retention", "reads"):
        _require(df, where, "read", df["read"] >= 0, "negative read index")
        _require(df, where, "device", df.device >= 0, "negative device index")
        for col in ("t_scheduled", "age"):
            _require(df, where, col, np.isfinite(df[col]) & (df[col] >= 0),
                     "not a time >= 0 s")
        _require(df, where, "target", np.isfinite(df.target) & (df.target > 0),
                 "target must be finite and > 0")
        _require(df, where, "g", np.isfinite(df.g), "not a finite number")
    elif (info.protocol, table) == ("stuck", "devices"):
        _require(df, where, "status", df.status.isin([0, 1, 2]), "unknown class")
        _require(df, where, "g_initial", (np.isfinite(df.g_initial) & (df.g_initial >= 0))
                 | (df.status == 0) | df.initial_clipped, "not a conductance")
    return df


def build_nonideality(run_files: list[str | os.PathLike], *, g_min: float | None = None,
                      g_max: float | None = None, disturbance_cut: float | None = None,
                      use_settled: bool = True) -> NonIdealityDB:
    """A NonIdealityDB from raw-run files (tuning-untuning and disturbance runs required)."""
    found = _collect(run_files)
    if "tuning-untuning" not in found:
        raise DatabaseError("no tuning-untuning run among the inputs: cannot build the tuning model")
    if "disturbance" not in found:
        raise DatabaseError("no disturbance run among the inputs: cannot build the disturbance model")
    provenance: dict = {"statistics": {}}

    # -- tuning ----------------------------------------------------------------------------
    parts = []
    for item in found["tuning-untuning"]:
        df = _table(item, "tunings")
        df["source"] = f"{item[0].name}:{item[1].name}"
        parts.append(df)
    tun = pd.concat(parts, ignore_index=True)
    ok = tun[tun.converged]
    if len(ok) == 0:
        raise DatabaseError("tuning runs hold no converged tuning")
    col = "g_settled" if use_settled else "g_final"
    err = (ok[col] - ok.target) / ok.target
    device = [ok.source, ok.device]
    dev_mean = err.groupby(device).mean()
    # sigma is the spread within a device (each device's own mean offset removed): a transfer
    # draws the offset per device and sigma per tuning, so a pooled sigma would count the
    # offset spread twice
    within = err - err.groupby(device).transform("mean")
    by_level = err.groupby(ok.target)
    levels = np.array(sorted(by_level.groups), float)
    for lv in levels:
        if (n := by_level.get_group(lv).size) < 2:
            raise DatabaseError(
                f"level {lv * 1e6:.0f} uS has {n} converged tuning: the tuning spread needs at "
                "least 2 per level (more repeats or devices in the tuning-untuning run)")
    sigma = np.array([within[by_level.groups[lv]].std(ddof=1) for lv in levels])
    offset = np.array([by_level.get_group(lv).mean() for lv in levels])
    counts = np.array([by_level.get_group(lv).size for lv in levels], float)
    if levels.size >= 2:
        slope, intercept = np.polyfit(levels, sigma, 1)
    else:
        slope, intercept = 0.0, float(sigma[0])
    provenance["tuning"] = (f"{len(ok)} converged of {len(tun)} tunings ({col}) from "
                            + ", ".join(_src(found['tuning-untuning'])))
    provenance["statistics"]["tuning_failure_rate"] = float((~tun.converged).mean())
    provenance["statistics"]["shapiro_tuning_error_per_level"] = {
        f"{lv:.6e}": _shapiro(by_level.get_group(lv).to_numpy()) for lv in levels}
    provenance["statistics"]["shapiro_device_offsets"] = _shapiro(dev_mean.to_numpy())

    # -- disturbance -----------------------------------------------------------------------
    keys, deltas, n_excl = [], [], 0
    for item in found["disturbance"]:
        s = _table(item, "samples")
        n_excl += int(s.excluded.sum())
        s = s[~s.excluded]
        keys.append(s.k.to_numpy())
        deltas.append(s.delta.to_numpy())
    keys_a = np.concatenate(keys).astype(np.int64)
    delta_a = np.concatenate(deltas)
    rule = ("samples of devices flagged by the campaign (own tuning failed or stuck) and reads "
            f"at the current-range ceiling excluded ({n_excl} samples)")
    if disturbance_cut is not None:
        keep = np.abs(delta_a) <= disturbance_cut
        rule += f"; |delta| > {disturbance_cut:.3e} S dropped ({int((~keep).sum())} samples)"
        keys_a, delta_a = keys_a[keep], delta_a[keep]
    else:
        rule += "; no magnitude cut"
    if delta_a.size == 0:
        raise DatabaseError("disturbance runs hold no usable sample")
    kmax = int(keys_a.max())
    mu = np.full(kmax + 1, np.nan)
    sd = np.full(kmax + 1, np.nan)
    for k in range(kmax + 1):
        d = delta_a[keys_a == k]
        if d.size:
            mu[k] = d.mean()
            sd[k] = d.std(ddof=1) if d.size > 1 else 0.0
    provenance["disturbance"] = (f"{delta_a.size} samples, keys 1..{kmax}, from "
                                 + ", ".join(_src(found["disturbance"])))

    # -- stuck -----------------------------------------------------------------------------
    hrs_rate = lrs_rate = None
    hrs_s = lrs_s = np.zeros(0)
    hrs_range, lrs_mean, lrs_std = _DEFAULT_HRS, *_DEFAULT_LRS
    if "stuck" in found:
        st = pd.concat([_table(item, "devices") for item in found["stuck"]], ignore_index=True)
        n = len(st)
        hrs_rate = float((st.status == 1).sum() / n)
        lrs_rate = float((st.status == 2).sum() / n)
        hrs_s = st.g_initial[(st.status == 1) & ~st.initial_clipped].to_numpy()
        lrs_s = st.g_initial[(st.status == 2) & ~st.initial_clipped].to_numpy()
        notes = []
        if hrs_s.size >= 3:
            hrs_range = (float(hrs_s.min()), float(hrs_s.max()))
        else:
            notes.append("HRS range: published U(10, 100) uS (fewer than 3 samples)")
        if lrs_s.size >= 3:
            lrs_mean, lrs_std = float(lrs_s.mean()), float(lrs_s.std(ddof=1))
        else:
            notes.append("LRS model: published N(573, 99) uS (fewer than 3 unclipped samples)")
        n_clip = int(((st.status == 2) & st.initial_clipped).sum())
        provenance["stuck"] = (f"{n} devices screened ({int((st.status == 1).sum())} HRS, "
                               f"{int((st.status == 2).sum())} LRS, {n_clip} LRS reads clipped "
                               "at the range ceiling and left out of the samples) from "
                               + ", ".join(_src(found["stuck"])) + ("; " + "; ".join(notes)
                                                                   if notes else ""))
    else:
        # fall back on the disturbance runs' flags for the rates, published models for values
        dv = pd.concat([_table(item, "devices") for item in found["disturbance"]],
                       ignore_index=True)
        hrs_rate = float((dv.status == 1).mean())
        lrs_rate = float((dv.status == 2).mean())
        provenance["stuck"] = ("no stuck-screening run: rates from the disturbance runs' flags "
                               f"({len(dv)} devices); value models are the published ones")

    # -- I-V thresholds (optional) -----------------------------------------------------------
    v_set = v_reset = np.zeros(0)
    # (files of the pulsed staircase once called `iv` have no cycles table: not used)
    dc_iv = [item for item in found.get("iv", []) if "cycles" in item[1].rows]
    if dc_iv:
        c = pd.concat([_table(item, "cycles") for item in dc_iv], ignore_index=True)
        v_set = c.v_set[c.set_switched].to_numpy(float)
        v_reset = c.v_reset[c.reset_switched].to_numpy(float)
        dev = pd.concat([_table(item, "devices") for item in dc_iv], ignore_index=True)
        provenance["iv"] = (f"{v_set.size} SET and {v_reset.size} RESET voltages of {len(c)} "
                            f"DC I-V cycles on {len(dev)} devices "
                            f"({int(dev.never_switched.sum())} never switched) from "
                            + ", ".join(_src(dc_iv)))

    retention = None
    if "retention" in found:
        retention, provenance["retention"] = _retention(found["retention"])

    g_lo = float(levels.min()) if g_min is None else g_min
    g_hi = float(levels.max()) if g_max is None else g_max
    if not g_lo < g_hi:
        raise DatabaseError("need at least two tuning levels (or explicit g_min < g_max)")
    provenance["runs"] = sorted({str(p) for v in found.values() for p, _info in v})
    db = NonIdealityDB(
        g_min=g_lo, g_max=g_hi, tuning_levels=levels, tuning_sigma_rel=sigma,
        tuning_offset_rel=offset, tuning_counts=counts, sigma_fit_slope=float(slope),
        sigma_fit_intercept=float(intercept), offset_mean_rel=float(dev_mean.mean()),
        offset_std_rel=float(dev_mean.std(ddof=1)) if dev_mean.size > 1 else 0.0,
        disturbance_keys=keys_a, disturbance_delta=delta_a, stuck_hrs_rate=hrs_rate,
        stuck_lrs_rate=lrs_rate, stuck_hrs_samples=hrs_s, stuck_lrs_samples=lrs_s,
        stuck_hrs_range=hrs_range, stuck_lrs_mean=lrs_mean, stuck_lrs_std=lrs_std,
        disturbance_rule=rule, disturbance_key_mu=mu, disturbance_key_sigma=sd,
        iv_set_volts=v_set, iv_reset_volts=v_reset, provenance=provenance, retention=retention)
    db.validate()
    return db


def _retention(items) -> tuple[RetentionStats | None, str]:
    """Retention statistics from retention runs (see the module docstring), and provenance."""
    parts, n_failed, n_dev = [], 0, 0
    for item in items:
        path, info = item
        prog, reads = _table(item, "programming"), _table(item, "reads")
        where = f"{path}: {info.name}/reads"
        _require(reads, where, "device", reads.device < len(prog),
                 f"device outside the run's {len(prog)} programmed devices")
        threshold = info.config.get("up_threshold", 0.05)
        if not (isinstance(threshold, int | float) and 0 < threshold <= MAX_DRIFT_REL):
            raise SchemaError(f"{path}: {info.name}: config up_threshold {threshold!r} is not "
                              "a fraction > 0")
        ok = prog.converged.to_numpy()
        n_failed += int((~ok).sum())
        n_dev += int(ok.sum())
        r = reads[ok[reads.device.to_numpy()]]
        g_prog = prog.g_final.to_numpy()[r.device.to_numpy()]
        drift = (r.g.to_numpy() - g_prog) / g_prog
        parts.append(pd.DataFrame({"sched": r.t_scheduled.to_numpy(),
                                   "level": r.target.to_numpy(), "age": r.age.to_numpy(),
                                   "drift": drift, "up": drift > threshold}))
    df = pd.concat(parts, ignore_index=True)
    if not len(df):
        return None, ("retention runs hold no read of a converged programming: no retention "
                      "statistics")
    cells = []
    for (_sched, level), c in df.groupby(["sched", "level"], sort=True):
        rest, up = c.drift[~c.up].to_numpy(), c.drift[c.up].to_numpy()
        cells.append((float(np.median(c.age)), float(level), _mean(rest), _std(rest),
                      float(len(c)), float(len(up) / len(c)), _mean(up), _std(up)))
    arr = np.array(cells, float)
    order = np.lexsort((arr[:, 0], arr[:, 1]))   # by level, then time
    rule = ("drift = (read - g_final) / g_final of converged programmings "
            f"({n_failed} unconverged left out); drifting up = more than the run's "
            "up_threshold above; reads at the range ceiling enter with their clipped value (a "
            "lower bound); cells by scheduled read and level, time = median age since "
            "programming")
    stats = RetentionStats(*arr[order].T, rule=rule)
    text = (f"{len(df)} reads of {n_dev} devices at {len(set(stats.level))} levels, "
            f"{stats.time.size} cells, ages {duration(stats.time.min())} to "
            f"{duration(stats.time.max())}, from " + ", ".join(_src(items)))
    return stats, text


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def _std(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else (0.0 if x.size else float("nan"))
