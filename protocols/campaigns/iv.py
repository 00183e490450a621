"""DC I-V hysteresis (`iv`): double voltage sweeps with compliance through the rig's SMUs.

Each device is swept `cycles` times: 0 -> +v_set -> 0 with the SET compliance, then
0 -> v_reset -> 0 with the RESET compliance, in `v_step` steps, each point held `hold` seconds
and measured with `nplc` power-line cycles (`protocols.bias.device_iv`: the device's word line
at the level, its bit line sensed at 0 V, the other lines as `scheme` says). The current during
the bias is stored, so the loops are the device's DC I-V curves, pinched at 0 V. With the
default grounded scheme the sensed current is the device's alone, but every other device of the
selected word line sees the sweep too (it is stressed as much as the device); V/2 or V/3 halve
or third that stress and add the half-selected devices' currents to the reading.

Per cycle (`extract_cycle`): the conductance along each branch is g = I / V (points with
|V| >= v_detect only, where the reading is well above the noise). The SET voltage is the first
point of the rising positive branch where ln g rises faster than `switch_rate` per volt (the
sinh nonlinearity of an unchanging device stays below 0.8 /V up to 2 V), or where the SET
compliance is reached; the RESET voltage the first point of the falling negative branch where
ln g drops faster than `switch_rate` per volt. A branch whose conductance changes by less than
`min_ratio` over the half-cycle (from before to after it, read at +-v_read) did not switch.
ON/OFF is the conductance at +v_read after the SET (the falling positive branch) over that
before it (the rising positive branch). A device with no switching in any cycle is flagged.
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

PROTOCOL = "iv"
#: branches of a cycle: rising and falling positive, falling and rising negative
BRANCHES = "0=up to v_set, 1=back from v_set, 2=down to v_reset, 3=back from v_reset"

POINTS_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "cycle": ("i4", "1"),
    "branch": ("i1", BRANCHES), "point": ("i4", "1"), "volts": ("f8", "V"),
    "current": ("f8", "A"), "compliance": ("?", "1"), "other_compliance": ("?", "1"),
    "overflow": ("?", "1"), "t": ("f8", "s"),
}
CYCLES_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "cycle": ("i4", "1"),
    "v_set": ("f8", "V"), "v_reset": ("f8", "V"), "g_off": ("f8", "S"), "g_on": ("f8", "S"),
    "on_off": ("f8", "1"), "set_switched": ("?", "1"), "reset_switched": ("?", "1"),
}
DEVICES_COLUMNS = {
    "device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"),
    "cycles_switched": ("i4", "1"), "never_switched": ("?", "1"),
}


class IVConfig(CampaignConfig):
    v_set: float = Field(1.6, gt=0, description="positive end of each sweep [V]")
    v_reset: float = Field(-1.8, lt=0, description="negative end of each sweep [V]")
    v_step: float = Field(0.05, gt=0, description="step of the sweeps [V]")
    cycles: int = Field(2, ge=1, le=1000, description="double sweeps per device")
    compliance_set: float = Field(1e-3, gt=0, description="current compliance of the positive "
                                  "half [A] (station limit applies)")
    compliance_reset: float = Field(5e-3, gt=0, description="current compliance of the "
                                    "negative half [A]")
    hold: float = Field(1e-3, ge=0, le=10, description="time each point is held before it is "
                        "measured [s]")
    nplc: float = Field(1.0, gt=0, le=100, description="integration per point [power-line "
                        "cycles]")
    scheme: str = Field("grounded", description="the other lines: " + ", ".join(SCHEMES))
    v_read: float = Field(0.2, gt=0, description="voltage of the ON/OFF ratio [V]")
    v_detect: float = Field(0.1, gt=0, description="smallest |V| at which switching is looked "
                            "for [V] (below it I/V is dominated by noise)")
    switch_rate: float = Field(1.0, gt=0, description="d ln(g)/dV that counts as switching "
                               "[1/V]")
    min_ratio: float = Field(1.2, gt=1, description="smallest change of g over a half-cycle "
                             "that counts as switching")

    @model_validator(mode="after")
    def _sweep(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}")
        if self.v_step > min(self.v_set, -self.v_reset):
            raise ValueError("v_step is larger than the sweep range")
        if self.v_read >= min(self.v_set, -self.v_reset):
            raise ValueError("v_read must lie inside both halves of the sweep")
        return self

    def halves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(positive levels, their branch, negative levels, their branch): 0 -> v_set -> 0 and
        -step -> v_reset -> 0."""
        up = np.round(np.arange(0.0, self.v_set + 1e-9, self.v_step), 12)
        if up[-1] < self.v_set - 1e-9:
            up = np.append(up, self.v_set)
        pos = np.concatenate([up, up[-2::-1]])
        dn = np.round(np.arange(-self.v_step, self.v_reset - 1e-9, -self.v_step), 12)
        if dn[-1] > self.v_reset + 1e-9:
            dn = np.append(dn, self.v_reset)
        neg = np.concatenate([dn, dn[-2::-1], [0.0]])
        return (pos, np.r_[np.zeros(up.size), np.ones(up.size - 1)].astype(int),
                neg, np.r_[np.full(dn.size, 2), np.full(dn.size, 3)].astype(int))

    def check_limits(self, limits) -> None:
        for v in (self.v_set, self.v_reset):
            limits.check_level(v, where="iv sweep")
        for c in (self.compliance_set, self.compliance_reset):
            limits.check_compliance(c, where="iv compliance")


def _g(v: np.ndarray, i: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v != 0, i / v, np.nan)


