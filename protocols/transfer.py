"""Program a trained network onto crossbars: the ex-situ transfer, measured.

Input is a :class:`protocols.plan.ConductancePlan` (plain numpy; no torch needed here): per
device its target conductance, its tile, its (row, col) position in the tile and its place in
the programming order, exactly as the hardware-aware training assumed (training.tiles). Each
tile goes onto its own crossbar (``crossbars[t]``, position (0, 0) of the tile at device (0, 0)
of the crossbar), so the disturbance a device sees comes only from the devices programmed after
it in its own tile: the assumption behind the disturbance key k.

Per tile: open the rig (``with rig:``, so any error or Ctrl-C leaves it safe), program the
tile's devices one by one in the plan's order with the write-verify `tune`, optionally let
``settle_s`` of instrument time pass, then read the whole crossbar back (``read_array``) and keep
the tile's devices. When the last tile is read back and test data were given, the network is
evaluated from the read-back conductances (`protocols.plan.plan_forward`: conductances read
back and multiplied).

Re-verify (``TransferConfig.reverify``, off by default). Each pulse of the V/3 write puts V/3
on every device of its tile, so devices programmed later move the ones programmed before them
(on the calibrated simulator the slow fluctuators of the disturbed devices switch under that
stress). With ``reverify.passes`` > 0, after the tile's read-back the devices whose read-back
error exceeds ``reverify.threshold`` of their target are tuned again, largest error (in S: the
largest weight error) first, the tile read back again, and so on for at most ``passes`` passes
and at most ``reverify.budget`` times the tile's programming pulses (`reverify`). Devices whose
tuning failed are not retried. Off is the paper's transfer, the one the disturbance key k, the
hardware-aware training and the Monte-Carlo prediction model; a transfer with re-verify is
better than that prediction by design, so compare it with the prediction only as such.

Storage (database.runs, protocol "transfer"): the plan itself is part of the run config (JSON),
and the tables are

- ``devices``   one row per programmed device: plan fields, tuning outcome and statistics
  (``pulses_cut``: its attempts cut off by an interruption on hardware, at their cap);
- ``readback``  one row per device: the read-back conductance after its tile was finished;
- ``inference`` one row per test point: label, predicted class from the read-back conductances
  and from the targets (the software network), the network output;
- ``reverify``  one row per re-verify tuning (only with ``reverify.passes`` > 0): pass, device,
  the read-back that triggered it, the outcome and pulses;
- ``history``   every pulse and read (only with ``record_history``).

Each device is one commit, so a killed transfer resumes at the device it was programming. A
simulated chip is restored to its committed state and the resumed run is identical to an
uninterrupted one. On hardware the devices stay as the interrupted run left them, and a tile's
re-verify belongs to the unit of its last device, so a kill during it would lose measured
tunings and leave pulses uncounted. There (``rig.restorable`` False) every tuning is written
ahead to ``<store>.<run>.tunings`` (`protocols.ledger`): the resumed unit keeps the last
device's programming as it was measured (not programmed again) and the re-verify tunings that
ended, books one cut off at its pulse cap (as failed; its pulses are unknown, the device may be
re-tuned), and resumes the re-verify pass it was in with what is left of the tile's budget,
from a fresh read-back. A programming cut off mid-way is done again from where the device
is, and the cut attempt is booked in the device's row at its pulse cap (``pulses_cut``;
every attempt, where it was cut off more than once) and counted in ``pulses_total``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from database.display import Metric
from database.runs import RunWriter, list_runs, read_table
from protocols import interrupts
from protocols.campaigns._loop import commit_state, restore_progress
from protocols.campaigns.common import HISTORY_COLUMNS, concat, history_rows
from protocols.errors import ProtocolError
from protocols.ledger import Ledger, Recovered
from protocols.plan import (
    ConductancePlan,
    check_crossbar,
    check_reads,
    check_verifiable,
    plan_forward,
    plan_logits,
)
from protocols.progress import Bar
from protocols.rig import CrossbarRig, ReadSettings
from protocols.tuning import TuneConfig, tune

log = logging.getLogger("xbarlab.transfer")

PROTOCOL = "transfer"

DEVICES_COLUMNS = {
    "device": ("i4", "1"), "layer": ("i4", "1"), "param": ("i1", "0=weight, 1=bias"),
    "out": ("i4", "1"), "inp": ("i4", "1 (-1 for a bias)"), "sign": ("i1", "0=G+, 1=G-"),
    "tile": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"), "k": ("i4", "1"),
    "target": ("f8", "S"), "converged": ("?", "1"), "gave_up": ("?", "1"),
    "pulses": ("i4", "1"), "set_pulses": ("i4", "1"), "reset_pulses": ("i4", "1"),
    "g_initial": ("f8", "S"), "g_final": ("f8", "S"), "t_start": ("f8", "s"),
    "t_end": ("f8", "s"),
    "pulses_cut": ("i4", "1 (earlier programmings of the device cut off by an interruption on "
                   "hardware, booked at their pulse cap: at most this many reached it)"),
}
READBACK_COLUMNS = {
    "device": ("i4", "1"), "tile": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"),
    "target": ("f8", "S"), "g": ("f8", "S"), "t": ("f8", "s"), "t_end": ("f8", "s"),
}
INFERENCE_COLUMNS = {
    "point": ("i4", "1"), "label": ("i8", "1"), "predicted": ("i8", "1"),
    "predicted_target": ("i8", "1"), "output": ("f8", "1"),
}


REVERIFY_COLUMNS = {
    "tile": ("i4", "1"), "pass": ("i4", "1 (1 = the first re-verify pass)"),
    "device": ("i4", "1"), "target": ("f8", "S"), "g_read": ("f8", "S"),
    "converged": ("?", "1"), "pulses": ("i4", "1"), "cap": ("i4", "1"),
    "g_final": ("f8", "S"), "t_start": ("f8", "s"), "t_end": ("f8", "s"),
}


class ReverifyConfig(BaseModel):
    """The settle/re-verify passes after each tile (module docstring). passes = 0: off, the
    paper's transfer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    passes: int = Field(0, ge=0, le=20, description="read-back/re-tune passes per tile at most "
                        "(0: off, the paper's transfer)")
    threshold: float = Field(0.2, gt=0, lt=1, description="re-tune a device whose read-back "
                             "error exceeds this fraction of its target (0.2: the outliers; "
                             "lower re-tunes half the tile, and each re-tuning disturbs it "
                             "again: docs/chip-in-the-loop.md)")
    budget: float = Field(0.5, ge=0, le=10, description="re-verify pulses of a tile at most "
                          "this share of the tile's programming pulses")
    max_pulses: int = Field(60, ge=1, description="pulse cap of one re-verify tuning")
    min_cap: int = Field(10, ge=1, description="a re-verify tuning whose cap (the budget "
                         "left) would fall below this is not started")


