"""Electroforming (`forming`, opt-in): a compliance-limited ramp per device, stopped when it forms.

For devices that are not forming-free (the published devices are; nothing runs it unless
asked), the ramp stops at the first switching event.

Each device is first read at `v_read` (one DC point): a device conducting more than
`formed_above_S` is already formed and left alone. Otherwise its word line is ramped from
`v_start` to `v_stop` in `v_step` steps, one DC point at a time (the bit line sensed at 0 V, the
other lines as `scheme` says: V/2 by default, because with the other lines grounded every device
of the word line sees the whole ramp and forms with it), with the sensing SMU at `compliance`, and the ramp stops at the
first point where the current reaches the compliance or `i_event` (far above what an unformed
device draws: 0.05 uS at 2 V is 0.1 uA, and well above the read noise): that point's voltage is
the forming voltage. The device
is read at `v_read` again afterwards. A device that does not form by `v_stop` is reported as
such.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field, model_validator

from database.display import Metric
from protocols.bias import SCHEMES, device_iv
from protocols.campaigns._loop import UnitResult, raster, run_units
from protocols.campaigns.common import CampaignConfig, CampaignResult, log, open_store
from protocols.rig import CrossbarRig

PROTOCOL = "forming"
FORMED, ALREADY, NOT_FORMED = 0, 1, 2
STATUS_CODES = "0=formed now, 1=already formed, 2=not formed by v_stop"

RAMPS_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "point": ("i4", "1"),
    "volts": ("f8", "V"), "current": ("f8", "A"), "compliance": ("?", "1"), "t": ("f8", "s"),
}
DEVICES_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "g_before": ("f8", "S"),
    "status": ("i1", STATUS_CODES), "v_form": ("f8", "V"), "i_form": ("f8", "A"),
    "g_after": ("f8", "S"), "t_end": ("f8", "s"),
}


class FormingConfig(CampaignConfig):
    v_start: float = Field(0.5, gt=0, description="first level of the ramp [V]")
    v_stop: float = Field(2.0, gt=0, description="last level of the ramp [V]")
    v_step: float = Field(0.05, gt=0, description="ramp step [V]")
    compliance: float = Field(100e-6, gt=0, description="current compliance of the sensing "
                              "SMU [A] (limits the formed filament)")
    hold: float = Field(1e-3, ge=0, le=10, description="hold before each measurement [s]")
    nplc: float = Field(1.0, gt=0, le=100, description="integration [power-line cycles]")
    scheme: str = Field("v2", description="the other lines: " + ", ".join(SCHEMES) + " (V/2: "
                        "the half-selected devices see half the ramp, below their forming "
                        "voltage; grounded would form the whole word line)")
    v_read: float = Field(0.1, gt=0, description="read level before and after [V]")
    formed_above_S: float = Field(5e-6, gt=0, description="a device conducting more at v_read "
                                  "is formed already [S]")
    i_event: float = Field(10e-6, gt=0, description="a current at least this large (or the "
                           "compliance) is the forming event [A]")

    @model_validator(mode="after")
    def _ramp(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}")
        if self.v_stop < self.v_start:
            raise ValueError("v_stop must not be below v_start")
        return self

    def ramp(self) -> np.ndarray:
        v = np.round(np.arange(self.v_start, self.v_stop + 1e-9, self.v_step), 12)
        return v if v[-1] >= self.v_stop - 1e-9 else np.append(v, self.v_stop)

    def check_limits(self, limits) -> None:
        limits.check_level(self.v_stop, where="forming ramp")
        limits.check_bias(self.v_read, where="forming read")
        limits.check_compliance(self.compliance, where="forming compliance")
        if self.i_event > self.compliance:
            raise ValueError("i_event must not exceed the compliance")


def run(rig: CrossbarRig, config: FormingConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    cfg = config
    units = raster(rig.shape, cfg.devices)
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables={"ramps": RAMPS_COLUMNS, "devices": DEVICES_COLUMNS},
                        units_total=len(units), resume=resume, overwrite=overwrite, rig=rig)
    resumed = writer.units_done
    ramp = cfg.ramp()

    def point(r: int, c: int, v: float):
        return device_iv(rig, r, c, [v], scheme=cfg.scheme, compliance=cfg.compliance,
                         hold=cfg.hold, nplc=cfg.nplc)

    def read(r: int, c: int) -> float:
        p = point(r, c, cfg.v_read)
        return float(p.current[0]) / cfg.v_read

    def work(i: int, rc: tuple[int, int]) -> UnitResult:
        r, c = rc
        g0 = read(r, c)
        pts: dict[str, list] = {k: [] for k in RAMPS_COLUMNS}
        status, v_form, i_form = ALREADY, math.nan, math.nan
        if not g0 > cfg.formed_above_S:
            status = NOT_FORMED
            for k, v in enumerate(ramp):
                p = point(r, c, float(v))
                cur, comp = float(p.current[0]), bool(p.compliance[0])
                for key, val in zip(RAMPS_COLUMNS, (i, r, c, k, float(v), cur, comp,
                                                    float(p.t[0])), strict=True):
                    pts[key].append(val)
                if comp or cur >= cfg.i_event:
                    status, v_form, i_form = FORMED, float(v), cur
                    break
        g1 = read(r, c) if status != ALREADY else g0
        dev = {"device": [i], "row": [r], "col": [c], "g_before": [g0], "status": [status],
               "v_form": [v_form], "i_form": [i_form], "g_after": [g1],
               "t_end": [float(rig.clock)]}
        return UnitResult({"ramps": pts, "devices": dev}, len(pts["point"]) + 2)

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress)
    summary = summarize(writer.table("devices"))
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    return CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete)


#: what each number of the summary is (the voltage stored in V)
SUMMARY = {
    "devices": Metric("devices"),
    "formed": Metric("devices formed"),
    "already_formed": Metric("devices already formed"),
    "not_formed": Metric("devices not formed by v_stop"),
    "v_form_median_V": Metric("median forming voltage", "V"),
}


def summarize(devices) -> dict:
    n = len(devices)
    out = {"devices": n, "formed": int((devices.status == FORMED).sum()),
           "already_formed": int((devices.status == ALREADY).sum()),
           "not_formed": int((devices.status == NOT_FORMED).sum())}
    vf = devices.v_form.to_numpy(float)
    vf = vf[np.isfinite(vf)]
    if vf.size:
        out["v_form_median_V"] = float(np.median(vf))
    return out
