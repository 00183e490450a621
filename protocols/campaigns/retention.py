"""Retention campaign: how programmed conductances move over time after programming.

Program every chosen device to a level with write-verify (device k of the list gets
levels[k % len(levels)]), then read every programmed device on a log-spaced schedule of times
after the end of programming, from `first_s` to `span_s` (minutes to days). Between reads the
outputs are idle and the relays open: on a simulated station the virtual clock advances
(`rig.wait`), on a real one the command waits.

Units of work: the programming of each device, then each scheduled read (of every device). A
crash therefore loses at most one device's programming or one read, and a resume continues at
the next unfinished unit without re-programming anything already programmed; a read whose time
has passed while the run was stopped is taken at once, and both its scheduled and its actual
time are stored.

Time base: the virtual clock on a simulated station (committed with the chip, so a resumed run
is identical to an uninterrupted one), Unix time on hardware, where the instrument clock
restarts with the process but the devices kept drifting.

Drift of a device = (read - g_final) / g_final, g_final being the mean of its in-band
confirmation reads at the end of its write-verify; age = time since its own write-verify ended.
On a crossbar the devices programmed after a device also disturb it (V/3): that change is in
its first reads (single crosspoints, or one device per crossbar, avoid it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from database.display import duration, pct, us
from protocols.campaigns._loop import UnitResult, raster, run_units
from protocols.campaigns.common import CampaignConfig, CampaignResult, log, open_store
from protocols.rig import CrossbarRig
from protocols.tuning import tune

PROTOCOL = "retention"

PROGRAMMING_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "level": ("i4", "1"),
    "target": ("f8", "S"), "converged": ("?", "1"), "gave_up": ("?", "1"),
    "pulses": ("i4", "1"), "g_initial": ("f8", "S"), "g_final": ("f8", "S"),
    "t_start": ("f8", "s"), "t_prog": ("f8", "s"), "unix_prog": ("f8", "s"),
}
READS_COLUMNS = {
    "read": ("i4", "1"), "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"),
    "level": ("i4", "1"), "target": ("f8", "S"), "t_scheduled": ("f8", "s"),
    "t_actual": ("f8", "s"), "age": ("f8", "s"), "t": ("f8", "s"), "unix": ("f8", "s"),
    "g": ("f8", "S"), "clipped": ("?", "1"), "drift_rel": ("f8", "1"),
}


class RetentionConfig(CampaignConfig):
    levels: list[float] = Field([100e-6, 200e-6, 300e-6, 400e-6], min_length=1, max_length=256,
                                description="target levels [S]; device k of the list gets "
                                "levels[k % len(levels)]")
    first_s: float = Field(10.0, gt=0, le=1e7, description="first read, after the end of "
                           "programming [s]")
    span_s: float = Field(86400.0, gt=0, le=1e7, description="last read, after the end of "
                          "programming [s] (at most 1e7 s, about 16 weeks)")
    reads: int = Field(12, ge=2, le=1000, description="scheduled reads, log-spaced from "
                       "first_s to span_s")
    n_reads: int = Field(1, ge=1, le=1000, description="reads per device at each scheduled "
                         "time, averaged")
    up_threshold: float = Field(0.05, gt=0, le=10, description="a device reading more than "
                                "this fraction above its programmed conductance counts as "
                                "drifting up (a retention failure)")

    @model_validator(mode="after")
    def _schedule(self):
        if not self.first_s < self.span_s:
            raise ValueError("first_s must be below span_s")
        if not all(math.isfinite(lv) and lv > 0 for lv in self.levels):
            raise ValueError("levels must be positive conductances [S]")
        return self

    def schedule(self) -> np.ndarray:
        """Times of the reads after the end of programming [s]."""
        return np.geomspace(self.first_s, self.span_s, self.reads)

    def targets(self) -> list[tuple[float, float]]:
        return [(float(lv), self.tune.tolerance) for lv in self.levels]


@dataclass(frozen=True)
class Program:
    """Unit: program device `device` (its index in the list) at (row, col) to levels[level]."""

    device: int
    row: int
    col: int
    level: int


@dataclass(frozen=True)
class Read:
    """Unit: scheduled read `read`, `at` seconds after the end of programming."""

    read: int
    at: float


def _now(rig: CrossbarRig) -> float:
    """The campaign's time base [s]: the virtual clock on a simulated station, Unix time on
    hardware (it goes on while the process is stopped)."""
    return float(rig.clock) if rig.restorable else time.time()


def run(rig: CrossbarRig, config: RetentionConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    """Run (or continue) the campaign on `rig`, writing to the HDF5 file `store`."""
    cfg = config
    devices = raster(rig.shape, cfg.devices)
    n_lv = len(cfg.levels)
    programs = [Program(i, r, c, i % n_lv) for i, (r, c) in enumerate(devices)]
    reads = [Read(k, float(t)) for k, t in enumerate(cfg.schedule())]
    units: list[Program | Read] = [*programs, *reads]
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables={"programming": PROGRAMMING_COLUMNS, "reads": READS_COLUMNS},
                        units_total=len(units), resume=resume, overwrite=overwrite, rig=rig)
    resumed = writer.units_done
    ceiling = rig.read_settings.ceiling_S
    # what the reads need of the programming (rebuilt from the file on resume)
    done = writer.table("programming")
    prog = {k: list(done[k]) for k in ("g_final", "t_prog", "unix_prog")}

    def programmed_at() -> np.ndarray:
        """When each device was programmed, in the time base."""
        return np.asarray(prog["t_prog"] if rig.restorable else prog["unix_prog"], float)

    def program(p: Program) -> UnitResult:
        target = float(cfg.levels[p.level])
        res = tune(rig, p.row, p.col, target, cfg.tune)
        unix = math.nan if rig.restorable else time.time()
        prog["g_final"].append(res.g_final)
        prog["t_prog"].append(res.t_end)
        prog["unix_prog"].append(unix)
        row = dict(device=p.device, row=p.row, col=p.col, level=p.level, target=target,
                   converged=res.converged, gave_up=res.gave_up, pulses=res.pulses,
                   g_initial=res.g_initial, g_final=res.g_final, t_start=res.t_start,
                   t_prog=res.t_end, unix_prog=unix)
        return UnitResult({"programming": {k: [v] for k, v in row.items()}}, res.pulses)

    def read(u: Read) -> UnitResult:
        t_prog = programmed_at()
        end = float(t_prog.max())
        lag = u.at - (_now(rig) - end)
        if lag > 0:
            rig.safe_state()   # nothing connected while the devices sit
            rig.wait(lag)
        rows: dict[str, list] = {k: [] for k in READS_COLUMNS}
        for p in programs:
            g = float(np.mean(rig.read_repeated(p.row, p.col, cfg.n_reads)))
            now = _now(rig)
            g_prog = prog["g_final"][p.device]
            vals = dict(read=u.read, device=p.device, row=p.row, col=p.col, level=p.level,
                        target=float(cfg.levels[p.level]), t_scheduled=u.at,
                        t_actual=now - end, age=now - float(t_prog[p.device]),
                        t=float(rig.clock), unix=math.nan if rig.restorable else now, g=g,
                        clipped=g >= ceiling, drift_rel=(g - g_prog) / g_prog)
            for k, v in vals.items():
                rows[k].append(v)
        return UnitResult({"reads": rows})

    def work(_i: int, u: Program | Read) -> UnitResult:
        return program(u) if isinstance(u, Program) else read(u)

    def label(u: Program | Read) -> str:
        if isinstance(u, Program):
            return (f"programming device ({u.row},{u.col}) to "
                    f"{cfg.levels[u.level] * 1e6:.0f} uS")
        return f"read {u.read + 1}/{len(reads)} at {duration(u.at)}"

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress, label=label, unit="steps")
    summary = summarize(writer.table("programming"), writer.table("reads"), cfg.up_threshold)
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    return CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete,
                          unit="steps")


def summarize(prog, reads, up_threshold: float) -> dict:
    """Figures of a finished run: per level, the drift at the last read."""
    out = {"devices": int(len(prog)), "converged": int(prog.converged.sum()) if len(prog) else 0,
           "reads": int(reads["read"].nunique()) if len(reads) else 0}
    if not len(reads):
        return out
    last = reads[reads["read"] == reads["read"].max()]
    up = last.drift_rel > up_threshold
    out.update(last_read_s=float(last.t_actual.max()), drift_mean_rel=float(last.drift_rel.mean()),
               drift_std_rel=float(last.drift_rel.std()) if len(last) > 1 else 0.0,
               up_threshold_rel=float(up_threshold), drifting_up=int(up.sum()),
               clipped_reads=int(reads.clipped.sum()),
               by_level=[{"target_S": float(t), "devices": int(len(g)),
                          "drift_mean_rel": float(g.drift_rel.mean()),
                          "drift_std_rel": float(g.drift_rel.std()) if len(g) > 1 else 0.0,
                          "drifting_up": int((g.drift_rel > up_threshold).sum())}
                         for t, g in last.groupby("target")])
    return out


def summary_lines(s: dict) -> list[str]:
    """The summary for the terminal, with units."""
    out = [f"devices programmed: {s['devices']} ({s['converged']} converged), "
           f"reads: {s['reads']}"]
    if "last_read_s" not in s:
        return out
    out.append(f"drift at the last read ({duration(s['last_read_s'])} after programming): "
               f"mean {pct(s['drift_mean_rel'], 2, signed=True)}, "
               f"std {pct(s['drift_std_rel'], 2)}")
    for lv in s["by_level"]:
        out.append(f"  {us(lv['target_S'])}: {lv['devices']} "
                   f"device{'' if lv['devices'] == 1 else 's'}, mean "
                   f"{pct(lv['drift_mean_rel'], 2, signed=True)}, "
                   f"std {pct(lv['drift_std_rel'], 2)}, drifting up {lv['drifting_up']}")
    out.append(f"drifting up (more than {pct(s['up_threshold_rel'], 1, signed=True)}): "
               f"{s['drifting_up']} of {s['devices']} devices")
    if s["clipped_reads"]:
        out.append(f"reads at the range ceiling (clipped): {s['clipped_reads']}")
    return out
