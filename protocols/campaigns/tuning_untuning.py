"""Tuning/untuning campaign: the data behind the tuning-imprecision model (paper Fig. 2).

Per device, for each of N equidistant levels (default 8 across 100..400 uS) and R repetitions
(default 40): untune (RESET to the off state, a loose write-verify to max(off_floor,
off_fraction * level)), tune to the level with the configured algorithm, optionally let
`settle_s` of instrument time pass, and read once more. Stored per tuning: the in-band
confirmation reads' mean (g_final) and the settled read (g_settled); every pulse and read goes
to the `history` table.

The unit of work is one tuning (device, level, repeat): a paper-sized device is 8 levels x 40
repeats, hours on a real station, so each tuning is committed on its own and a crash loses at
most the tuning in progress; a resume starts at the first unfinished tuning. The fast algorithm
(the default) starts each ramp near the amplitudes that last moved the device (`warm`); they go
from one tuning of a device to its next and are stored with each tuning (warm_set, warm_reset),
so a resumed run carries on with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from database.display import Metric
from protocols.campaigns._loop import UnitResult, raster, run_units
from protocols.campaigns.common import (
    HISTORY_COLUMNS,
    CampaignConfig,
    CampaignResult,
    concat,
    history_rows,
    log,
    open_store,
)
from protocols.rig import CrossbarRig
from protocols.tuning import tune

PROTOCOL = "tuning-untuning"

TUNINGS_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"),
    "level": ("i4", "1"), "repeat": ("i4", "1"), "target": ("f8", "S"),
    "g_off": ("f8", "S"), "untune_pulses": ("i4", "1"), "converged": ("?", "1"),
    "gave_up": ("?", "1"), "pulses": ("i4", "1"), "set_pulses": ("i4", "1"),
    "reset_pulses": ("i4", "1"), "g_initial": ("f8", "S"), "g_final": ("f8", "S"),
    "g_settled": ("f8", "S"), "t_start": ("f8", "s"), "t_end": ("f8", "s"),
    "warm_set": ("f8", "V"), "warm_reset": ("f8", "V"),
}


class TuningUntuningConfig(CampaignConfig):
    levels: int = Field(8, ge=1, le=256, description="number of equidistant target levels")
    g_low: float = Field(100e-6, gt=0, description="lowest level [S]")
    g_high: float = Field(400e-6, gt=0, description="highest level [S]")
    repeats: int = Field(40, ge=1, description="tunings per level")
    off_fraction: float = Field(0.6, gt=0, lt=1, description="untune target as a fraction of the level")
    off_floor: float = Field(80e-6, gt=0, description="untune target floor [S]")
    off_tolerance: float = Field(0.05, gt=0, lt=1, description="untune band (loose) [fraction]")
    settle_s: float = Field(0.0, ge=0, le=3600, description="instrument time between tuning "
                            "and settled read [s] (at most an hour: longer is a retention study, "
                            "and every tuning waits it)")
    record_history: bool = Field(True, description="store every pulse and read")

    @model_validator(mode="after")
    def _range(self):
        if self.g_high < self.g_low:
            raise ValueError("g_high must not be below g_low")
        return self

    def level_values(self) -> np.ndarray:
        return np.linspace(self.g_low, self.g_high, self.levels)

    def targets(self) -> list[tuple[float, float]]:
        out = []
        for level in self.level_values():
            off = max(self.off_floor, self.off_fraction * level)
            out += [(float(level), self.tune.tolerance), (float(off), self.off_tolerance)]
        return out


@dataclass(frozen=True)
class Tuning:
    """One unit of work: tune `device` (its index in the device list) at (row, col) to level
    index `level`, repetition `repeat`."""

    device: int
    row: int
    col: int
    level: int
    repeat: int


def tunings(devices: list[tuple[int, int]], cfg: TuningUntuningConfig) -> list[Tuning]:
    """Every tuning in campaign order: device by device, level by level, repeat by repeat (unit
    index = device * levels * repeats + level * repeats + repeat, the history's `tuning`)."""
    return [Tuning(i, r, c, li, rep) for i, (r, c) in enumerate(devices)
            for li in range(cfg.levels) for rep in range(cfg.repeats)]


def tables(cfg: TuningUntuningConfig) -> dict:
    t = {"tunings": TUNINGS_COLUMNS}
    if cfg.record_history:
        t["history"] = HISTORY_COLUMNS
    return t


def run(rig: CrossbarRig, config: TuningUntuningConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    """Run (or continue) the campaign on `rig`, writing to the HDF5 file `store`."""
    cfg = config
    units = tunings(raster(rig.shape, cfg.devices), cfg)
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables=tables(cfg), units_total=len(units), resume=resume,
                        overwrite=overwrite, rig=rig)
    resumed = writer.units_done
    levels = cfg.level_values()
    off_cfg = cfg.tune.model_copy(update={"tolerance": cfg.off_tolerance, "n_inband": 1})

    # the fast variant starts each ramp near what last moved the device (TuneResult.warm): carried
    # from one tuning of a device to its next, and stored with every tuning, so a resumed run
    # carries on with the value the interrupted one had
    done = writer.table("tunings")
    warm: dict[int, tuple[float, float]] = {} if done.empty else {
        int(done.device.iloc[-1]): (float(done.warm_set.iloc[-1]),
                                    float(done.warm_reset.iloc[-1]))}

    def work(tix: int, u: Tuning) -> UnitResult:
        r, c, i, li = u.row, u.col, u.device, u.level
        level = float(levels[li])
        off = max(cfg.off_floor, cfg.off_fraction * level)
        un = tune(rig, r, c, off, off_cfg, warm=warm.get(i))
        res = tune(rig, r, c, level, cfg.tune, warm=un.warm)
        warm[i] = res.warm
        rig.wait(cfg.settle_s)
        g_set = float(rig.read(r, c))
        row = dict(device=i, row=r, col=c, level=li, repeat=u.repeat, target=level,
                   g_off=un.g_final, untune_pulses=un.pulses, converged=res.converged,
                   gave_up=res.gave_up, pulses=res.pulses, set_pulses=res.set_pulses,
                   reset_pulses=res.reset_pulses, g_initial=res.g_initial,
                   g_final=res.g_final, g_settled=g_set, t_start=un.t_start,
                   t_end=float(rig.clock), warm_set=res.warm[0], warm_reset=res.warm[1])
        out = {"tunings": {k: [v] for k, v in row.items()}}
        if cfg.record_history:
            out["history"] = concat([history_rows(un, i, tix, 0), history_rows(res, i, tix, 1)],
                                    HISTORY_COLUMNS)
        return UnitResult(out, un.pulses + res.pulses)

    def label(u: Tuning) -> str:
        return (f"device ({u.row},{u.col}) level {u.level + 1}/{cfg.levels} "
                f"repeat {u.repeat + 1}/{cfg.repeats}")

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress, label=label, unit="tunings")
    summary = summarize(writer.table("tunings"))
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    return CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete,
                          unit="tunings")


