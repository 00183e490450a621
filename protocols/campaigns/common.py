"""Pieces shared by the campaign modules: base config, history rows, stuck classes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from database.runs import RunWriter
from protocols.errors import ConfigError
from protocols.tuning import TuneConfig, TuneResult, check_target, check_tune

log = logging.getLogger("xbarlab.campaign")

#: device classes (stuck screening, disturbance flags)
WORKING, STUCK_HRS, STUCK_LRS, FAILED = 0, 1, 2, 3
CLASS_NAMES = {WORKING: "working", STUCK_HRS: "stuck-HRS", STUCK_LRS: "stuck-LRS", FAILED: "failed"}
CLASS_CODES = ", ".join(f"{k}={v}" for k, v in CLASS_NAMES.items())


class CampaignConfig(BaseModel):
    """Settings every campaign has. `devices` None = every device in raster order."""

    model_config = ConfigDict(extra="forbid")

    devices: list[tuple[int, int]] | None = Field(None, min_length=1,
                                                  description="(row, col) list; None = all")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="write-verify settings")

    def targets(self) -> list[tuple[float, float]]:
        """(target [S], tolerance) of every tuning the campaign may ask for (the extremes of
        a range stand for the range)."""
        return []

    def check_limits(self, limits) -> None:
        """Raise (SafetyLimitError) when a level or current the campaign itself applies lies
        outside the station `limits` (the DC campaigns' sweeps and compliances)."""


def check_config(cfg: CampaignConfig, limits, read) -> None:
    """ConfigError for what can be known wrong before the store is opened or a pulse fired:
    tuning ramps beyond the station `limits`, targets the station cannot read back (`read`, a
    ReadSettings), levels and compliances of the campaign's own outside the limits."""
    check_tune(cfg.tune, limits, read)
    for target, tolerance in cfg.targets():
        check_target(target, tolerance, read)
    try:
        cfg.check_limits(limits)
    except ConfigError:
        raise
    except Exception as e:  # a SafetyLimitError: reported as the config's fault
        raise ConfigError(f"{type(cfg).__name__}: {e}") from None


HISTORY_COLUMNS = {
    "device": ("i4", "1"), "tuning": ("i8", "1"), "phase": ("i1", "1"),
    "kind": ("i1", "1"), "volts": ("f8", "V"), "width": ("f8", "s"),
    "g": ("f8", "S"), "t": ("f8", "s"), "used": ("?", "1"),
}


def history_rows(res: TuneResult, device: int, tuning: int, phase: int) -> dict[str, np.ndarray]:
    h = res.history
    n = h["g"].size
    return {"device": np.full(n, device), "tuning": np.full(n, tuning), "phase": np.full(n, phase),
            "kind": h["kind"], "volts": h["volts"], "width": h["width"], "g": h["g"],
            "t": h["t"], "used": h["used"]}


def concat(parts: list[dict[str, np.ndarray]], columns: dict) -> dict[str, np.ndarray]:
    if not parts:
        return {c: np.zeros(0, dtype=np.dtype(d)) for c, (d, _u) in columns.items()}
    return {c: np.concatenate([np.asarray(p[c]) for p in parts]) for c in columns}


def classify_failed_tuning(res: TuneResult, g_hrs: float, g_top: float) -> int:
    """Class of a device whose tuning did not converge (physics.md §2.4): still below g_hrs
    after pulsing up to the SET cap -> stuck-HRS; still above g_top -> stuck-LRS; else failed."""
    if res.converged:
        return WORKING
    last = float(res.final_reads[-1]) if res.final_reads.size else float(res.history["g"][-1])
    if last < g_hrs and res.set_pulses > 0:
        return STUCK_HRS
    if last > g_top and res.reset_pulses > 0:
        return STUCK_LRS
    return FAILED


@dataclass
class CampaignResult:
    path: Path
    run: str
    summary: dict = field(default_factory=dict)
    resumed_from: int = 0
    #: the file already held this run, complete: nothing was measured or written
    already_complete: bool = False
    #: what its units are ("devices", "tunings", ...): resumed_from counts them
    unit: str = "devices"


def open_store(path, *, protocol: str, config: CampaignConfig, station: dict | None,
               seed: int | None, tables: dict, units_total: int, resume: bool,
               overwrite: bool, rig) -> RunWriter:
    """The campaign's run in `path`, after `config` was checked against the rig's station; the
    instruments' snapshot (`rig.snapshot()`) goes with it."""
    check_config(config, rig.limits, rig.read_settings)
    return RunWriter.open(path, protocol=protocol, config=config.model_dump(mode="json"),
                          station=station or {}, seed=seed, tables=tables,
                          units_total=units_total, resume=resume, overwrite=overwrite,
                          snapshot=rig.snapshot())
