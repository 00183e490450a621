"""What the figures of a raw run show: one function per protocol, shared by every renderer.

A view function turns a run's attributes and committed tables into plain figure specs in display
units (uS, V, uA, %): maps of the array, x-y plots and histograms. The PNG renderer
(`database.plots.render_png`, matplotlib) and the live view (`xbarlab.live`, Bokeh) both draw
these specs, so the data of a figure is extracted in exactly one place. A new campaign adds its
figures with one function::

    @view("my-campaign")
    def _my_campaign(info: RunInfo, tables: dict[str, pd.DataFrame]) -> RunView: ...

Views only read columns by name (docs/hdf5-schema.md); they never import the protocols. The
device classes of a `status` column are read from its `units` attribute ("0=working, ...").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from database.display import duration
from database.runs import RunInfo

uS = 1e6   # S -> uS
uA = 1e6   # A -> uA
PCT = 100  # fraction -> %


@dataclass
class Series:
    """One line or set of points of a plot; x and y in display units."""

    label: str
    x: np.ndarray
    y: np.ndarray
    style: str = "line"   # "line", "points" or "linepoints"


@dataclass
class Band:
    """A horizontal band (e.g. the write-verify tolerance band), display units."""

    label: str
    low: float
    high: float


@dataclass
class Plot:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    log_x: bool = False   # a logarithmic x axis (times after programming)


@dataclass
class Hist:
    """A histogram with shared bins (counts per label), so every renderer shows the same bars."""

    title: str
    x_label: str
    y_label: str
    edges: np.ndarray
    counts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Map:
    """Values over the array (rows x cols, NaN = not measured). `classes` makes it categorical
    (value code -> class name); `diverging` centres the colours on zero."""

    title: str
    label: str
    values: np.ndarray
    classes: dict[int, str] | None = None
    diverging: bool = False


Panel = Plot | Hist | Map


@dataclass
class Figure:
    """One figure: a row of panels. `name` becomes the PNG file name."""

    name: str
    title: str
    panels: list[Panel]


@dataclass
class RunView:
    """Everything shown of one run.

    conductance: the array's latest conductance map (first panel of the live view);
    trace: the latest committed device's pulse/read trace against its band (None when the run
    stores no per-pulse history); figures: the campaign's own figures (PNG files, live view);
    facts: labelled summary figures ("working: 62 of 64 devices (96.9 %)"); unit: what a unit
    of work is called.
    """

    conductance: Map | None
    trace: Plot | None
    figures: list[Figure]
    facts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unit: str = "devices"


ViewFn = Callable[[RunInfo, dict[str, pd.DataFrame]], RunView]
VIEWS: dict[str, ViewFn] = {}


def view(protocol: str) -> Callable[[ViewFn], ViewFn]:
    """Register the view function of a protocol."""

    def deco(fn: ViewFn) -> ViewFn:
        VIEWS[protocol] = fn
        return fn

    return deco


def run_view(info: RunInfo, tables: dict[str, pd.DataFrame]) -> RunView:
    """The view of a run; a protocol without one gets its tables listed and no figures."""
    fn = VIEWS.get(info.protocol)
    if fn is None:
        rows = ", ".join(f"{t}: {len(df)} rows" for t, df in tables.items())
        return RunView(None, None, [], notes=[f"no figures for protocol {info.protocol!r} "
                                              f"in this xbarlab ({rows})"])
    return fn(info, tables)


def unit_counts(info: RunInfo) -> tuple[int, int]:
    """(units done, units in total) of a run."""
    return int(info.units_done), int(info.units_total)


# -- shared pieces ---------------------------------------------------------------------------

def class_names(df: pd.DataFrame, column: str = "status") -> dict[int, str]:
    """Class codes of a column from its units attribute ("0=working, 1=stuck-HRS, ...")."""
    text = df.attrs.get("units", {}).get(column, "")
    return {int(k): v.strip() for k, v in re.findall(r"(-?\d+)\s*=\s*([^,]+)", text)}


def array_shape(info: RunInfo, *frames: pd.DataFrame) -> tuple[int, int]:
    """The crossbar's shape: the station's, else the largest row/col seen."""
    shape = info.station.get("shape") if isinstance(info.station, dict) else None
    if shape and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    rows = cols = 1
    for df in frames:
        if len(df) and "row" in df and "col" in df:
            rows = max(rows, int(df.row.max()) + 1)
            cols = max(cols, int(df.col.max()) + 1)
    return rows, cols


def grid(shape: tuple[int, int], row, col, values) -> np.ndarray:
    """A rows x cols array holding `values` at (row, col), NaN elsewhere (later values win)."""
    out = np.full(shape, np.nan)
    r, c = np.asarray(row, int), np.asarray(col, int)
    ok = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    out[r[ok], c[ok]] = np.asarray(values, float)[ok]
    return out


def histogram(title: str, x_label: str, y_label: str, data: dict[str, np.ndarray]) -> Hist:
    """Counts of each data set in shared bins (about sqrt(n) of them, 5 to 40)."""
    finite = {k: np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for k, v in data.items()}
    allv = np.concatenate([v for v in finite.values()] or [np.zeros(0)])
    bins = int(np.clip(np.sqrt(max(len(v) for v in finite.values()) if finite else 0), 5, 40))
    if allv.size == 0:
        edges = np.linspace(0.0, 1.0, 2)
    else:
        lo, hi = float(allv.min()), float(allv.max())
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    return Hist(title, x_label, y_label, edges,
                {k: np.histogram(v, edges)[0] for k, v in finite.items()})


def pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f} %" if total else "-"


def tolerance(config: dict, *path: str) -> float | None:
    """A write-verify tolerance (fraction) from a nested run config, if present."""
    d = config
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return float(d) if isinstance(d, int | float) else None


def tuning_trace(hist: pd.DataFrame | None, tuning: int, target: float, tol: float | None,
                 what: str) -> Plot | None:
    """One tuning's reads (uS) by operation, against its tolerance band."""
    if hist is None or len(hist) == 0:
        return None
    h = hist[(hist.tuning == tuning) & (hist.phase == 1)] if "phase" in hist else \
        hist[hist.tuning == tuning]
    if len(h) == 0:
        return None
    n = np.arange(1, len(h) + 1)
    after_pulse = h.kind.to_numpy() == 1
    plot = Plot(f"{what}: {len(h)} operations, {int(after_pulse.sum())} pulses",
                "operation (pulse + read, or read)", "conductance (uS)")
    plot.series.append(Series("read", n, h.g.to_numpy() * uS, "line"))
    plot.series.append(Series("read after a pulse", n[after_pulse],
                              h.g.to_numpy()[after_pulse] * uS, "points"))
    plot.series.append(Series("verify read", n[~after_pulse], h.g.to_numpy()[~after_pulse] * uS,
                              "points"))
    if tol is not None:
        plot.bands.append(Band(f"target {target * uS:.1f} uS +- {tol * PCT:g} %",
                               target * (1 - tol) * uS, target * (1 + tol) * uS))
    return plot


