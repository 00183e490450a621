"""Pulsed I-V hysteresis (`iv-pulsed`): the remanent state after each step of a pulsed staircase.

The sweep is a staircase 0 -> +v_max -> 0 -> v_min -> 0 in `v_step` steps, each step one pulse
of `width` followed by a read at the read voltage in the same execution, on the rig's pulse
path. What is stored is the remanent state after each step (g, and the read current
i_read = g * V_read), i.e. the pulsed hysteresis loop, not the current *during* the bias; the DC
I-V sweep with the SMUs is the `iv` campaign.

The unit of work is one sweep (device, cycle), so a run of many cycles per device loses at most
the sweep in progress.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from database.display import Metric
from protocols.campaigns._loop import UnitResult, raster, run_units
from protocols.campaigns.common import CampaignConfig, CampaignResult, log, open_store
from protocols.rig import CrossbarRig

PROTOCOL = "iv-pulsed"

POINTS_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "cycle": ("i4", "1"),
    "point": ("i4", "1"), "volts": ("f8", "V"), "g": ("f8", "S"), "i_read": ("f8", "A"),
    "t": ("f8", "s"),
}


#: what each number of the summary is (stored in S; shown in uS)
SUMMARY = {
    "devices": Metric("devices swept"),
    "points": Metric("points (steps read)"),
    "g_min_S": Metric("lowest conductance read", "S"),
    "g_max_S": Metric("highest conductance read", "S"),
}


class PulsedIVConfig(CampaignConfig):
    v_max: float = Field(1.6, gt=0, description="positive sweep end [V]")
    v_min: float = Field(-1.8, lt=0, description="negative sweep end [V]")
    v_step: float = Field(0.05, gt=0, description="staircase step [V]")
    width: float = Field(1e-6, gt=0, le=1e-3, description="duration of each staircase step "
                         "[s] (at most 1 ms, as a tuning pulse; the station limits apply too)")
    cycles: int = Field(1, ge=1, description="sweeps per device")

    @model_validator(mode="after")
    def _steps(self):
        if self.v_step > min(self.v_max, -self.v_min):
            raise ValueError("v_step is larger than the sweep range")
        return self

    def staircase(self) -> np.ndarray:
        up = np.arange(self.v_step, self.v_max + 1e-12, self.v_step)
        dn = np.arange(-self.v_step, self.v_min - 1e-12, -self.v_step)
        v = np.concatenate([up, up[::-1][1:], [0.0], dn, dn[::-1][1:], [0.0]])
        return v[v != 0.0]


def run(rig: CrossbarRig, config: PulsedIVConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    cfg = config
    units = [(i, r, c, cyc) for i, (r, c) in enumerate(raster(rig.shape, cfg.devices))
             for cyc in range(cfg.cycles)]
    for v in (cfg.v_max, cfg.v_min):
        rig.limits.check_pulse(v, cfg.width, where="iv sweep")
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables={"points": POINTS_COLUMNS}, units_total=len(units),
                        resume=resume, overwrite=overwrite, rig=rig)
    resumed = writer.units_done
    volts = cfg.staircase()
    vr = rig.read_settings.volts

    def work(_unit: int, u: tuple[int, int, int, int]) -> UnitResult:
        i, r, c, cyc = u
        rows: dict[str, list] = {k: [] for k in POINTS_COLUMNS}
        for p, v in enumerate(volts):
            g = float(rig.pulse_and_read(r, c, float(v), cfg.width))
            for k, val in dict(device=i, row=r, col=c, cycle=cyc, point=p, volts=v, g=g,
                               i_read=g * vr, t=float(rig.clock)).items():
                rows[k].append(val)
        return UnitResult({"points": rows}, volts.size)

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress, label=lambda u: f"device ({u[1]},{u[2]}) cycle {u[3] + 1}",
              unit="sweeps")
    df = writer.table("points")
    summary = {"devices": int(df.device.nunique()) if len(df) else 0, "points": int(len(df)),
               "g_min_S": float(df.g.min()) if len(df) else float("nan"),
               "g_max_S": float(df.g.max()) if len(df) else float("nan")}
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    return CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete,
                          unit="sweeps")
