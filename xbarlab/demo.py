"""The whole chain on a simulated station, one plain function per step.

    station -> campaigns, retention -> non-ideality DB -> training -> Monte-Carlo evaluation
            -> transfer onto fresh virtual chips -> repair after transfer -> report

Every step writes its files under the output folder and returns a :class:`StepResult` with the
paths it wrote, its wall time and, where instruments are involved, the instrument time a real
station would need (the virtual clock of the simulated instruments). Later steps read what
earlier steps wrote (files, not objects: :data:`OUTPUTS`, :data:`NEEDS`), so each step can be
rerun on its own, a step whose inputs are missing says which earlier step to run, and the
report (xbarlab/report.py) shows exactly what is on disk.

Sizes: :data:`FULL` and :data:`QUICK` (the end-to-end test). Through the station's emulated
SMUs (one list sweep per pass) QUICK takes about 1.7 minutes on 2 cores, its repair step 35 s.
FULL took 22.9 minutes with 12 repaired chips per network (the repair step 16.5 minutes, about
41 s per chip, while another benchmark held the second core), so it now repairs 4 per network:
the repair step alone re-run took 2.9 minutes, about 9 minutes for the whole demo;
bench/repair.py measures repair on many chips (docs/chip-in-the-loop.md). torch is imported inside the training steps only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from training.defaults import NETWORKS
from xbarlab.errors import XbarlabError
from xbarlab.files import write_json
from xbarlab.report import calibration_stats, write_report


@dataclass(frozen=True)
class DemoSettings:
    """How big each step is."""

    tuning_devices: tuple[str, ...]  # single crosspoints measured on the WGFMU station
    tuning_levels: int
    tuning_repeats: int
    stuck_crossbars: tuple[str, ...]  # 8x8 crossbars screened on the PMU station
    disturbance_crossbars: tuple[str, ...]
    iv_devices: tuple[tuple[int, int], ...]  # DC I-V loops on the first disturbance crossbar
    epochs: int  # training epochs (4 mini-batches of 256 each)
    mc_transfers: int  # Monte-Carlo transfers per network
    map_transfers: int  # transfers behind the decision-boundary maps
    chips: int  # fresh virtual chips each network is programmed onto
    repair_chips: int  # of those, the first ones repaired after the transfer
    # instrument time between a tuning and its settled read: post-SET relaxation (tau ~ 5 s)
    # is what makes the measured offset negative, as on the real devices (physics.md §4.2)
    settle_s: float = 20.0


QUICK = DemoSettings(tuning_devices=("dev0", "dev1"), tuning_levels=4, tuning_repeats=4,
                     stuck_crossbars=("xbar0",), disturbance_crossbars=("xbar0",),
                     iv_devices=((0, 0), (7, 7)), epochs=500,
                     mc_transfers=2000, map_transfers=100, chips=3, repair_chips=1)
FULL = DemoSettings(tuning_devices=("dev0", "dev1", "dev2", "dev3"), tuning_levels=8,
                    tuning_repeats=10, stuck_crossbars=("xbar0", "xbar1", "xbar2", "xbar3"),
                    disturbance_crossbars=("xbar0", "xbar1"),
                    iv_devices=((0, 0), (3, 5), (7, 7), (5, 2)), epochs=10_000,
                    mc_transfers=5000, map_transfers=500, chips=24, repair_chips=4)


@dataclass
class StepResult:
    name: str
    title: str
    seconds: float  # wall time of this step on this PC
    instrument_s: float | None = None  # predicted instrument time on a real station
    paths: list[Path] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["paths"] = [str(p) for p in self.paths]
        return d


def _station(path: Path, seed: int | None = None):
    """A loaded station; with `seed`, the same station over a fresh virtual chip of that seed."""
    from xbarlab.station import Station, load_station

    st = load_station(path)
    if seed is None:
        return st
    sim = st.cfg.sim.model_copy(update={"seed": int(seed), "chip_file": None})
    return Station(st.cfg.model_copy(update={"sim": sim}), st.path)


# -- 1. station ----------------------------------------------------------------------------------

def step_station(out: Path, seed: int) -> StepResult:
    """Station files for the demo chip (the shipped sim stations, chip seed = `seed`)."""
    from xbarlab.station import SHIPPED_STATIONS

    t0 = time.perf_counter()
    d = out / "station"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("sim-pmu", "sim-wgfmu"):
        raw = yaml.safe_load((SHIPPED_STATIONS / f"{name}.yaml").read_text())
        raw.setdefault("sim", {})["seed"] = int(seed)
        p = d / f"{name}.yaml"
        p.write_text(f"# {name} with the demo's chip seed; see xbarlab/stations/{name}.yaml\n"
                     + yaml.safe_dump(raw, sort_keys=False))
        paths.append(p)
    st = _station(paths[0])
    chip = st.chip
    # the simulator's ground truth, to judge the stuck screening against
    layout = {n: {"shape": list(xb.shape), "stuck_hrs": int((xb.stuck == 1).sum()),
                  "stuck_lrs": int((xb.stuck == 2).sum())} for n, xb in chip.crossbars.items()}
    paths.append(write_json(d / "chip.json", {"seed": int(seed), "crossbars": layout}))
    return StepResult("station", TITLES["station"], time.perf_counter() - t0, None, paths,
                      {"seed": int(seed), "crossbars": len(layout)})


# -- 2. campaigns --------------------------------------------------------------------------------

def step_campaigns(out: Path, settings: DemoSettings, seed: int, *,
                   progress: bool = True) -> StepResult:
    """Bring-up of every 8x8 crossbar used (PMU; the retention step's too) before anything is
    pulsed, then tuning/untuning on single crosspoints (WGFMU), stuck screening and V/3
    disturbance on 8x8 crossbars (PMU), and DC I-V loops on a few devices last (the DC stress would otherwise precede the others),
    each a raw-run HDF5 file. A bring-up finding an open or short line stops the demo."""
    from protocols.campaigns import bringup, disturbance, iv, stuck, tuning_untuning

    t0 = time.perf_counter()
    d = out / "runs"
    d.mkdir(parents=True, exist_ok=True)
    wg, pmu = _station(out / "station" / "sim-wgfmu.yaml"), _station(out / "station" /
                                                                     "sim-pmu.yaml")
    # (station, campaign, config, crossbar, seed): the seeds of the pulsed campaigns are those
    # they had before the DC steps were added
    jobs = [(wg, tuning_untuning, tuning_untuning.TuningUntuningConfig(
        levels=settings.tuning_levels, repeats=settings.tuning_repeats,
        settle_s=settings.settle_s), n)
        for n in settings.tuning_devices]
    jobs += [(pmu, stuck, stuck.StuckConfig(), n) for n in settings.stuck_crossbars]
    jobs += [(pmu, disturbance, disturbance.DisturbanceConfig(), n)
             for n in settings.disturbance_crossbars]
    jobs = [(*j, seed + i) for i, j in enumerate(jobs)]
    # (the retention step's crossbar too: it is pulsed after this step)
    lines = dict.fromkeys(settings.stuck_crossbars + settings.disturbance_crossbars
                          + (RETENTION_CROSSBAR,))
    jobs = [(pmu, bringup, bringup.BringupConfig(), n, seed) for n in lines] + jobs
    # (the sweep reaches 2.0 / -2.2 V: after the disturbance campaign these devices sit high,
    # where the SET threshold is above the default 1.6 V for a DC hold)
    jobs.append((pmu, iv, iv.IVConfig(devices=list(settings.iv_devices), cycles=1, v_step=0.1,
                                      v_set=2.0, v_reset=-2.2),
                 settings.disturbance_crossbars[0], seed))
    runs = []
    for st, module, cfg, name, job_seed in jobs:
        path = d / f"{module.PROTOCOL}-{name}.h5"
        clock0 = st.chip.clock.now
        w0 = time.perf_counter()
        with st.open_rig(name) as rig:
            res = module.run(rig, cfg, path, seed=job_seed, station=st.describe(name),
                             overwrite=True, progress=progress)
        runs.append({"protocol": module.PROTOCOL, "station": st.name, "crossbar": name,
                     "path": str(path.relative_to(out)), "summary": res.summary,
                     "wall_s": time.perf_counter() - w0,
                     "instrument_s": st.chip.clock.now - clock0})
    paths = [out / r["path"] for r in runs]
    paths.append(write_json(d / "campaigns.json", runs))
    instrument = float(sum(r["instrument_s"] for r in runs))
    return StepResult("campaigns", TITLES["campaigns"], time.perf_counter() - t0,
                      instrument, paths, {"runs": len(runs)})


# -- 3. non-ideality database ---------------------------------------------------------------

def step_database(out: Path) -> StepResult:
    """The non-ideality DB from the campaign runs, its figures and calibration statistics."""
    from database.build import build_nonideality
    from database.nonideality import save_nonideality
    from database.plots import plot_all

    t0 = time.perf_counter()
    runs = [*json.loads((out / "runs" / "campaigns.json").read_text()),
            *json.loads((out / "runs" / "retention.json").read_text())]
    db = build_nonideality([out / r["path"] for r in runs])
    d = out / "db"
    path = save_nonideality(db, d / "nonideality.h5", overwrite=True)
    figs = plot_all(db, d)
    stats_path = write_json(d / "calibration.json", calibration_stats(db))
    return StepResult("database", TITLES["database"], time.perf_counter() - t0, None,
                      [path, *figs, stats_path],
                      {"disturbance_samples": int(db.disturbance_delta.size)})


# -- 4. training -----------------------------------------------------------------------------------

def step_train(out: Path, settings: DemoSettings, seed: int, *,
               progress: bool = True) -> StepResult:
    """The hardware-aware and the regular network on half-moons (the dataset's defaults and
    the default mapping, physical: the one a crossbar can be programmed with), from the demo
    DB, trained on the published training set (the published claim compares with the paper)
    and so never on the repair step's repair set (`database.datasets.chip_in_the_loop_sets`)."""
    from database.datasets import load_dataset
    from database.nonideality import load_nonideality
    from training.train import save_checkpoint, train_config, train_with_bar

    t0 = time.perf_counter()
    db = load_nonideality(out / "db" / "nonideality.h5")
    x, y = load_dataset("moons")["train"]
    d = out / "train"
    paths, info = [], {}
    for name in NETWORKS:
        cfg = train_config("moons", hardware_aware=name == "hardware_aware",
                           epochs=settings.epochs, seed=seed)
        res = train_with_bar(cfg, x, y, db, show=progress, log_every=200)
        paths.append(save_checkpoint(res, d / f"{name}.pt"))
        info[name] = {"steps": res.steps, "seconds": res.seconds,
                      "final_loss": res.loss_history[-1] if res.loss_history else None}
    paths.append(write_json(d / "train.json", info))
    return StepResult("train", TITLES["train"], time.perf_counter() - t0, None, paths, info)


# -- 5. Monte-Carlo evaluation ---------------------------------------------------------------------

def step_evaluate(out: Path, settings: DemoSettings, seed: int) -> StepResult:
    """Both networks over `mc_transfers` simulated transfers each (the prediction)."""
    import numpy as np

    from database.datasets import load_moons
    from database.nonideality import load_nonideality
    from training.evaluate import evaluate_transfers
    from training.figures import write_evaluation
    from training.train import load_checkpoint

    t0 = time.perf_counter()
    db = load_nonideality(out / "db" / "nonideality.h5")
    xt, yt = load_moons("test")
    d = out / "evaluate"
    results, models, mappings = {}, {}, set()
    for name in NETWORKS:
        model, cfg, _meta = load_checkpoint(out / "train" / f"{name}.pt", "cpu")
        results[name] = evaluate_transfers(model, xt, yt, settings.mc_transfers, db,
                                           mapping=cfg.mapping, seed=seed)
        models[name] = model
        mappings.add(cfg.mapping)
    summary = write_evaluation(d, results, models, xt, yt, map_transfers=settings.map_transfers,
                               extra={"mapping": "/".join(sorted(mappings)),
                                      "transfers": settings.mc_transfers})
    acc = {name: r.transfer_acc[:, 0] for name, r in results.items()}
    np.savez_compressed(d / "mc_accuracy.npz", **acc)
    paths = [d / "summary.json", d / "mc_accuracy.npz", *map(Path, summary["figures"].values())]
    return StepResult("evaluate", TITLES["evaluate"], time.perf_counter() - t0, None,
                      paths, {"transfers": settings.mc_transfers})


# -- 6. transfer onto virtual chips ---------------------------------------------------------------

def chip_seeds(seed: int, chips: int) -> list[int]:
    """Fresh chips, none of them the characterised one."""
    return [seed + 1 + j for j in range(chips)]


def step_transfer(out: Path, settings: DemoSettings, seed: int, *,
                  progress: bool = True) -> StepResult:
    """Program both networks onto fresh virtual chips through the PMU rig, measure them."""
    from database.datasets import load_moons
    from database.nonideality import load_nonideality
    from protocols.transfer import run
    from training.export import conductance_plan
    from training.train import load_checkpoint
    from xbarlab.crossbars import pick_crossbars

    t0 = time.perf_counter()
    db = load_nonideality(out / "db" / "nonideality.h5")
    test = load_moons("test")
    d = out / "transfer"
    d.mkdir(parents=True, exist_ok=True)
    station_file = out / "station" / "sim-pmu.yaml"
    read = _station(station_file).read_settings
    plans, paths = {}, []
    for name in NETWORKS:
        model, _cfg, _meta = load_checkpoint(out / "train" / f"{name}.pt", "cpu")
        # in the range the station verifies (the database's may reach its read ceiling)
        plans[name] = conductance_plan(model, db, read=read)
        plans[name].meta.update(network=name, dataset="moons")
        paths.append(plans[name].save(d / f"{name}_plan.json"))
    runs: list[dict] = []
    for chip_seed in chip_seeds(seed, settings.chips):
        for name in NETWORKS:
            # each network on its own copy of the same fresh chip: a paired comparison
            st = _station(station_file, chip_seed)
            plan = plans[name]
            names = pick_crossbars(st, plan.n_tiles, ())
            path = d / f"{name}_chip{chip_seed}.h5"
            w0 = time.perf_counter()
            res = run(plan, st.open_rig, names, path, read=read, test_data=test, seed=chip_seed,
                      station=st.describe(names), overwrite=True, progress=progress)
            runs.append({"network": name, "chip_seed": chip_seed,
                         "path": str(path.relative_to(out)),
                         "crossbars": names, "summary": res.summary,
                         "wall_s": time.perf_counter() - w0})
            paths.append(path)
    instrument = float(sum(r["summary"]["instrument_time_s"] for r in runs))
    paths.append(write_json(d / "transfers.json", runs))
    return StepResult("transfer", TITLES["transfer"], time.perf_counter() - t0,
                      instrument, paths, {"transfers": len(runs)})


# -- 7. repair after transfer ----------------------------------------------------------------------

#: the repair's pulse budget: this share of the transfer's pulses
REPAIR_BUDGET = 0.20


def step_repair(out: Path, settings: DemoSettings, seed: int, *,
                progress: bool = True) -> StepResult:
    """Measure each transferred network on its chip (analog read-out) and repair it with a
    budget of REPAIR_BUDGET of its transfer's pulses (protocols.repair)."""
    from protocols.repair import RepairData, run
    from xbarlab.chip_loop import prior_of, programmed, test_sets

    t0 = time.perf_counter()
    d = out / "repair"
    d.mkdir(parents=True, exist_ok=True)
    station_file = out / "station" / "sim-pmu.yaml"
    repaired = chip_seeds(seed, settings.chips)[:settings.repair_chips]
    runs, paths = [], []
    for r in json.loads((out / "transfer" / "transfers.json").read_text()):
        if r["chip_seed"] not in repaired:
            continue
        st = _station(station_file, r["chip_seed"])
        prog = programmed(out / r["path"], st)   # the chip as its transfer left it
        prior = prior_of(prog)
        budget = int(REPAIR_BUDGET * prior.transfer_pulses)
        path = d / f"{r['network']}_chip{r['chip_seed']}.h5"
        w0 = time.perf_counter()
        res = run(prog.plan, st.tile_opener(), prog.crossbars, path,
                  RepairData(**test_sets(prog.plan)), budget=budget, read=st.read_settings,
                  stuck=prior.stuck,
                  prior_tunings=prior.tunings, seed=r["chip_seed"],
                  station=st.describe(prog.crossbars), overwrite=True, progress=progress,
                  extra_config={"programmed_by": r["path"],
                                "transfer_pulses": prior.transfer_pulses})
        runs.append({"network": r["network"], "chip_seed": r["chip_seed"],
                     "path": str(path.relative_to(out)), "transfer": r["path"],
                     "transfer_pulses": prior.transfer_pulses, "budget_share": REPAIR_BUDGET,
                     "summary": res.summary,
                     "wall_s": time.perf_counter() - w0})
        paths.append(path)
    instrument = float(sum(r["summary"]["instrument_time_s"] for r in runs))
    paths.append(write_json(d / "repairs.json", runs))
    return StepResult("repair", TITLES["repair"], time.perf_counter() - t0, instrument, paths,
                      {"repairs": len(runs), "budget_share": REPAIR_BUDGET})


# -- 8. report -----------------------------------------------------------------------------------

def step_report(out: Path) -> StepResult:
    """DIR/report/ from the files of the other steps (xbarlab/report.py)."""
    t0 = time.perf_counter()
    written = write_report(out)
    return StepResult("report", TITLES["report"], time.perf_counter() - t0, None,
                      written.paths, {"all_hold": written.all_hold,
                                      "conclusion": written.conclusion})


# -- the whole chain -------------------------------------------------------------------------------

STEPS = ("station", "campaigns", "retention", "database", "train", "evaluate", "transfer",
         "repair", "report")
# -- retention: program levels on one crossbar, read them on a log-spaced schedule; the span is
# virtual (the simulated station advances its clock between reads), so a day takes ~1 s here

#: (devices, span [s], reads) per demo size; devices on the diagonal, then on col = row + 1
RETENTION_SIZES = {True: (8, 3600.0, 6), False: (16, 86400.0, 10)}
RETENTION_CROSSBAR = "xbar3"


def step_retention(out: Path, quick: bool, seed: int, *, progress: bool = True) -> StepResult:
    """Retention on crossbar xbar3 through the PMU station: `runs/retention-xbar3.h5` and
    `runs/retention.json` (the run's summary, wall and predicted instrument time)."""
    from protocols.campaigns import retention

    t0 = time.perf_counter()
    n, span, reads = RETENTION_SIZES[quick]
    devices = [(i % 8, (i + i // 8) % 8) for i in range(n)]   # spread over rows and columns
    cfg = retention.RetentionConfig(devices=devices, levels=[100e-6, 200e-6, 300e-6, 400e-6],
                                    first_s=10.0, span_s=span, reads=reads)
    st = _station(out / "station" / "sim-pmu.yaml")
    d = out / "runs"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"retention-{RETENTION_CROSSBAR}.h5"
    clock0 = st.chip.clock.now
    with st.open_rig(RETENTION_CROSSBAR) as rig:
        res = retention.run(rig, cfg, path, seed=seed, station=st.describe(RETENTION_CROSSBAR),
                            overwrite=True, progress=progress)
    instrument = st.chip.clock.now - clock0
    run = {"protocol": retention.PROTOCOL, "station": st.name, "crossbar": RETENTION_CROSSBAR,
           "path": str(path.relative_to(out)), "summary": res.summary,
           "wall_s": time.perf_counter() - t0, "instrument_s": instrument}
    listing = write_json(d / "retention.json", [run])
    return StepResult("retention", TITLES["retention"], time.perf_counter() - t0, instrument,
                      [path, listing], {"devices": n, "span_s": span})


TITLES = {"station": "simulated station", "campaigns": "characterisation campaigns",
          "retention": "retention (virtual time)",
          "database": "non-ideality database", "train": "training",
          "evaluate": "Monte-Carlo evaluation", "transfer": "transfer onto virtual chips",
          "repair": "repair after transfer", "report": "report"}
#: the files each step leaves for later ones (relative to the output folder)
OUTPUTS = {
    "station": ("station/sim-pmu.yaml", "station/sim-wgfmu.yaml", "station/chip.json"),
    "campaigns": ("runs/campaigns.json",),
    "retention": ("runs/retention.json",),
    "database": ("db/nonideality.h5", "db/tuning.png", "db/disturbance.png", "db/stuck.png"),
    "train": tuple(f"train/{n}.pt" for n in NETWORKS) + ("train/train.json",),
    "evaluate": ("evaluate/summary.json", "evaluate/mc_accuracy.npz",
                 "evaluate/accuracy_hist.png", "evaluate/boundary_map.png"),
    "transfer": ("transfer/transfers.json",),
    "repair": ("repair/repairs.json",),
}
#: the earlier steps whose files each step reads
NEEDS = {"station": (), "campaigns": ("station",), "retention": ("station",),
         "database": ("campaigns", "retention"),
         "train": ("database",), "evaluate": ("database", "train"),
         "transfer": ("station", "database", "train"), "repair": ("station", "transfer"),
         "report": STEPS[:-1]}


def check_inputs(out: Path, wanted: Sequence[str]) -> None:
    """XbarlabError naming the earliest step whose outputs a wanted step needs and cannot
    find (neither run before in `out` nor run now ahead of it)."""
    for i, name in enumerate(wanted):
        for need in NEEDS[name]:
            if need in wanted[:i]:
                continue
            missing = [f for f in OUTPUTS[need] if not (out / f).is_file()]
            if missing:
                raise XbarlabError(f"demo step {name!r} reads the outputs of step {need!r}, "
                                   f"and {missing[0]} is missing in {out}: run step {need!r} "
                                   "first")


def run_demo(out: str | Path, *, quick: bool = False, seed: int = 0, progress: bool = True,
             echo: Callable[[str], None] = print,
             steps: Sequence[str] | None = None) -> list[StepResult]:
    """Every step in order (or only `steps`, which then read what earlier runs wrote in
    `out`); writes DIR/timing.json and DIR/report/."""
    out = Path(out)
    wanted = list(STEPS) if steps is None else [n for n in STEPS if n in steps]
    bad = [w for w in (steps or ()) if w not in STEPS]
    if bad:
        raise XbarlabError(f"unknown demo step {bad[0]!r}; choose from {', '.join(STEPS)}")
    check_inputs(out, wanted)
    s = QUICK if quick else FULL
    if "station" not in wanted and (out / "settings.json").exists():
        before = json.loads((out / "settings.json").read_text())
        if (before["quick"], before["seed"]) != (quick, seed):
            raise XbarlabError(f"{out} was made with quick={before['quick']}, seed="
                               f"{before['seed']}; rerun its steps with the same settings")
    else:
        write_json(out / "settings.json", {"quick": quick, "seed": seed, **asdict(s)})
    # timing of steps run earlier into the same folder is kept; rerun steps replace theirs
    timing_path = out / "timing.json"
    done: dict[str, StepResult] = {}
    if steps is not None and timing_path.exists():
        for d in json.loads(timing_path.read_text())["steps"]:
            d["paths"] = [out / p for p in d["paths"]]
            done[d["name"]] = StepResult(**d)
    funcs: dict[str, Callable[[], StepResult]] = {
        "station": lambda: step_station(out, seed),
        "campaigns": lambda: step_campaigns(out, s, seed, progress=progress),
        "retention": lambda: step_retention(out, quick, seed, progress=progress),
        "database": lambda: step_database(out),
        "train": lambda: step_train(out, s, seed, progress=progress),
        "evaluate": lambda: step_evaluate(out, s, seed),
        "transfer": lambda: step_transfer(out, s, seed, progress=progress),
        "repair": lambda: step_repair(out, s, seed, progress=progress),
        "report": lambda: step_report(out),
    }
    ran: list[StepResult] = []
    for name in wanted:
        echo(f"== {STEPS.index(name) + 1}/{len(STEPS)} {TITLES[name]}")
        r = funcs[name]()
        done[name] = r
        ran.append(r)
        echo(f"   {r.seconds:.1f} s" + ("" if r.instrument_s is None else
                                         f" (predicted instrument time {r.instrument_s:.0f} s)")
             + (f"; open {out / 'report' / 'index.html'}" if name == "report" else ""))
        write_json(timing_path, _timing([done[n] for n in STEPS if n in done], out))
    return ran


def _timing(steps: list[StepResult], out: Path) -> dict:
    """Step timings; paths relative to `out` so the folder can be moved."""
    rows = []
    for s in steps:
        d = s.to_dict()
        d["paths"] = [os.path.relpath(p, out) for p in d["paths"]]
        rows.append(d)
    return {"steps": rows,
            "total_s": float(sum(s.seconds for s in steps)),
            "instrument_s": float(sum(s.instrument_s or 0.0 for s in steps))}