def _at(v: np.ndarray, g: np.ndarray, where: float) -> float:
    """g interpolated at voltage `where` along a branch (NaN when the branch misses it)."""
    ok = np.isfinite(g)
    v, g = v[ok], g[ok]
    if v.size == 0 or not (v.min() <= where <= v.max()):
        return math.nan
    order = np.argsort(v)
    return float(np.interp(where, v[order], g[order]))


def _onset(v: np.ndarray, g: np.ndarray, comp: np.ndarray, rate: float, sign: int,
           v_min: float) -> float:
    """First voltage along a branch (in sweep order) where ln g changes by `sign`*rate per
    volt of |V| or more (or the compliance is reached); NaN if none."""
    use = np.abs(v) >= v_min - 1e-12
    v, g, comp = v[use], g[use], comp[use]
    for k in range(v.size):
        if comp[k]:
            return float(v[k])
        if k and g[k] > 0 and g[k - 1] > 0:
            dv = abs(v[k]) - abs(v[k - 1])
            if dv > 0 and sign * (math.log(g[k]) - math.log(g[k - 1])) / dv >= rate:
                return float(v[k])
    return math.nan


def extract_cycle(volts, current, compliance, branch, cfg: IVConfig) -> dict:
    """SET / RESET voltages, g at +v_read before and after the SET, whether each half
    switched (see the module docstring)."""
    v, i = np.asarray(volts, float), np.asarray(current, float)
    comp, b = np.asarray(compliance, bool), np.asarray(branch, int)
    g = _g(v, i)
    sel = {k: b == k for k in range(4)}
    g_off = _at(v[sel[0]], g[sel[0]], cfg.v_read)
    g_on = _at(v[sel[1]], g[sel[1]], cfg.v_read)
    g_neg_before = _at(v[sel[2]], g[sel[2]], -cfg.v_read)
    g_neg_after = _at(v[sel[3]], g[sel[3]], -cfg.v_read)
    set_ok = g_on >= cfg.min_ratio * g_off
    reset_ok = g_neg_after * cfg.min_ratio <= g_neg_before
    v_set = _onset(v[sel[0]], g[sel[0]], comp[sel[0]], cfg.switch_rate, +1, cfg.v_detect) \
        if set_ok else math.nan
    v_reset = _onset(v[sel[2]], g[sel[2]], np.zeros(sel[2].sum(), bool), cfg.switch_rate, -1,
                     cfg.v_detect) if reset_ok else math.nan
    return {"v_set": v_set, "v_reset": v_reset, "g_off": g_off, "g_on": g_on,
            "on_off": g_on / g_off if g_off > 0 else math.nan,
            "set_switched": bool(set_ok and math.isfinite(v_set)),
            "reset_switched": bool(reset_ok and math.isfinite(v_reset))}


#: what each number of the summary is (voltages stored in V)
SUMMARY = {
    "devices": Metric("devices swept"),
    "cycles": Metric("double sweeps"),
    "never_switched": Metric("devices that never switched"),
    "v_set_median_V": Metric("median SET voltage", "V", signed=True),
    "v_reset_median_V": Metric("median RESET voltage", "V", signed=True),
    "on_off_median": Metric("median ON/OFF ratio at v_read", nd=3),
}


def run(rig: CrossbarRig, config: IVConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    cfg = config
    units = raster(rig.shape, cfg.devices)
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables={"points": POINTS_COLUMNS, "cycles": CYCLES_COLUMNS,
                                "devices": DEVICES_COLUMNS},
                        units_total=len(units), resume=resume, overwrite=overwrite, rig=rig)
    resumed = writer.units_done
    pos, pos_b, neg, neg_b = cfg.halves()
    branch = np.r_[pos_b, neg_b]

    def work(i: int, rc: tuple[int, int]) -> UnitResult:
        r, c = rc
        pts: dict[str, list] = {k: [] for k in POINTS_COLUMNS}
        cyc: dict[str, list] = {k: [] for k in CYCLES_COLUMNS}
        for n in range(cfg.cycles):
            halves = [device_iv(rig, r, c, lv, scheme=cfg.scheme, compliance=comp,
                                hold=cfg.hold, nplc=cfg.nplc)
                      for lv, comp in ((pos, cfg.compliance_set), (neg, cfg.compliance_reset))]
            cols = {k: np.concatenate([getattr(h, k) for h in halves])
                    for k in ("volts", "current", "compliance", "other_compliance",
                              "overflow", "t")}
            m = branch.size
            for k, val in dict(device=np.full(m, i), row=np.full(m, r), col=np.full(m, c),
                               cycle=np.full(m, n), branch=branch, point=np.arange(m),
                               **cols).items():
                pts[k].extend(np.asarray(val).tolist())
            ex = extract_cycle(cols["volts"], cols["current"], cols["compliance"], branch, cfg)
            for k, val in dict(device=i, row=r, col=c, cycle=n, **ex).items():
                cyc[k].append(val)
        switched = int(sum(a or b for a, b in zip(cyc["set_switched"], cyc["reset_switched"],
                                                   strict=True)))
        dev = {"device": [i], "row": [r], "col": [c], "cycles_switched": [switched],
               "never_switched": [switched == 0]}
        return UnitResult({"points": pts, "cycles": cyc, "devices": dev},
                          cfg.cycles * branch.size)

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress)
    summary = summarize(writer.table("cycles"), writer.table("devices"))
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    return CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete)


def summarize(cycles, devices) -> dict:
    out = {"devices": int(len(devices)), "cycles": int(len(cycles)),
           "never_switched": int(devices.never_switched.sum()) if len(devices) else 0}
    for key in ("v_set", "v_reset", "on_off"):
        x = cycles[key].to_numpy(float) if len(cycles) else np.zeros(0)
        x = x[np.isfinite(x)]
        if x.size:
            unit = "" if key == "on_off" else "_V"
            out[f"{key}_median{unit}"] = float(np.median(x))
    return out