#: what each number of the summary is (stored in SI and fractions; shown in uS and %)
SUMMARY = {
    "devices": Metric("devices measured"),
    "tunings": Metric("tunings"),
    "failed": Metric("failed tunings"),
    "failure_rate": Metric("share of tunings that failed", "fraction"),
    "pulses_median": Metric("pulses per tuning, median"),
    "pulses_p90": Metric("pulses per tuning, 90th percentile"),
    "error_mean_rel": Metric("mean error of the converged tunings (of target)", "fraction",
                             nd=2, signed=True),
    "error_std_rel": Metric("std of that error (of target)", "fraction", nd=2),
    "instrument_time_s": Metric("instrument time", "s"),
}


def summarize(df) -> dict:
    if len(df) == 0:
        return {"tunings": 0}
    ok = df[df.converged]
    err = (ok.g_final - ok.target) / ok.target
    return {"devices": int(df.device.nunique()), "tunings": int(len(df)),
            "failed": int((~df.converged).sum()),
            "failure_rate": float((~df.converged).mean()),
            "pulses_median": float(np.median(df.pulses)),
            "pulses_p90": float(np.percentile(df.pulses, 90)),
            "error_mean_rel": float(err.mean()) if len(ok) else float("nan"),
            "error_std_rel": float(err.std()) if len(ok) > 1 else float("nan"),
            "instrument_time_s": float(df.t_end.max() - df.t_start.min())}
