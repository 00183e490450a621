"""Fidelity of the simulated crossbar against the published non-ideality database (prints figures).

Sections:
1. fidelity table: the characterisation campaigns replayed on the shipped (or a given) chip
   model with the published database's measurement settings (`xbarlab.calibrate.PUBLISHED`:
   3IT-style station, 0.3 s per closed-loop step, settled read 60 s after a tuning, +-40 uS
   cut), seeds other than the calibration's; the database built from them next to the
   published one: disturbance per k bin (mean, sd, p1, p25, p75, two-sample KS), tuning sigma
   per level, offsets, stuck rates; wall and CPU time;
2. virtual clock: the same disturbance campaign at 3 ms and at 0.3 s per step (what the
   station's latency does to the time-dependent physics);
3. reproduce table (needs torch, the [train] extra): both networks trained and evaluated with
   the physical mapping on the published database and on the database of section 1, same
   seeds; share of test points correct in >= 95 % of transfers.

Usage: python bench/fidelity.py [--quick] [--sections 123] [--model chip-model.yaml] [--seed N]
       [--save-db sim.h5] [--sim-db sim.h5]
Results: docs/simulator.md, "Calibration".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(1, user_api="blas")

from database.nonideality import save_nonideality  # noqa: E402
from database.reference import import_reference  # noqa: E402
from simulator.config import CrossbarConfig  # noqa: E402
from xbarlab import calibrate as cal  # noqa: E402


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def section_fidelity(model: CrossbarConfig, seed: int, quick: bool, tmp: Path):
    target = import_reference()
    setup = cal.PUBLISHED.model_copy(update={
        "seed": seed, "tuning_devices": 6 if quick else 24, "tuning_repeats": 3 if quick else 10,
        "disturbance_crossbars": 3 if quick else 20, "stuck_crossbars": 2 if quick else 60})
    cfg = cal.from_target(model, target)
    levels = cal.tuning_levels(target, setup)
    print(f"\n== 1. fidelity: simulated vs published database ({setup.tuning_devices} devices x "
          f"{levels.size} levels x {setup.tuning_repeats} repeats; {setup.disturbance_crossbars}"
          f" + {setup.stuck_crossbars} crossbars; {setup.round_trip:g} s per step, settle "
          f"{setup.settle_s:g} s, cut {setup.cut * 1e6:g} uS; seed {seed})")
    sim, wall, cpu = _timed(lambda: cal.simulate_db(cfg, setup, tmp, levels))
    print(cal.format_fidelity(cal.fidelity(sim, target, levels)))
    print(f"   wall {wall:.0f} s, CPU {cpu:.0f} s")
    return sim


def section_clock(model: CrossbarConfig, seed: int, quick: bool, tmp: Path):
    target = import_reference()
    print("\n== 2. virtual clock: the disturbance campaign at two station latencies "
          "(mean / sd per k bin, uS)")
    print("   s/step  " + " ".join(f"{f'{lo}-{hi}':>11s}" for lo, hi in cal.K_BINS)
          + "   p75 (25-40)")
    for rt in (3e-3, 0.3):
        setup = cal.PUBLISHED.model_copy(update={
            "seed": seed, "round_trip": rt, "tuning_devices": 2, "tuning_repeats": 1,
            "disturbance_crossbars": 2 if quick else 8})
        d = tmp / f"clock-{rt:g}"
        d.mkdir()
        sim = cal.simulate_db(cal.from_target(model, target), setup, d,
                              cal.tuning_levels(target, setup))
        k, x = sim.disturbance_keys, sim.disturbance_delta * 1e6
        cells = [f"{x[(k >= lo) & (k <= hi)].mean():+5.1f}/{x[(k >= lo) & (k <= hi)].std():4.1f}"
                 for lo, hi in cal.K_BINS]
        p75 = np.percentile(x[(k >= 25) & (k <= 40)], 75)
        print(f"   {rt:6g} " + " ".join(f"{c:>11s}" for c in cells) + f"   {p75:+.1f}")


def section_reproduce(sim_db, seed: int, quick: bool, tmp: Path):
    from database.datasets import load_moons_all
    from training.evaluate import evaluate_transfers
    from training.train import TrainConfig, train

    epochs, transfers = (500, 1000) if quick else (10_000, 5_000)
    print(f"\n== 3. reproduce table, physical mapping ({epochs} epochs, {transfers} transfers, "
          f"seed {seed}): share of the 200 test points correct in >= 95 % of transfers")
    data = load_moons_all()
    (x, y), (xt, yt) = data["train"], data["test"]
    save_nonideality(sim_db, tmp / "sim-db.h5", overwrite=True)
    rows = {}
    for label, db in (("published database", import_reference()),
                      ("calibrated simulator", sim_db)):
        out = {}
        for name, hw in (("hardware-aware", True), ("regular", False)):
            cfg = TrainConfig(hardware_aware=hw, epochs=epochs, seed=seed, mapping="physical")
            res, wall, _cpu = _timed(lambda cfg=cfg, db=db: train(cfg, x, y, db))
            ev = evaluate_transfers(res.model, xt, yt, transfers, db, mapping="physical",
                                    seed=seed)
            s = ev.summary()
            out[name] = (s["share_correct_95"], s["transfer_acc_mean"], wall)
        rows[label] = out
    print("   database               hardware-aware  (mean acc)   regular  (mean acc)")
    for label, out in rows.items():
        hw, rg = out["hardware-aware"], out["regular"]
        print(f"   {label:22s} {hw[0] * 100:8.1f} %   ({hw[1]:.3f})   {rg[0] * 100:6.1f} %  "
              f"({rg[1]:.3f})")
    a, b = rows["published database"], rows["calibrated simulator"]
    for name in ("hardware-aware", "regular"):
        gap = abs(a[name][0] - b[name][0]) * 100
        print(f"   {name}: difference {gap:.1f} points (goal <= 5)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs")
    ap.add_argument("--sections", default="12", help="which sections to run, e.g. 123")
    ap.add_argument("--model", default=None, help="chip model YAML (default: shipped)")
    ap.add_argument("--seed", type=int, default=1, help="replay seed (the calibration used 0)")
    ap.add_argument("--save-db", default=None, help="write section 1's database here (.h5)")
    ap.add_argument("--sim-db", default=None, help="section 3 on this database instead of "
                    "replaying section 1")
    a = ap.parse_args()
    model = cal.load_chip_model(a.model) if a.model else CrossbarConfig()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sim = None
        if a.sim_db:
            from database.nonideality import load_nonideality
            sim = load_nonideality(a.sim_db)
        elif "1" in a.sections or "3" in a.sections:
            (tmp / "fid").mkdir()
            sim = section_fidelity(model, a.seed, a.quick, tmp / "fid")
            if a.save_db:
                save_nonideality(sim, a.save_db, overwrite=True)
        if "2" in a.sections:
            section_clock(model, a.seed, a.quick, tmp)
        if "3" in a.sections:
            section_reproduce(sim, a.seed, a.quick, tmp)


if __name__ == "__main__":
    main()
