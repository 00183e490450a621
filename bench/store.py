"""Raw-run store: what a commit and a publish cost, and the store's overhead on a long run.

    python bench/store.py                    # 10,000 commits growing a run to ~30 MB
    python bench/store.py --dir /mnt/data    # measure on another disk

A commit is one unit (the next issue commits after every tuning): ~60 history rows (a tuning's
pulses and reads, 9 columns), one summary row, and optionally the simulated chip state (as a
sim station commits it, ~15 kB). Each commit appends one fsynced journal record; publishing
rebuilds the HDF5 file in memory and replaces the published one atomically, throttled to at most
~1/PUBLISH_RATIO of the wall time (database/runs.py).

Printed: the cost of one commit (median, p99, max; with and without chip state), the cost of a
publish at several file sizes (build in memory / write + fsync + rename), and the whole run's
store time with no work between commits and with a given work time per unit (the overhead a
campaign sees). Wall times on this machine; fsync cost depends on the disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from database import runs  # noqa: E402
from database.runs import RunWriter, list_runs  # noqa: E402

HISTORY = {"device": ("i4", "1"), "tuning": ("i8", "1"), "phase": ("i1", "1"),
           "kind": ("i1", "1"), "volts": ("f8", "V"), "width": ("f8", "s"), "g": ("f8", "S"),
           "t": ("f8", "s"), "used": ("?", "1")}
TUNINGS = {"device": ("i4", "1"), "target": ("f8", "S"), "pulses": ("i4", "1"),
           "g_final": ("f8", "S"), "t_end": ("f8", "s")}
TABLES = {"history": HISTORY, "tunings": TUNINGS}
ROW_BYTES = sum(np.dtype(d).itemsize for d, _u in HISTORY.values())


def unit_rows(i: int, rng: np.random.Generator, n: int) -> dict:
    return {"history": {"device": np.full(n, i // 16), "tuning": np.full(n, i),
                        "phase": np.ones(n), "kind": rng.integers(0, 2, n),
                        "volts": rng.normal(1, 0.3, n), "width": np.full(n, 2e-7),
                        "g": rng.normal(2e-4, 1e-5, n), "t": np.cumsum(rng.random(n)),
                        "used": np.ones(n, bool)},
            "tunings": {"device": [i // 16], "target": [2e-4], "pulses": [n], "g_final": [2e-4],
                        "t_end": [float(i)]}}


def _ms(x: float) -> str:
    return f"{x * 1e3:8.2f} ms"


def run(folder: Path, units: int, rows: int, state_bytes: int, work_s: float,
        rng: np.random.Generator) -> dict:
    """One run of `units` commits; times of every commit and publish."""
    path = folder / "bench.h5"
    path.unlink(missing_ok=True)
    state = rng.bytes(state_bytes) if state_bytes else None
    w = RunWriter.open(path, protocol="bench", config={}, station={}, seed=0, tables=TABLES,
                       units_total=units)
    publishes: list[float] = []
    orig = w._publish

    def timed_publish():
        t = time.perf_counter()
        orig()
        publishes.append(time.perf_counter() - t)

    w._publish = timed_publish
    prepared = [unit_rows(i, rng, rows) for i in range(min(units, 64))]
    commit_t = np.zeros(units)
    t_run = time.perf_counter()
    for i in range(units):
        if work_s:
            time.sleep(work_s)  # the instruments working: the process waits
        t = time.perf_counter()
        w.commit(i, prepared[i % len(prepared)], state)
        commit_t[i] = time.perf_counter() - t
    t = time.perf_counter()
    w.finish({})
    finish = time.perf_counter() - t
    wall = time.perf_counter() - t_run
    assert list_runs(path)[-1].units_done == units
    return {"commit": commit_t, "publishes": publishes, "finish": finish, "wall": wall,
            "size": path.stat().st_size, "work": work_s * units}


def publish_cost(folder: Path, mb: float, rng: np.random.Generator) -> tuple[float, float]:
    """(build in memory, whole publish) for a run of about `mb` MB."""
    n = int(mb * 1e6 / ROW_BYTES)
    path = folder / "pub.h5"
    path.unlink(missing_ok=True)
    w = RunWriter.open(path, protocol="bench", config={}, station={}, seed=0, tables=TABLES,
                       units_total=2)
    w.commit(0, unit_rows(0, rng, n))             # the first commit publishes
    ratio, runs.PUBLISH_RATIO = runs.PUBLISH_RATIO, float("inf")
    try:
        w.commit(1, unit_rows(1, rng, 10))        # journal only
    finally:
        runs.PUBLISH_RATIO = ratio
    t = time.perf_counter()
    w._image()                                    # what a publish spends in HDF5
    build = time.perf_counter() - t
    t = time.perf_counter()
    w.publish()
    total = time.perf_counter() - t
    w.close()
    return build, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="folder to write in (default: a temp folder)")
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=60, help="history rows per unit")
    ap.add_argument("--state", type=int, default=15_000, help="chip-state bytes per commit")
    ap.add_argument("--work-ms", type=float, default=200.0,
                    help="work per unit in the 'with work' run [ms] (a simulated tuning takes "
                         "~150-300 ms of wall time, one on hardware ~0.5 s)")
    ap.add_argument("--work-units", type=int, default=1000, help="units of the 'with work' run")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        mb = args.units * args.rows * ROW_BYTES / 1e6
        print(f"store bench in {folder} (PUBLISH_RATIO {runs.PUBLISH_RATIO:g}); a unit = "
              f"{args.rows} history rows + 1 summary row ({args.rows * ROW_BYTES / 1e3:.1f} kB)"
              f", {args.units} units = {mb:.0f} MB of rows")

        print("publish of the whole file: total (of which building it in memory)")
        for size in (1, 10, 30):
            b, total = publish_cost(folder, size, rng)
            print(f"  {size:3d} MB file   {_ms(total)} ({_ms(b).strip()})")

        kb = f"{args.state / 1e3:.0f} kB state"
        for label, units, state, work in (
                ("no state, no work", args.units, 0, 0.0),
                (f"{kb}, no work", args.units, args.state, 0.0),
                (f"{kb}, {args.work_ms:g} ms work", args.work_units, args.state,
                 args.work_ms / 1e3)):
            r = run(folder, units, args.rows, state, work, rng)
            c, p = r["commit"], np.array(r["publishes"])
            store = c.sum() + r["finish"]
            print(f"{units} commits, {label}: final file {r['size'] / 1e6:.1f} MB")
            print(f"  commit (journal append + fsync, and any publish it triggers): "
                  f"median {_ms(np.median(c)).strip()}, p99 {_ms(np.percentile(c, 99)).strip()},"
                  f" max {_ms(c.max()).strip()}")
            print(f"  publishes {p.size}, mean {_ms(p.mean()).strip()}, total "
                  f"{p.sum():.2f} s; finish {_ms(r['finish']).strip()}")
            if r["work"]:
                print(f"  store time {store:.2f} s against {r['work']:.1f} s of work: overhead "
                      f"{100 * store / r['work']:.1f} %")
            else:
                print(f"  store time {store:.2f} s = {1e3 * store / units:.2f} ms per unit "
                      "(back to back)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
