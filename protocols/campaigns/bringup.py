"""Station bring-up (`bringup`): before anything is pulsed, check every line through the matrix.

Each word line and bit line in turn is held at `v_test` by an SMU with every other line grounded,
and its current measured: the line's conductance to the grounded array g = I / V (its devices in
parallel, behind the contact and line resistance), and r = V / I. A line whose g is below
`open_below_S` is **open** (cut off its driver, or a probe not touching); one whose current
reaches the compliance, or whose g exceeds `short_above_S`, is **shorted** to another line (a
short draws its current straight to the grounded partner); one whose g is below `weak_fraction`
of the median of the intact lines of its kind (rows or columns) is **weak** (a partial open or
a high-resistance contact: reported, not fatal). With `devices` given, only the lines of those
devices are checked. Then every pair of shorted lines is tested on its own (one line at
`v_test`, the other grounded, the rest floating) to name the partners.

`v_test` (50 mV by default) is far below any switching threshold reported for TiO2 devices
(the lowest SET pulse threshold of docs/simulator.md is about 1 V, 20x); on the simulated chip a
bring-up moves devices by well under 0.1 % (docs/simulator.md, "DC stress"). The station's read
limit bounds it.

With one access point per line the contact resistance cannot be separated from the devices
behind it: r is the line's resistance to the grounded array, compared across lines.

The report is stored whatever it finds; a station with an open or a shorted line then raises
`BringupError` naming the lines (the CLI exits 2), so nothing is pulsed through it.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from database.display import Metric
from protocols.campaigns._loop import UnitResult, raster, run_units
from protocols.campaigns.common import CampaignConfig, CampaignResult, log, open_store
from protocols.errors import ProtocolError
from protocols.rig import CrossbarRig, DcRequest, Line

PROTOCOL = "bringup"
OK, OPEN, SHORT, WEAK = 0, 1, 2, 3
STATUS_NAMES = {OK: "ok", OPEN: "open", SHORT: "short", WEAK: "weak"}
STATUS_CODES = ", ".join(f"{k}={v}" for k, v in STATUS_NAMES.items())

LINES_COLUMNS = {
    "line": ("i4", "1"), "kind": ("i1", "0=row, 1=col"), "index": ("i4", "1"),
    "volts": ("f8", "V"), "current": ("f8", "A"), "g": ("f8", "S"), "r": ("f8", "ohm"),
    "compliance": ("?", "1"), "t": ("f8", "s"),
}
VERDICT_COLUMNS = {
    "line": ("i4", "1"), "kind": ("i1", "0=row, 1=col"), "index": ("i4", "1"),
    "status": ("i1", STATUS_CODES),
}
SHORTS_COLUMNS = {
    "kind_a": ("i1", "0=row, 1=col"), "index_a": ("i4", "1"),
    "kind_b": ("i1", "0=row, 1=col"), "index_b": ("i4", "1"),
    "current": ("f8", "A"), "g": ("f8", "S"), "compliance": ("?", "1"), "t": ("f8", "s"),
}
KINDS = ("row", "col")


class BringupError(ProtocolError):
    """The bring-up found open or shorted lines (the report is stored)."""


class BringupConfig(CampaignConfig):
    """`devices`: check only the lines of these devices (default: every line)."""

    v_test: float = Field(0.05, gt=0, le=0.5, description="test level on each line [V]")
    compliance: float = Field(1e-3, gt=0, description="current compliance [A]")
    hold: float = Field(1e-3, ge=0, le=1, description="hold before each measurement [s]")
    nplc: float = Field(1.0, gt=0, le=100, description="integration [power-line cycles]")
    open_below_S: float = Field(10e-6, gt=0, description="a line conducting less is open [S]")
    short_above_S: float = Field(10e-3, gt=0, description="a line conducting more (or reaching "
                                 "the compliance) is shorted [S]")
    weak_fraction: float = Field(0.3, gt=0, lt=1, description="a line below this fraction of "
                                 "the median of its kind is weak")

    def check_limits(self, limits) -> None:
        limits.check_bias(self.v_test, where="bringup v_test")
        limits.check_compliance(self.compliance, where="bringup compliance")


def line_name(kind: int, index: int) -> str:
    return f"{KINDS[kind]} {index}"


def classify(g: np.ndarray, compliance: np.ndarray, kinds: np.ndarray,
             cfg: BringupConfig) -> np.ndarray:
    """Status of each line from its conductance (see the module docstring); weak lines are
    judged against the median of the intact lines of their kind."""
    status = np.full(g.size, OK, dtype=np.int8)
    status[~(g >= cfg.open_below_S)] = OPEN           # NaN (overflow) included
    status[compliance | (g > cfg.short_above_S)] = SHORT
    for kind in (0, 1):
        mine = (kinds == kind) & (status == OK)
        if mine.any():
            median = float(np.median(g[mine]))
            status[mine & (g < cfg.weak_fraction * median)] = WEAK
    return status


def run(rig: CrossbarRig, config: BringupConfig, store, *, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True) -> CampaignResult:
    cfg = config
    rows, cols = rig.shape
    if cfg.devices is None:
        lines: list[Line] = [("row", i) for i in range(rows)] + [("col", j) for j in range(cols)]
    else:
        devs = raster(rig.shape, cfg.devices)
        lines = [("row", i) for i in sorted({r for r, _ in devs})] + \
            [("col", j) for j in sorted({c for _, c in devs})]
    # one unit per line, then one that names the partners of shorted lines; the loop's
    # (row, col) unit labels stand here for (kind, index), the pair test as (-1, -1)
    units = [(KINDS.index(k), i) for k, i in lines] + [(-1, -1)]
    writer = open_store(store, protocol=PROTOCOL, config=cfg, station=station, seed=seed,
                        tables={"lines": LINES_COLUMNS, "verdict": VERDICT_COLUMNS,
                                "shorts": SHORTS_COLUMNS},
                        units_total=len(units), resume=resume, overwrite=overwrite, rig=rig)
    resumed = writer.units_done
    nothing = {t: {k: [] for k in cols} for t, cols in
               (("verdict", VERDICT_COLUMNS), ("shorts", SHORTS_COLUMNS))}

    def measure(levels: dict[Line, list[float]], sense: list[Line], others: str):
        return rig.dc(DcRequest(levels, sense, cfg.compliance, others=others, hold=cfg.hold,
                                nplc=cfg.nplc))

    def work(u: int, unit: tuple[int, int]) -> UnitResult:
        if unit[0] >= 0:
            line = (KINDS[unit[0]], unit[1])
            res = measure({line: [cfg.v_test]}, [line], "ground")
            cur = float(res.current[0, 0])
            g = cur / cfg.v_test if math.isfinite(cur) else math.nan
            row = {"line": [u], "kind": [unit[0]], "index": [unit[1]], "volts": [cfg.v_test],
                   "current": [cur], "g": [g], "r": [1 / g if g > 0 else math.inf],
                   "compliance": [bool(res.compliance[0, 0])], "t": [float(res.t[0, 0])]}
            return UnitResult({"lines": row, **nothing}, 1)
        # every line is measured: classify, then name the partners of the shorted ones
        df = writer.table("lines")
        status = classify(df.g.to_numpy(), df.compliance.to_numpy(bool), df.kind.to_numpy(),
                          cfg)
        short = [(int(k), int(i)) for k, i, s in zip(df.kind, df["index"], status, strict=True)
                 if s == SHORT]
        out = {k: [] for k in SHORTS_COLUMNS}
        for a in range(len(short)):
            for b in range(a + 1, len(short)):
                la, lb = ((KINDS[short[x][0]], short[x][1]) for x in (a, b))
                res = measure({la: [cfg.v_test], lb: [0.0]}, [la], "float")
                cur = float(res.current[0, 0])
                g = cur / cfg.v_test
                if res.compliance[0, 0] or g > cfg.short_above_S:
                    for k, v in zip(SHORTS_COLUMNS, (*short[a], *short[b], cur, g,
                                                     bool(res.compliance[0, 0]),
                                                     float(res.t[0, 0])), strict=True):
                        out[k].append(v)
        verdict = {"line": df.line, "kind": df.kind, "index": df["index"], "status": status}
        return UnitResult({"lines": {k: [] for k in LINES_COLUMNS}, "verdict": verdict,
                           "shorts": out}, len(short) * (len(short) - 1) // 2)

    run_units(title=PROTOCOL, rig=rig, store=writer, units=units, work=work,
              progress=progress, unit="lines",
              label=lambda u: "shorted pairs" if u[0] < 0 else line_name(*u))
    lines_df, shorts = writer.table("lines"), writer.table("shorts")
    summary = summarize(lines_df, writer.table("verdict").status.to_numpy(), shorts)
    writer.finish(summary)
    log.info("%s: %s", PROTOCOL, summary)
    result = CampaignResult(writer.path, writer.run, summary, resumed, writer.already_complete,
                            unit="lines")
    bad = summary.get("opens", []) + summary.get("shorts", [])
    if bad:
        raise BringupError(f"bring-up found bad lines: {'; '.join(bad)} (report in "
                           f"{writer.path}); nothing should be pulsed through this station")
    return result


#: what each entry of the summary is (the named lines listed; conductance stored in S)
SUMMARY = {
    "lines": Metric("lines tested"),
    "ok": Metric("lines intact"),
    "opens": Metric("open lines"),
    "weak": Metric("weak lines"),
    "shorts": Metric("shorted lines"),
    "g_median_S": Metric("median line conductance to the grounded array", "S"),
}


def summarize(lines, status: np.ndarray, shorts) -> dict:
    names = [line_name(k, i) for k, i in zip(lines.kind, lines["index"], strict=True)]
    out = {"lines": len(lines), "ok": int((status == OK).sum()),
           "opens": [f"{n} open" for n, s in zip(names, status, strict=True) if s == OPEN],
           "weak": [f"{n} weak" for n, s in zip(names, status, strict=True) if s == WEAK]}
    paired = {(int(a), int(i)) for a, i in zip(shorts.kind_a, shorts.index_a, strict=True)} | \
        {(int(b), int(j)) for b, j in zip(shorts.kind_b, shorts.index_b, strict=True)}
    out["shorts"] = [f"{line_name(a, i)} shorted to {line_name(b, j)}"
                     for a, i, b, j in zip(shorts.kind_a, shorts.index_a, shorts.kind_b,
                                           shorts.index_b, strict=True)]
    out["shorts"] += [f"{n} shorted (partner not among the lines)" for n, s, k, i in
                      zip(names, status, lines.kind, lines["index"], strict=True)
                      if s == SHORT and (int(k), int(i)) not in paired]
    g = lines.g.to_numpy()
    if np.isfinite(g).any():
        out["g_median_S"] = float(np.nanmedian(g))
    return out
