"""Stuck-device screening (physics.md §2.4).

Each device: read it (reads at the current-range ceiling are clipped and flagged), try to tune it
up to the top level with a loose band, then down to the bottom level. A device that stays below
`hrs_threshold` after the SET ramp and K pulses at its cap is stuck-HRS; one that stays above
the top level after the RESET ramp and K pulses at its cap is stuck-LRS; otherwise it works.
Screening leaves working devices near the bottom level.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from database.display import Metric
from protocols.campaigns._loop import UnitResult, raster, run_units
from protocols.campaigns.common import (
    CLASS_CODES,
    CLASS_NAMES,
    STUCK_HRS,
    STUCK_LRS,
    WORKING,
    CampaignConfig,
    CampaignResult,
    log,
    open_store,
)
from protocols.rig import CrossbarRig
from protocols.tuning import TuneConfig, tune

PROTOCOL = "stuck"

DEVICES_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"),
    "g_initial": ("f8", "S"), "initial_clipped": ("?", "1"),
    "g_after_set": ("f8", "S"), "set_pulses": ("i4", "1"),
    "g_after_reset": ("f8", "S"), "reset_pulses": ("i4", "1"), "final_clipped": ("?", "1"),
    "status": ("i1", CLASS_CODES),
}


def _screen_tune() -> TuneConfig:
    # the screen's criterion is K pulses at a cap (give_up_at_cap), not the still rule
    return TuneConfig(tolerance=0.05, n_inband=1, give_up_at_cap=20, give_up_still=None,
                      max_pulses=200)


class StuckConfig(CampaignConfig):
    top_level: float = Field(400e-6, gt=0, description="SET test target / stuck-LRS bound [S]")
    bottom_level: float = Field(100e-6, gt=0, description="RESET test target [S]")
    hrs_threshold: float = Field(100e-6, gt=0, description="stuck-HRS bound [S]")
    tune: TuneConfig = Field(default_factory=_screen_tune,
                             description="loose write-verify used for the SET/RESET tests; "
                                         "give_up_at_cap is K")

    def targets(self) -> list[tuple[float, float]]:
        return [(self.top_level, self.tune.tolerance), (self.bottom_level, self.tune.tolerance)]


def run(rig: CrossbarRig, config: StuckConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    cfg = config
    units = raster(rig.shape, cfg.devices)
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables={"devices": DEVICES_COLUMNS}, units_total=len(units),
                        resume=resume, overwrite=overwrite, rig=rig)
    resumed = writer.units_done
    ceiling = rig.read_settings.ceiling_S

    def work(i: int, rc: tuple[int, int]) -> UnitResult:
        r, c = rc
        g0 = float(rig.read(r, c))
        up = tune(rig, r, c, cfg.top_level, cfg.tune)
        g_up = float(np.max(up.history["g"]))  # the highest it got: did SET ever move it?
        down = tune(rig, r, c, cfg.bottom_level, cfg.tune)
        g_end = float(down.final_reads[-1])
        if g_up < cfg.hrs_threshold:
            status = STUCK_HRS
        elif g_end > cfg.top_level:
            status = STUCK_LRS
        else:
            status = WORKING
        row = {"device": [i], "row": [r], "col": [c], "g_initial": [g0],
               "initial_clipped": [g0 >= ceiling], "g_after_set": [g_up],
               "set_pulses": [up.pulses], "g_after_reset": [g_end],
               "reset_pulses": [down.pulses], "final_clipped": [g_end >= ceiling],
               "status": [status]}
        return UnitResult({"devices": row}, up.pulses + down.pulses)

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress)
    summary = summarize(writer.table("devices"))
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    return CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete)


#: what each number of the summary is (the yield is stored as a fraction, shown in %)
SUMMARY = {
    "devices": Metric("devices screened"),
    "working": Metric("working devices"),
    "stuck-HRS": Metric("stuck-HRS devices"),
    "stuck-LRS": Metric("stuck-LRS devices"),
    "yield": Metric("yield (working devices)", "fraction"),
    "clipped_reads": Metric("reads at the range ceiling (clipped)"),
}


def summarize(df) -> dict:
    n = len(df)
    out = {"devices": n}
    for code, name in CLASS_NAMES.items():
        if code in (WORKING, STUCK_HRS, STUCK_LRS):
            out[name] = int((df.status == code).sum())
    out["yield"] = out["working"] / n if n else float("nan")
    out["clipped_reads"] = int(df.initial_clipped.sum() + df.final_clipped.sum())
    return out