class TransferConfig(BaseModel):
    """How the plan is programmed. Defaults: the lab's write-verify settings."""

    model_config = ConfigDict(extra="forbid")

    tune: TuneConfig = Field(default_factory=TuneConfig, description="write-verify settings")
    settle_s: float = Field(0.0, ge=0, le=3600, description="instrument time between the "
                            "last device of a tile and its read-back [s] (at most an hour)")
    record_history: bool = Field(False, description="store every pulse and read")
    reverify: ReverifyConfig = Field(default_factory=ReverifyConfig,
                                     description="re-verify passes after each tile")


@dataclass
class TransferResult:
    path: Path
    run: str
    summary: dict
    resumed_from: int
    plan: ConductancePlan
    g_read: np.ndarray  # (n_devices,) read-back conductances [S] in plan order
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def data_digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _tables(cfg: TransferConfig) -> dict:
    t = {"devices": DEVICES_COLUMNS, "readback": READBACK_COLUMNS, "inference": INFERENCE_COLUMNS}
    if cfg.reverify.passes:
        t["reverify"] = REVERIFY_COLUMNS
    if cfg.record_history:
        t["history"] = HISTORY_COLUMNS
    return t


def run(plan: ConductancePlan, open_rig: Callable[[str], CrossbarRig],
        crossbars: Sequence[str], store, *, read: ReadSettings,
        config: TransferConfig | None = None,
        test_data: tuple[np.ndarray, np.ndarray] | None = None, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True,
        on_tile: Callable[[int, str], None] | None = None) -> TransferResult:
    """Program `plan` tile by tile (tile t onto crossbar ``crossbars[t]``) and read it back.

    `read`: the station's read settings (its rigs'): every target is checked against them before
    the store is opened (`check_verifiable`), so a plan the station cannot verify is refused
    whole instead of failing partway. open_rig(name) returns an (unentered) CrossbarRig on
    crossbar `name`; on_tile(t, name) is
    called before each tile (e.g. to ask an operator to move the probes). The rigs of one
    station share what lies behind them, so the state saved with each device through one
    tile's rig (a simulated chip: every crossbar and the clock) is restored on a resume through
    the rig of the tile it resumes in.
    """
    cfg = config or TransferConfig()
    crossbars = [str(c) for c in crossbars]
    if len(crossbars) != plan.n_tiles:
        raise ProtocolError(f"the plan has {plan.n_tiles} tiles but {len(crossbars)} crossbars "
                            "were given (one crossbar per tile)")
    if len(set(crossbars)) != len(crossbars):
        raise ProtocolError("a crossbar is named twice: each tile needs a crossbar of its own "
                            "(the training's disturbance model counts devices per tile)")
    check_verifiable(plan, cfg.tune.tolerance, read)
    x = y = None
    if test_data is not None:
        x = np.asarray(test_data[0], float)
        y = np.asarray(test_data[1]).astype(np.int64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != plan.sizes[0] or x.shape[0] != y.size:
            raise ProtocolError(f"test data of shape {x.shape} / {y.shape} do not fit a network "
                                f"with {plan.sizes[0]} inputs")
    run_cfg = {"plan": plan.to_dict(), "crossbars": crossbars,
               "transfer": cfg.model_dump(mode="json"),
               "test_data": None if x is None else {"points": int(y.size), "sha": data_digest(x, y)}}
    writer = RunWriter.open(store, protocol=PROTOCOL, config=run_cfg, station=station or {},
                            seed=seed, tables=_tables(cfg), units_total=plan.n_devices,
                            resume=resume, overwrite=overwrite)
    start = writer.units_done
    g_read = np.full(plan.n_devices, np.nan)
    pulses = np.zeros(plan.n_devices, np.int64)      # programming pulses (re-verify's budget)
    failed = np.zeros(plan.n_devices, bool)          # not retried by re-verify
    if start:
        rb = writer.table("readback")
        g_read[rb.device.to_numpy()] = rb.g.to_numpy()
        dv = writer.table("devices")
        pulses[dv.device.to_numpy()] = dv.pulses.to_numpy()
        failed[dv.device.to_numpy()] = ~dv.converged.to_numpy()

    ledger: Ledger | None = None
    first = True   # the first rig of this session decides: hardware or a restorable simulation
    kept: dict | None = None          # the programming of device `start` (hardware, resumed)
    cut_pulses = 0                    # its earlier attempts cut off on hardware, at their cap
    rv_kept: Recovered | None = None  # and its tile's re-verify tunings
    bar = Bar(f"transfer {plan.n_devices} devices, {plan.n_tiles} tiles", plan.n_devices, start,
              enabled=progress)
    with bar:
        for t in range(plan.n_tiles):
            devs = plan.tile_devices(t)
            todo = devs[devs >= start]
            if todo.size == 0:
                continue
            name = crossbars[t]
            if on_tile is not None:
                on_tile(t, name)
            rig = open_rig(name)
            with rig:
                check_reads(rig, read)
                writer.record_snapshot(rig.snapshot())
                check_crossbar(plan, rig, t, name)
                if todo[0] == start:  # the first tile of this session: resume where it stopped
                    restore_progress("transfer", writer, plan.n_devices, rig)
                if first:
                    first = False
                    if not rig.restorable:
                        ledger = Ledger(writer.path, writer.run)
                        if start:
                            kept, rv_kept, cut_pulses = _recovered(ledger, start, cfg)
                        else:
                            ledger.clear()   # (a file of a run this one overwrote)
                for d in todo:
                    bar.current(f"tile {t} on {name} ({int(plan.row[d])},{int(plan.col[d])})")
                    if kept is not None and d == start:
                        out, kept = kept, None
                    else:
                        out = _program_device(plan, rig, int(d), cfg, ledger,
                                              cut_pulses if d == start else 0)
                    pulses[d] = out["devices"]["pulses"][0]
                    failed[d] = not out["devices"]["converged"][0]
                    if d == devs[-1]:  # the tile is complete: read it back (and re-verify)
                        rig.wait(cfg.settle_s)
                        rv = reverify(rig, plan, devs, cfg.tune, cfg.reverify,
                                      budget=int(cfg.reverify.budget * pulses[devs].sum()),
                                      skip=failed[devs], ledger=ledger, unit=int(d),
                                      resumed=rv_kept if d == start else None)
                        t_read, g_tile = rv.t_read, rv.g
                        g_read[devs] = g_tile
                        if rv.rows["device"]:
                            out["reverify"] = {**rv.rows, "tile": np.full(len(rv.rows["device"]),
                                                                          t, np.int64)}
                        out["readback"] = {"device": devs, "tile": np.full(devs.size, t),
                                           "row": plan.row[devs], "col": plan.col[devs],
                                           "target": plan.target[devs], "g": g_tile,
                                           "t": np.full(devs.size, t_read),
                                           "t_end": np.full(devs.size, float(rig.clock))}
                        if d == plan.n_devices - 1 and x is not None:
                            out["inference"] = _inference(plan, g_read, x, y)
                    writer.commit(int(d), out, commit_state(rig))
                    if ledger is not None:
                        ledger.clear()
                    bar.advance(int(out["devices"]["pulses"][0])
                                + int(np.sum(out.get("reverify", {}).get("pulses", 0))))
    interrupts.check()  # not complete if the last commit lost a Ctrl-C in a finaliser
    tables = {name: writer.table(name) for name in _tables(cfg)}
    summary = summarize(plan, tables)
    writer.finish(summary)  # a run that was already complete is left as it is
    log.info("transfer: %s", summary)
    return TransferResult(writer.path, writer.run, summary, start, plan, g_read, tables)


@dataclass
class Reverified:
    """What `reverify` did to one tile: the read-backs before and after, the re-tunings."""

    g_first: np.ndarray   # the tile's devices read back before any re-verify [S]
    g: np.ndarray         # read back after the last pass (= g_first with none) [S]
    t_read: float         # instrument time when that last read-back began [s]
    passes: int           # passes that re-tuned at least one device
    pulses: int
    rows: dict            # REVERIFY_COLUMNS but "tile": one entry per re-tuning


def reverify(rig: CrossbarRig, plan: ConductancePlan, devs: np.ndarray, tune_cfg: TuneConfig,
             cfg: ReverifyConfig, *, budget: int, skip: np.ndarray | None = None,
             ledger: Ledger | None = None, unit: int = 0,
             resumed: Recovered | None = None) -> Reverified:
    """Read the tile of `devs` (plan devices on `rig`'s crossbar) back and, for at most
    ``cfg.passes`` passes, re-tune the devices whose read-back error exceeds ``cfg.threshold``
    of their target, largest error in S first, then read the tile back again; with passes = 0
    it is the plain read-back. Never more than `budget` pulses: each re-tuning's cap is
    min(cfg.max_pulses, the budget left) and one whose cap falls below ``cfg.min_cap`` is not
    started (the passes end). A device whose tuning failed, here or where `skip` (per device of
    `devs`) says so, is not re-tuned again.

    On hardware, `ledger` gets each re-tuning ahead of its pulses (as unit `unit`), and
    `resumed` is what an interrupted try of this unit did (module docstring): its rows come
    first and count against the budget, and the pass it was in starts again from a read-back
    (``g_first`` is then that read-back)."""
    devs = np.asarray(devs)
    rows_, cols_ = plan.row[devs], plan.col[devs]
    target = plan.target[devs]
    done = np.zeros(devs.size, bool) if skip is None else np.asarray(skip, bool).copy()
    tc = tune_cfg.model_copy(update={"max_pulses": min(tune_cfg.max_pulses, cfg.max_pulses)})
    rec: dict[str, list] = {k: [] for k in REVERIFY_COLUMNS if k != "tile"}
    used, passes, g_first = 0, 0, None
    if resumed is not None:
        where = {int(d): i for i, d in enumerate(devs)}
        cut = [{"pass": x.get("pass", 1), "device": d, "target": tg, "g_read": np.nan,
                "converged": False, "pulses": cap, "cap": cap, "g_final": np.nan,
                "t_start": np.nan, "t_end": np.nan}
               for (d, tg, cap), x in zip(resumed.cut, resumed.cut_extra, strict=True)]
        for row in [*resumed.done, *cut]:
            for k in rec:
                rec[k].append(row[k])
            used += int(row["pulses"])
            passes = max(passes, int(row["pass"]) - 1)   # the pass it was in starts again
        for row in resumed.done:   # (a cut one did not fail, its state is only unknown)
            done[where[int(row["device"])]] |= not row["converged"]
    while True:
        t_read = float(rig.clock)
        g = rig.read_array()[rows_, cols_]
        if g_first is None:
            g_first = g
        err = np.abs(g - target)
        bad = np.flatnonzero((err > cfg.threshold * target) & ~done)
        if passes == cfg.passes or not bad.size or budget - used < cfg.min_cap:
            return Reverified(g_first, g, t_read, passes, used, rec)
        passes += 1
        for i in bad[np.argsort(-err[bad], kind="stable")]:
            cap = min(tc.max_pulses, budget - used)
            if cap < cfg.min_cap:
                break
            if ledger is not None:   # on hardware: written before the pulses
                ledger.reserve(unit, int(devs[i]), float(target[i]), int(cap), kind="reverify",
                               extra={"pass": passes})
            res = tune(rig, int(rows_[i]), int(cols_[i]), float(target[i]),
                       tc.model_copy(update={"max_pulses": int(cap)}))
            used += res.pulses
            done[i] |= not res.converged
            row = {"pass": passes, "device": int(devs[i]), "target": target[i],
                   "g_read": g[i], "converged": res.converged, "pulses": res.pulses,
                   "cap": cap, "g_final": res.g_final, "t_start": res.t_start,
                   "t_end": res.t_end}
            if ledger is not None:
                ledger.done(unit, row, kind="reverify")
            for k, v in row.items():
                rec[k].append(v)


def _program_device(plan: ConductancePlan, rig: CrossbarRig, d: int,
                    cfg: TransferConfig, ledger: Ledger | None = None,
                    cut_pulses: int = 0) -> dict:
    """Program device d; `cut_pulses`: its earlier attempts' pulses (cut off on hardware,
    booked at their cap), kept in its row."""
    r, c = int(plan.row[d]), int(plan.col[d])
    if ledger is not None:   # on hardware: written before the pulses
        ledger.reserve(d, d, float(plan.target[d]), cfg.tune.max_pulses, kind="program")
    res = tune(rig, r, c, float(plan.target[d]), cfg.tune)
    row = {"device": [d], "layer": [plan.layer[d]], "param": [plan.param[d]],
           "out": [plan.out[d]], "inp": [plan.inp[d]], "sign": [plan.sign[d]],
           "tile": [plan.tile[d]], "row": [r], "col": [c], "k": [plan.k[d]],
           "target": [plan.target[d]], "converged": [res.converged], "gave_up": [res.gave_up],
           "pulses": [res.pulses], "set_pulses": [res.set_pulses],
           "reset_pulses": [res.reset_pulses], "g_initial": [res.g_initial],
           "g_final": [res.g_final], "t_start": [res.t_start], "t_end": [res.t_end],
           "pulses_cut": [int(cut_pulses)]}
    out = {"devices": row}
    if cfg.record_history:
        out["history"] = concat([history_rows(res, d, d, 1)], HISTORY_COLUMNS)
    if ledger is not None:
        ledger.done(d, {"device": d, "devices": {k: v[0] for k, v in row.items()},
                        "history": out.get("history")}, kind="program")
    return out


def _recovered(ledger: Ledger, unit: int, cfg: TransferConfig
               ) -> tuple[dict | None, Recovered, int]:
    """What the interrupted unit `unit` did on hardware: the programming of device `unit` if
    it ended (the rows to commit, as `_program_device` made them: its ``pulses_cut`` already
    counts the attempts cut off before it), its tile's re-verify tunings, and, where no
    programming ended, the pulse caps of the attempts cut off (every one: a device killed
    twice in its programming took pulses twice)."""
    prog = ledger.recover(unit, kind="program")
    rv = ledger.recover(unit, kind="reverify")
    kept = None
    if prog.done:
        e = prog.done[-1]
        kept = {"devices": {k: [v] for k, v in e["devices"].items()}}
        if cfg.record_history and e.get("history") is not None:
            kept["history"] = {k: np.asarray(e["history"][k], dtype=np.dtype(dt))
                               for k, (dt, _u) in HISTORY_COLUMNS.items()}
        log.warning("transfer: resuming device %d on hardware: its programming before the "
                    "interruption is kept as measured (%d re-verify tunings of its tile "
                    "kept, %d cut off and booked at their pulse cap)", unit, len(rv.done),
                    len(rv.cut))
        return kept, rv, 0
    cut = sum(cap for _d, _t, cap in prog.cut)
    if prog.cut:
        log.warning("transfer: the programming of device %d was cut off on hardware; it is "
                    "done again from where the device is (the cut attempts' pulses, at most "
                    "%d, are booked in its row's pulses_cut)", unit, cut)
    return kept, rv, cut


def _inference(plan: ConductancePlan, g_read: np.ndarray, x: np.ndarray,
               y: np.ndarray) -> dict:
    if not np.all(np.isfinite(g_read)):
        raise ProtocolError("a tile was not read back; cannot evaluate the transferred network")
    logits = plan_logits(plan, g_read, x)
    output = logits[:, 0] if logits.shape[1] == 1 else logits.max(1)
    return {"point": np.arange(y.size), "label": y, "predicted": plan_forward(plan, g_read, x),
            "predicted_target": plan_forward(plan, plan.target, x), "output": output}


#: what each number of the summary is (stored in S, s and fractions; shown in uS, time units, %)
SUMMARY = {
    "devices": Metric("devices programmed"),
    "tiles": Metric("tiles (one crossbar each)"),
    "converged": Metric("converged tunings"),
    "failed": Metric("failed tunings"),
    "pulses_total": Metric("pulses (re-verify included)"),
    "pulses_cut": Metric("pulses of programmings cut off on hardware (at their cap)"),
    "reverify_tunings": Metric("re-verify tunings"),
    "reverify_pulses": Metric("re-verify pulses"),
    "pulses_median": Metric("pulses per device, median"),
    "instrument_time_s": Metric("instrument time", "s"),
    "readback_error_mean_rel": Metric("mean read-back error (of target)", "fraction", nd=2,
                                      signed=True),
    "readback_error_std_rel": Metric("std of the read-back error (of target)", "fraction",
                                     nd=2),
    "readback_error_median_abs_rel": Metric("median absolute read-back error (of target)",
                                            "fraction", nd=2),
    "readback_abs_error_rms_S": Metric("rms read-back error", "S", nd=2),
    "points": Metric("test points"),
    "accuracy": Metric("test accuracy on the crossbars", "fraction"),
    "accuracy_software": Metric("test accuracy in software (the targets)", "fraction"),
}


def summarize(plan: ConductancePlan, tables: dict[str, pd.DataFrame]) -> dict:
    """Plain-number summary of a transfer (S, s, fractions)."""
    dev, rb, inf = tables["devices"], tables["readback"], tables["inference"]
    rv = tables.get("reverify")
    out: dict = {"devices": int(len(dev)), "tiles": int(plan.n_tiles)}
    # (a store written before the column existed has none cut)
    cut = int(dev.pulses_cut.sum()) if "pulses_cut" in dev else 0
    if cut:
        out["pulses_cut"] = cut
    if len(dev):
        # the settling wait and the read-back are station time too (the read-back's end)
        done = rb[["tile", "t_end"]].assign(t_start=rb.t_end) if len(rb) else None
        spans = pd.concat([dev[["tile", "t_start", "t_end"]]]
                          + ([rv[["tile", "t_start", "t_end"]]] if rv is not None else [])
                          + ([done] if done is not None else []))
        out.update(converged=int(dev.converged.sum()),
                   failed=int((~dev.converged).sum()),
                   pulses_total=int(dev.pulses.sum()) + cut
                   + (int(rv.pulses.sum()) if rv is not None else 0),
                   pulses_median=float(np.median(dev.pulses)),
                   # instrument time: sum over tiles (each tile may be on its own rig and clock)
                   instrument_time_s=float(sum(g.t_end.max() - g.t_start.min()
                                               for _, g in spans.groupby("tile"))))
        if rv is not None:
            out.update(reverify_tunings=int(len(rv)), reverify_pulses=int(rv.pulses.sum()))
    if len(rb):
        err = (rb.g - rb.target) / rb.target
        out.update(readback_error_mean_rel=float(err.mean()),
                   readback_error_std_rel=float(err.std(ddof=1)) if len(rb) > 1 else 0.0,
                   readback_error_median_abs_rel=float(np.median(np.abs(err))),
                   readback_abs_error_rms_S=float(np.sqrt(np.mean((rb.g - rb.target) ** 2))))
    if len(inf):
        out.update(points=int(len(inf)),
                   accuracy=float((inf.predicted == inf.label).mean()),
                   accuracy_software=float((inf.predicted_target == inf.label).mean()))
    return out


def measured_conductances(plan: ConductancePlan, readback: pd.DataFrame) -> np.ndarray:
    """Read-back conductances [S] in plan order (NaN for devices not read back yet)."""
    g = np.full(plan.n_devices, np.nan)
    g[readback.device.to_numpy()] = readback.g.to_numpy()
    return g


def stored_plan_run(path, protocol: str, run: str | None = None):
    """(info, plan, tables) of a stored run of a protocol that programs or measures a plan
    (transfer, inference, repair): the named run, else the file's last one of that protocol."""
    path = Path(path)
    infos = [i for i in list_runs(path) if i.protocol == protocol]
    info = next((i for i in infos if i.name == run), None) if run else (infos[-1] if infos
                                                                         else None)
    if info is None:
        raise ProtocolError(f"{path}: no {protocol} run" + (f" {run!r}" if run else ""))
    plan = ConductancePlan.from_dict(info.config["plan"])
    return info, plan, {t: read_table(path, t, info.name) for t in info.rows}


def load_transfer(path, run: str | None = None) -> TransferResult:
    """A stored transfer as it is on disk: plan, read-back conductances, tables, summary."""
    path = Path(path)
    info, plan, tables = stored_plan_run(path, PROTOCOL, run)
    g = measured_conductances(plan, tables["readback"])
    summary = info.summary if info.complete else summarize(plan, tables)
    return TransferResult(path, info.name, summary, 0, plan, g, tables)


