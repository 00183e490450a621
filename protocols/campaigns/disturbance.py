"""V/3 disturbance campaign: how programming later devices moves earlier ones.

Every device of the crossbar (or the configured list) is tuned, in raster order (top to bottom,
left to right), to a random target drawn uniformly in the weight range. After each device the
whole array is read (`rig.read_array`), and every previously tuned device i contributes one
sample: its change since the read right after its own tuning, against
k = (devices programmed after i so far). A device whose own tuning failed or that looks stuck
(physics.md §2.4) is flagged and its samples are marked `excluded`; so are reads that hit the
current-range ceiling. Nothing is dropped: the builder applies the exclusion.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from database.display import Metric
from protocols.campaigns._loop import UnitResult, raster, run_units, unit_rng
from protocols.campaigns.common import (
    CLASS_CODES,
    HISTORY_COLUMNS,
    WORKING,
    CampaignConfig,
    CampaignResult,
    classify_failed_tuning,
    history_rows,
    log,
    open_store,
)
from protocols.rig import CrossbarRig
from protocols.tuning import tune

PROTOCOL = "disturbance"

DEVICES_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "target": ("f8", "S"),
    "converged": ("?", "1"), "pulses": ("i4", "1"), "status": ("i1", CLASS_CODES),
    "g_final": ("f8", "S"), "g_ref": ("f8", "S"), "t_end": ("f8", "s"),
}
SAMPLES_COLUMNS = {
    "after": ("i4", "1"), "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"),
    "k": ("i4", "1"), "g": ("f8", "S"), "delta": ("f8", "S"), "excluded": ("?", "1"),
}


class DisturbanceConfig(CampaignConfig):
    g_low: float = Field(100e-6, gt=0, description="lowest random target [S]")
    g_high: float = Field(400e-6, gt=0, description="highest random target [S]")
    hrs_threshold: float = Field(100e-6, gt=0, description="stuck-HRS below this after failing [S]")
    record_history: bool = Field(True, description="store every pulse and read of the tunings")

    @model_validator(mode="after")
    def _range(self):
        if self.g_high < self.g_low:
            raise ValueError("g_high must not be below g_low")
        return self

    def targets(self) -> list[tuple[float, float]]:
        return [(self.g_low, self.tune.tolerance), (self.g_high, self.tune.tolerance)]


def run(rig: CrossbarRig, config: DisturbanceConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    cfg = config
    units = raster(rig.shape, cfg.devices)
    tbl = {"devices": DEVICES_COLUMNS, "samples": SAMPLES_COLUMNS}
    if cfg.record_history:
        tbl["history"] = HISTORY_COLUMNS
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables=tbl, units_total=len(units), resume=resume, overwrite=overwrite,
                        rig=rig)
    resumed = writer.units_done
    ceiling = rig.read_settings.ceiling_S
    # what earlier devices left behind: their reference read and flag (rebuilt on resume)
    done = writer.table("devices") if resumed else None
    g_ref: list[float] = [] if done is None else list(done.g_ref)
    flagged: list[bool] = [] if done is None else list(done.status != WORKING)

    def work(i: int, rc: tuple[int, int]) -> UnitResult:
        r, c = rc
        target = float(unit_rng(seed, i).uniform(cfg.g_low, cfg.g_high))
        res = tune(rig, r, c, target, cfg.tune)
        status = classify_failed_tuning(res, cfg.hrs_threshold, cfg.g_high * (1 + cfg.tune.tolerance))
        gmap = rig.read_array()
        g_ref.append(float(gmap[r, c]))
        flagged.append(status != WORKING)
        # samples of every earlier device: k = devices programmed after it so far
        prev = list(range(i))
        rows_p = np.array([units[j][0] for j in prev], dtype=int)
        cols_p = np.array([units[j][1] for j in prev], dtype=int)
        g_now = gmap[rows_p, cols_p] if prev else np.zeros(0)
        ref = np.asarray(g_ref[:i])
        excl = (np.asarray(flagged[:i], bool) | (g_now >= ceiling) | (ref >= ceiling))
        samples = {"after": np.full(i, i), "device": np.asarray(prev, int), "row": rows_p,
                   "col": cols_p, "k": i - np.asarray(prev, int), "g": g_now,
                   "delta": g_now - ref, "excluded": excl}
        dev = {"device": [i], "row": [r], "col": [c], "target": [target],
               "converged": [res.converged], "pulses": [res.pulses], "status": [status],
               "g_final": [res.g_final], "g_ref": [g_ref[-1]], "t_end": [float(rig.clock)]}
        out = {"devices": dev, "samples": samples}
        if cfg.record_history:
            out["history"] = history_rows(res, i, i, 1)
        return UnitResult(out, res.pulses)

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress)
    summary = summarize(writer.table("devices"), writer.table("samples"))
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    return CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete)


def final_samples(samples):
    """One sample per device: its change at the end of the run (the largest k it reached)."""
    if len(samples) == 0:
        return samples
    last = samples["after"].max()
    return samples[samples["after"] == last]


#: what each number of the summary is (stored in S; shown in uS)
SUMMARY = {
    "devices": Metric("devices programmed"),
    "flagged": Metric("devices flagged (stuck or failed tuning)"),
    "pulses_median": Metric("pulses per device, median"),
    "samples": Metric("disturbance samples (flagged devices left out)"),
    "delta_mean_S": Metric("mean change of earlier devices", "S", nd=2, signed=True),
    "delta_p1_S": Metric("1st percentile of the change", "S", nd=2, signed=True),
    "delta_min_S": Metric("largest decrease", "S", nd=2, signed=True),
    "delta_max_S": Metric("largest increase", "S", nd=2, signed=True),
}


def summarize(devices, samples) -> dict:
    s = samples[~samples.excluded]
    out = {"devices": int(len(devices)), "flagged": int((devices.status != WORKING).sum()),
           "pulses_median": float(np.median(devices.pulses)) if len(devices) else float("nan"),
           "samples": int(len(s))}
    if len(s):
        out.update(delta_mean_S=float(s.delta.mean()), delta_p1_S=float(np.percentile(s.delta, 1)),
                   delta_min_S=float(s.delta.min()), delta_max_S=float(s.delta.max()))
    return out
