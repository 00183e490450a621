"""Predicted instrument time of one analog inference of the half-moons network, per station.

The network is the paper's 2-8-1 sigmoid half-moons MLP (random weights of that shape: the
instrument time depends on the plan's layout and the inputs, not on the weights), planned on
8x8 tiles (4 tiles: 3x8, 3x8, 8x2, 1x2) and written straight into the virtual chip's crossbars
at its targets (no transfer). `protocols.inference.run` measures the half-moons test set:

- ``station``: through the station's own rig, rows driven and columns measured by its SMUs
  through the 707B (`CrossbarRig.column_currents` as a DC request, over the emulated
  instruments): sim-pmu (4200A, four SMUs shared by the rows and columns of a pass, split per
  tile by `protocols.inference.read_out_split`, one list sweep per pass), and a WGFMU crossbar
  station (B1500 with four SMUs on matrix rows and a ground row, set and measured point by
  point; the shipped sim-wgfmu is a single crosspoint, where the 3x8 tiles do not fit);
- ``array tester``: what `xbarlab infer` used before on these stations, the simulator's
  `SimulatedRig` on the same chip with the station's latency model (one source per word line,
  one meter per bit line, one list sweep per call).

Prints per station and path: instrument time per inference (total and by category), analog and
read-back accuracy, wall time.

Usage: python bench/infer_time.py [--points 200]
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

from database.datasets import chip_in_the_loop_sets  # noqa: E402
from protocols.inference import InferConfig, read_out_split, run  # noqa: E402
from simulator.config import LatencyConfig  # noqa: E402
from simulator.direct_rig import SimulatedRig  # noqa: E402
from training.export import plan_from_weights  # noqa: E402
from xbarlab.station import load_station  # noqa: E402

#: a WGFMU crossbar station: the B1500's SMUs in slots 2..5 on matrix rows C..F, ground on G
WGFMU_XBAR = """
name: sim-wgfmu-xbar
rig: wgfmu
simulated: true
crossbar: xbar0
shape: [8, 8]
instruments:
  wgfmu: {address: "GPIB0::17::INSTR", top: 101, bottom: 102}
  b1500: {resource: "GPIB0::16::INSTR", smu_v3: 2, smu_2v3: 3,
          modules: [B1530A, B1517A, B1517A, B1517A, B1517A]}
  k707b: {resource: "GPIB0::18::INSTR", cards: {1: "7174A", 2: "7174A"}}
matrix:
  terminals: {top: A, bottom: B, v3: C, 2v3: D, smu4: E, smu5: F, gnd: G}
  rows: [[1, 1], [1, 2], [1, 3], [1, 4], [1, 5], [1, 6], [1, 7], [1, 8]]
  cols: [[2, 1], [2, 2], [2, 3], [2, 4], [2, 5], [2, 6], [2, 7], [2, 8]]
limits: {v_set_max: 2.1, v_reset_max: 2.5, v_read_max: 0.5, width_min: 10.0e-9,
         width_max: 1.0e-3, i_compliance: 10.0e-3}
sim: {seed: 0, latency: {round_trip: 3.0e-3, relay_switch: 15.0e-3, gpib_cmd: 1.0e-3}}
"""


def moons_plan():
    rng = np.random.default_rng(0)
    return plan_from_weights([rng.normal(size=(8, 2)), rng.normal(size=(1, 8))],
                             [rng.normal(size=8), rng.normal(size=1)], g_min=100e-6,
                             g_max=400e-6, activation="sigmoid", meta={"dataset": "moons"})


def program(plan, chip, names):
    for t, name in enumerate(names):
        d = plan.tile_devices(t)
        xb = chip[name]
        s = xb.state_dict()
        s["G"][plan.row[d], plan.col[d]] = plan.target[d]
        s["Gv"] = np.zeros_like(s["G"])
        xb.load_state_dict(s)


def measure(plan, opener, names, test, tmp: Path, label: str) -> dict:
    w0 = time.perf_counter()
    res = run(plan, opener, names, tmp / f"{label}.h5", test, config=InferConfig(batch=50),
              overwrite=True, progress=False)
    s = res.summary
    return {"per": s["per_inference_s"], "cat": s["per_inference_by_category_s"],
            "acc": s["accuracy"], "acc_rb": s["accuracy_readback"],
            "groups": (s["row_groups"], s["col_groups"]), "wall": time.perf_counter() - w0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=200, help="test points (of 200)")
    args = ap.parse_args()
    x, y = chip_in_the_loop_sets("moons")["test"]
    test = (x[:args.points], y[:args.points])
    plan = moons_plan()
    names = [f"xbar{t}" for t in range(plan.n_tiles)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "wgfmu.yaml").write_text(WGFMU_XBAR)
        stations = {"sim-pmu": load_station("sim-pmu"),
                    "wgfmu 8x8 (B1500 SMUs)": load_station(tmp / "wgfmu.yaml")}
        print(f"half-moons 2-8-1 sigmoid, {plan.n_tiles} tiles "
              f"{[tuple(int(v) for v in s) for s in plan.tile_shape]}, {len(y[:args.points])} "
              "test points, batches of 50")
        for label, st in stations.items():
            chip = st.chip
            program(plan, chip, names)
            saved = chip.lab.save_state()
            lat = LatencyConfig(**st.cfg.sim.latency)
            with st.open_rig(names[0]) as rig:
                ch = rig.channels
            splits = sorted({read_out_split(ch, *(int(v) for v in s)) for s in plan.tile_shape})
            paths = {
                "station SMUs (rows + cols per pass: " + ", ".join(
                    f"{a} + {b}" for a, b in splits) + ")": st.tile_opener(),
                "array tester (SimulatedRig, before)": lambda n, st=st, chip=chip, lat=lat:
                    SimulatedRig(chip[n], latency=lat, limits=st.limits,
                                 read=st.read_settings, lab=chip.lab)}
            print(f"\n{label}:")
            for i, (path, opener) in enumerate(paths.items()):
                chip.lab.restore_state(saved)
                r = measure(plan, opener, names, test, tmp, f"{label[:3]}{i}")
                cats = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in r["cat"].items()
                                 if v is not None and abs(v) > 5e-5)
                print(f"  {path}: {1e3 * r['per']:.1f} ms per inference ({cats} ms); "
                      f"groups per tile <= {r['groups'][0]} rows x {r['groups'][1]} cols; "
                      f"accuracy analog {100 * r['acc']:.1f} %, read-back "
                      f"{100 * r['acc_rb']:.1f} %; wall {r['wall']:.1f} s")


if __name__ == "__main__":
    main()