def no_history_note(config: dict, key: str = "record_history") -> str:
    return (f"no pulse-by-pulse trace: this run did not store its pulses and reads "
            f"({key}: {str(bool(config.get(key, False))).lower()})")


# -- campaigns -------------------------------------------------------------------------------

@view("disturbance")
def _disturbance(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    dev, smp, hist = t["devices"], t["samples"], t.get("history")
    shape = array_shape(info, dev)
    names = class_names(dev)
    tol = tolerance(info.config, "tune", "tolerance")
    g_ref = grid(shape, dev.row, dev.col, dev.g_ref * uS)
    g_now = g_ref.copy()
    delta = np.full(shape, np.nan)
    facts, trace, notes = [], None, []
    if len(dev):
        last = int(dev.device.max())
        cur = smp[smp["after"] == last]
        g_now = grid(shape, np.r_[cur.row, dev.row.iloc[-1]], np.r_[cur.col, dev.col.iloc[-1]],
                     np.r_[cur.g, dev.g_ref.iloc[-1]] * uS)
        keep = cur[~cur.excluded]
        delta = grid(shape, keep.row, keep.col, keep.delta * uS)
        row = dev[dev.device == last].iloc[0]
        trace = tuning_trace(hist, last, float(row.target), tol,
                             f"device ({int(row.row)},{int(row.col)})")
        if hist is None:
            notes.append(no_history_note(info.config))
    ok = smp[~smp.excluded]
    ks = np.sort(ok.k.unique())
    by_k = Plot("change of earlier devices by k (samples not flagged)",
                "k = devices programmed after the device", "conductance change (uS)")
    if len(ok):
        grp = ok.groupby("k").delta
        by_k.series += [
            Series("sample", ok.k.to_numpy(), ok.delta.to_numpy() * uS, "points"),
            Series("mean", ks, grp.mean().reindex(ks).to_numpy() * uS, "linepoints"),
            Series("1st percentile", ks, grp.quantile(0.01).reindex(ks).to_numpy() * uS, "line"),
            Series("99th percentile", ks, grp.quantile(0.99).reindex(ks).to_numpy() * uS, "line")]
    status = Map("device class", "class", grid(shape, dev.row, dev.col, dev.status), names)
    conv = dev[dev.converged]
    err = histogram("write-verify error of each device", "final error (% of target)",
                    "devices", {"converged": (conv.g_final - conv.target) / conv.target * PCT})
    pulses = histogram("pulses per device", "pulses", "devices", {"all": dev.pulses})
    figures = [
        Figure("by-k", "V/3 disturbance by k", [by_k]),
        Figure("by-position", "V/3 disturbance by position",
               [Map("latest change of each device (uS, flagged devices blank)", "change (uS)",
                    delta, diverging=True), status]),
        Figure("conductance", "conductance before / after the rest of the array was programmed",
               [Map("right after its own tuning (uS)", "conductance (uS)", g_ref),
                Map("latest read (uS)", "conductance (uS)", g_now)]),
        Figure("tuning", "write-verify of each device", [err, pulses]),
    ]
    n = len(dev)
    flagged = int((dev.status != 0).sum())
    facts += [f"devices programmed: {n}", f"flagged (stuck or failed): {flagged} ({pct(flagged, n)})",
              f"disturbance samples: {len(ok)} (k up to {int(ks.max()) if ks.size else 0})"]
    if len(ok):
        facts += [f"mean change: {ok.delta.mean() * uS:+.2f} uS",
                  f"1st percentile of change: {np.percentile(ok.delta, 1) * uS:+.2f} uS"]
    cond = Map("latest conductance (uS)", "conductance (uS)", g_now)
    return RunView(cond, trace, figures, facts, notes)


@view("stuck")
def _stuck(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    dev = t["devices"]
    shape = array_shape(info, dev)
    names = class_names(dev)

    def m(col: str, title: str) -> Map:
        return Map(title, "conductance (uS)", grid(shape, dev.row, dev.col, dev[col] * uS))

    status = Map("stuck / working", "class", grid(shape, dev.row, dev.col, dev.status), names)
    dist = histogram("conductances", "conductance (uS)", "devices",
                     {"initial": dev.g_initial * uS, "after the RESET test": dev.g_after_reset * uS})
    figures = [Figure("status", "stuck / working map", [status, dist]),
               Figure("conductance", "conductance before / during / after the screening",
                      [m("g_initial", "initial read (uS)"),
                       m("g_after_set", "highest read in the SET test (uS)"),
                       m("g_after_reset", "after the RESET test (uS)")])]
    n = len(dev)
    facts = [f"devices screened: {n}"]
    for code, name in sorted(names.items()):
        k = int((dev.status == code).sum())
        if k or code in (0, 1, 2):
            facts.append(f"{name}: {k} ({pct(k, n)})")
    clipped = int(dev.initial_clipped.sum() + dev.final_clipped.sum())
    if clipped:
        facts.append(f"reads at the range ceiling (clipped): {clipped}")
    notes = ["no pulse-by-pulse trace: the screening stores one row per device"]
    return RunView(m("g_after_reset", "after the RESET test (uS)"), None, figures, facts, notes)


@view("tuning-untuning")
def _tuning_untuning(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    tun, hist = t["tunings"], t.get("history")
    shape = array_shape(info, tun)
    tol = tolerance(info.config, "tune", "tolerance")
    last = tun.groupby("device").tail(1)
    cond = Map("latest settled read (uS)", "conductance (uS)",
               grid(shape, last.row, last.col, last.g_settled * uS))
    trace, notes = None, []
    if len(tun):
        tix = len(tun) - 1  # tuning index = row of the tunings table (docs/hdf5-schema.md)
        row = tun.iloc[tix]
        trace = tuning_trace(hist, tix, float(row.target), tol,
                             f"device {int(row.device)}, level {row.target * uS:.0f} uS, "
                             f"repeat {int(row['repeat'])}")
        if hist is None:
            notes.append(no_history_note(info.config))
    ok = tun[tun.converged]
    err_settled = (ok.g_settled - ok.target) / ok.target * PCT
    err_final = (ok.g_final - ok.target) / ok.target * PCT
    hist_err = histogram("error of converged tunings", "error (% of target)", "tunings",
                         {"settled read": err_settled, "in-band reads (mean)": err_final})
    by_level = Plot("error by level (settled read)", "target (uS)", "error (% of target)")
    if len(ok):
        g = err_settled.groupby(ok.target)
        lv = np.array(sorted(ok.target.unique()))
        by_level.series += [Series("mean", lv * uS, g.mean().reindex(lv).to_numpy(), "linepoints"),
                            Series("std", lv * uS, g.std().reindex(lv).fillna(0).to_numpy(),
                                   "linepoints")]
    panels: list[Panel] = [hist_err, by_level]
    traces = Plot("tuning traces (latest repeat of each level)", "operation",
                  "error (% of target)")
    if hist is not None and len(hist) and len(tun):
        for _, r in tun.groupby("level").tail(1).iterrows():
            h = hist[(hist.tuning == r.name) & (hist.phase == 1)]
            traces.series.append(Series(f"{r.target * uS:.0f} uS", np.arange(1, len(h) + 1),
                                        (h.g.to_numpy() - r.target) / r.target * PCT, "line"))
        if tol is not None:
            traces.bands.append(Band(f"+- {tol * PCT:g} % band", -tol * PCT, tol * PCT))
        panels.insert(0, traces)
    pulses = histogram("pulses per tuning", "pulses", "tunings", {"all": tun.pulses})
    figures = [Figure("tuning", "write-verify tuning", panels),
               Figure("pulses", "pulses per tuning", [pulses])]
    n = len(tun)
    failed = int((~tun.converged).sum())
    facts = [f"tunings: {n} on {tun.device.nunique() if n else 0} devices",
             f"failed tunings: {failed} ({pct(failed, n)})"]
    if len(ok) > 1:
        facts += [f"settled error: mean {err_settled.mean():+.2f} %, std {err_settled.std():.2f} % "
                  "of target"]
    if n:
        facts.append(f"pulses per tuning: median {np.median(tun.pulses):.0f}")
    # runs written before a unit was one tuning committed a device (all its tunings) per unit
    unit = "tunings" if info.rows.get("tunings", 0) == info.units_done else "devices"
    return RunView(cond, trace, figures, facts, notes, unit=unit)


@view("iv-pulsed")
def _iv_pulsed(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    pts = t["points"]
    shape = array_shape(info, pts)
    last = pts.groupby("device").tail(1)
    cond = Map("latest read (uS)", "conductance (uS)", grid(shape, last.row, last.col, last.g * uS))
    loops_i = Plot("I-V loops (read current after each step)", "step voltage (V)",
                   "read current (uA)")
    loops_g = Plot("conductance after each step", "step voltage (V)", "conductance (uS)")
    trace = None
    keys = list(pts.groupby(["device", "cycle"]).groups)[-12:]  # the latest 12 loops
    for d, c in keys:
        p = pts[(pts.device == d) & (pts.cycle == c)]
        where = f"({int(p.row.iloc[0])},{int(p.col.iloc[0])})"
        label = f"{where} cycle {c}"
        loops_i.series.append(Series(label, p.volts.to_numpy(), p.i_read.to_numpy() * uA))
        loops_g.series.append(Series(label, p.volts.to_numpy(), p.g.to_numpy() * uS))
    if keys:
        d, c = keys[-1]
        p = pts[(pts.device == d) & (pts.cycle == c)]
        trace = Plot(f"latest sweep: device ({int(p.row.iloc[0])},{int(p.col.iloc[0])}), "
                     f"cycle {c}", "step", "conductance (uS)",
                     [Series("read after step", np.arange(1, len(p) + 1), p.g.to_numpy() * uS,
                             "linepoints")])
    figures = [Figure("loops", "pulsed I-V loops (remanent state)", [loops_i, loops_g])]
    facts = [f"devices swept: {pts.device.nunique()}", f"points: {len(pts)}"]
    if len(pts):
        facts.append(f"conductance range: {pts.g.min() * uS:.1f} to {pts.g.max() * uS:.1f} uS")
    notes = [] if len(keys) == pts.groupby(["device", "cycle"]).ngroups else \
        ["showing the latest 12 loops"]
    return RunView(cond, trace, figures, facts, notes, unit="sweeps")


@view("iv")
def _iv(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    if "cycles" not in t:  # a file of the pulsed staircase from before it was renamed
        return _iv_pulsed(info, t)
    pts, cyc, dev = t["points"], t["cycles"], t["devices"]
    shape = array_shape(info, pts)
    last = cyc.groupby("device").tail(1)
    cond = Map("latest ON state at the read voltage (uS)", "conductance (uS)",
               grid(shape, last.row, last.col, last.g_on * uS))
    loops = Plot("I-V loops (current during the DC bias)", "voltage (V)", "current (uA)")
    g_loops = Plot("conductance I/V along the loops", "voltage (V)", "I/V (uS)")
    keys = list(pts.groupby(["device", "cycle"]).groups)[-12:]  # the latest 12 loops
    trace = None
    for d, c in keys:
        p = pts[(pts.device == d) & (pts.cycle == c)]
        label = f"({int(p.row.iloc[0])},{int(p.col.iloc[0])}) cycle {c}"
        v, i = p.volts.to_numpy(), p.current.to_numpy()
        loops.series.append(Series(label, v, i * uA))
        with np.errstate(divide="ignore", invalid="ignore"):
            g_loops.series.append(Series(label, v, np.where(v != 0, i / v, np.nan) * uS))
    if keys:
        d, c = keys[-1]
        p = pts[(pts.device == d) & (pts.cycle == c)]
        clipped = p[p.compliance]
        trace = Plot(f"latest sweep: device ({int(p.row.iloc[0])},{int(p.col.iloc[0])}), "
                     f"cycle {c}", "voltage (V)", "current (uA)",
                     [Series("current", p.volts.to_numpy(), p.current.to_numpy() * uA,
                             "linepoints"),
                      Series("at compliance", clipped.volts.to_numpy(),
                             clipped.current.to_numpy() * uA, "points")])
    volts = histogram("switching voltages of every cycle", "voltage (V)", "cycles",
                      {"SET": cyc.v_set, "RESET": cyc.v_reset})
    ratio = histogram("ON/OFF at the read voltage", "ON/OFF", "cycles", {"all": cyc.on_off})
    switched = Map("cycles that switched", "cycles",
                   grid(shape, dev.row, dev.col, dev.cycles_switched))
    figures = [Figure("loops", "DC I-V loops", [loops, g_loops]),
               Figure("switching", "switching voltages and ON/OFF", [volts, ratio, switched])]
    n = len(dev)
    never = int(dev.never_switched.sum()) if n else 0
    facts = [f"devices swept: {n}, cycles: {len(cyc)}",
             f"devices that never switched: {never} ({pct(never, n)})"]
    for key, what in (("v_set", "SET voltage"), ("v_reset", "RESET voltage")):
        x = cyc[key].dropna()
        if len(x):
            facts.append(f"{what}: median {x.median():+.2f} V ({x.min():+.2f} to "
                         f"{x.max():+.2f} V, {len(x)} cycles)")
    r = cyc.on_off.dropna()
    if len(r):
        facts.append(f"ON/OFF at the read voltage: median {r.median():.2f}")
    notes = [] if len(keys) == pts.groupby(["device", "cycle"]).ngroups else \
        ["showing the latest 12 loops"]
    return RunView(cond, trace, figures, facts, notes, unit="devices")


@view("bringup")
def _bringup(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    lines, verdict, shorts = t["lines"], t["verdict"], t["shorts"]
    shape = array_shape(info)
    names = class_names(verdict)
    status = {(int(k), int(i)): int(s) for k, i, s in
              zip(verdict.kind, verdict["index"], verdict.status, strict=True)}
    # severity for the map: a device shows the worse of its two lines
    rank = {0: 0, 3: 1, 1: 2, 2: 3}
    worst = np.full(shape, np.nan)
    if status:
        for i in range(shape[0]):
            for j in range(shape[1]):
                a, b = status.get((0, i), 0), status.get((1, j), 0)
                worst[i, j] = a if rank.get(a, 0) >= rank.get(b, 0) else b
    by_line = Plot("conductance of each line to the grounded array", "line index",
                   "conductance (uS)")
    for kind, label in ((0, "word lines (rows)"), (1, "bit lines (columns)")):
        x = lines[lines.kind == kind]
        by_line.series.append(Series(label, x["index"].to_numpy(), x.g.to_numpy() * uS,
                                     "linepoints"))
    figures = [Figure("map", "bring-up: line status over the array",
                      [Map("status (a device shows its worse line)", "status", worst, names),
                       by_line])]
    facts = [f"lines checked: {len(lines)} of {shape[0] + shape[1]}"]
    if len(verdict):
        for code, name in sorted(names.items()):
            k = int((verdict.status == code).sum())
            if k:
                facts.append(f"{name}: {k}")
    kinds = ("row", "col")
    for a, i, b, j in zip(shorts.kind_a, shorts.index_a, shorts.kind_b, shorts.index_b,
                          strict=True):
        facts.append(f"short: {kinds[a]} {i} - {kinds[b]} {j}")
    if len(lines):
        facts.append(f"line conductance: median {lines.g.median() * uS:.1f} uS at "
                     f"{lines.volts.iloc[0] * 1e3:.0f} mV")
    notes = [] if len(verdict) else ["no verdict yet: every line is measured first"]
    return RunView(None, None, figures, facts, notes, unit="lines")


@view("forming")
def _forming(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    ramps, dev = t["ramps"], t["devices"]
    shape = array_shape(info, dev)
    names = class_names(dev)
    cond = Map("after forming (uS)", "conductance (uS)",
               grid(shape, dev.row, dev.col, dev.g_after * uS))
    status = Map("forming status", "status", grid(shape, dev.row, dev.col, dev.status), names)
    curves = Plot("forming ramps (latest 12 devices)", "voltage (V)", "current (uA)")
    for d in list(ramps.device.unique())[-12:]:
        r = ramps[ramps.device == d]
        curves.series.append(Series(f"({int(r.row.iloc[0])},{int(r.col.iloc[0])})",
                                    r.volts.to_numpy(), r.current.to_numpy() * uA,
                                    "linepoints"))
    vf = histogram("forming voltages", "voltage (V)", "devices", {"formed": dev.v_form})
    figures = [Figure("forming", "electroforming", [status, curves, vf])]
    n = len(dev)
    facts = [f"devices: {n}"]
    for code, name in sorted(names.items()):
        facts.append(f"{name}: {int((dev.status == code).sum())}")
    x = dev.v_form.dropna()
    if len(x):
        facts.append(f"forming voltage: median {x.median():.2f} V ({x.min():.2f} to "
                     f"{x.max():.2f} V)")
    return RunView(cond, None, figures, facts, [], unit="devices")


@view("transfer")
def _transfer(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    dev, rb, inf, hist = t["devices"], t["readback"], t["inference"], t.get("history")
    shape = array_shape(info, dev)
    tol = tolerance(info.config, "transfer", "tune", "tolerance")
    crossbars = info.config.get("crossbars", [])
    figures, notes, trace, cond = [], [], None, None
    err_maps = []
    for tile in sorted(dev.tile.unique()):
        d, r = dev[dev.tile == tile], rb[rb.tile == tile]
        name = crossbars[tile] if tile < len(crossbars) else f"tile {tile}"
        target = Map(f"{name}: target (uS)", "conductance (uS)", grid(shape, d.row, d.col,
                                                                     d.target * uS))
        tuned = Map(f"{name}: after its write-verify (uS)", "conductance (uS)",
                    grid(shape, d.row, d.col, d.g_final * uS))
        panels: list[Panel] = [target, tuned]
        if len(r):
            panels.append(Map(f"{name}: read back (uS)", "conductance (uS)",
                              grid(shape, r.row, r.col, r.g * uS)))
            err_maps.append(Map(f"{name}: read-back error (% of target)", "error (%)",
                                grid(shape, r.row, r.col, (r.g - r.target) / r.target * PCT),
                                diverging=True))
        figures.append(Figure(f"tile{tile}", f"tile {tile} on {name}", panels))
        cond = panels[-1]  # the latest tile: read back if it is, else as tuned
    if len(rb):
        err = histogram("read-back error", "error (% of target)", "devices",
                        {"read back": (rb.g - rb.target) / rb.target * PCT})
        figures.insert(0, Figure("readback-error", "read-back error", [*err_maps, err]))
    if len(dev):
        last = dev.iloc[-1]
        trace = tuning_trace(hist, int(last.device), float(last.target), tol,
                             f"device {int(last.device)} (tile {int(last.tile)}, "
                             f"({int(last.row)},{int(last.col)}))")
        if hist is None:
            notes.append(no_history_note(info.config.get("transfer", {})))
    n = len(dev)
    failed = int((~dev.converged).sum()) if n else 0
    facts = [f"devices programmed: {n}", f"failed tunings: {failed} ({pct(failed, n)})"]
    if len(rb):
        e = (rb.g - rb.target) / rb.target * PCT
        facts.append(f"read-back error: mean {e.mean():+.2f} %, std "
                     f"{e.std() if len(e) > 1 else 0.0:.2f} % of target")
    if len(inf):
        acc = float((inf.predicted == inf.label).mean()) * PCT
        sw = float((inf.predicted_target == inf.label).mean()) * PCT
        facts.append(f"test accuracy: {acc:.1f} % on the crossbar, {sw:.1f} % in software "
                     f"({len(inf)} points)")
    return RunView(cond, trace, figures, facts, notes)


@view("retention")
def _retention(info: RunInfo, t: dict[str, pd.DataFrame]) -> RunView:
    prog, reads = t["programming"], t["reads"]
    shape = array_shape(info, prog)
    threshold = info.config.get("up_threshold", 0.05)
    n_sched = int(info.config.get("reads", 0))
    last = reads[reads["read"] == reads["read"].max()] if len(reads) else reads
    facts, notes = [], []
    levels = sorted(prog.target.unique())
    facts.append(f"devices programmed: {len(prog)} ({int(prog.converged.sum())} converged), "
                 "levels " + ", ".join(f"{lv * uS:.0f}" for lv in levels) + " uS")
    curves = Plot("retention curves: mean drift by level", "time since programming (s)",
                  "drift (% of the programmed conductance)", log_x=True)
    spread = Plot("every device", "time since programming (s)",
                  "drift (% of the programmed conductance)", log_x=True)
    by_level = Plot("conductance by level (mean)", "time since programming (s)",
                    "conductance (uS)", log_x=True)
    for lv in levels:
        r = reads[reads.target == lv]
        if not len(r):
            continue
        g = r.groupby("read")
        name = f"{lv * uS:.0f} uS"
        curves.series.append(Series(name, g.age.median().to_numpy(),
                                    g.drift_rel.mean().to_numpy() * PCT, "linepoints"))
        spread.series.append(Series(name, r.age.to_numpy(), r.drift_rel.to_numpy() * PCT,
                                    "points"))
        by_level.series.append(Series(name, g.age.median().to_numpy(),
                                      g.g.mean().to_numpy() * uS, "linepoints"))
    figures = [Figure("curves", "retention curves", [curves, spread])]
    cond = Map("programmed conductance (uS)", "conductance (uS)",
               grid(shape, prog.row, prog.col, prog.g_final * uS))
    if len(last):
        when = duration(float(last.t_actual.median()))
        dist = histogram(f"drift at the latest read ({when} after programming)",
                         "drift (% of the programmed conductance)", "devices",
                         {f"{lv * uS:.0f} uS": last.drift_rel[last.target == lv] * PCT
                          for lv in levels})
        figures.append(Figure("drift", "drift distribution at the latest read",
                              [dist, Map(f"drift at the latest read ({when}), %", "drift (%)",
                                         grid(shape, last.row, last.col, last.drift_rel * PCT),
                                         diverging=True)]))
        cond = Map(f"latest read, {when} after programming (uS)", "conductance (uS)",
                   grid(shape, last.row, last.col, last.g * uS))
        k = int(last["read"].iloc[0])
        facts.append(f"reads: {k + 1} of {n_sched} done, the latest {when} after programming "
                     f"(scheduled {duration(float(last.t_scheduled.iloc[0]))})")
        for lv in levels:
            d = last.drift_rel[last.target == lv]
            if len(d):
                facts.append(f"drift at {lv * uS:.0f} uS: mean {d.mean() * PCT:+.2f} %, std "
                             f"{(d.std() if len(d) > 1 else 0.0) * PCT:.2f} %")
        up = int((last.drift_rel > threshold).sum())
        facts.append(f"drifting up (more than +{threshold * PCT:g} %): {up} of {len(last)} "
                     f"devices ({pct(up, len(last))})")
        clipped = int(reads.clipped.sum())
        if clipped:
            facts.append(f"reads at the range ceiling (clipped): {clipped}")
    else:
        notes.append("no scheduled read yet: programming")
    notes.append("no pulse-by-pulse trace: the campaign stores one row per programming and "
                 "per device read")
    return RunView(cond, by_level, figures, facts, notes, unit="steps")
