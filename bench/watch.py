"""What following a run costs (prints figures): the live view's poll and `xbarlab plot`.

1. a real V/3 disturbance run (12x12 simulated crossbar, pulse history on): file size, the copy,
   reading it and building its view (in process), one `Follower.poll` round trip (copy + the
   reader process), `plot_run` (every PNG);
2. a large tuning-like file (`--history-rows` rows of pulse history written through RunWriter,
   as a long tuning/untuning campaign leaves): the same figures, to see how they grow;
3. a campaign with a live server following it in the same process (`--watch`), against the
   same campaign alone: the wall-time cost to the writer (simulated rig, so CPU-bound: the
   worst case; on hardware the campaign waits on instruments).

Usage: python bench/watch.py [--history-rows 500000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(1, user_api="blas")

from database.plots import plot_run  # noqa: E402
from database.runs import RunWriter  # noqa: E402
from protocols.campaigns import disturbance  # noqa: E402
from protocols.campaigns.common import HISTORY_COLUMNS  # noqa: E402
from protocols.campaigns.tuning_untuning import TUNINGS_COLUMNS  # noqa: E402
from simulator.config import CrossbarConfig  # noqa: E402
from simulator.crossbar import Crossbar  # noqa: E402
from simulator.direct_rig import SimulatedRig  # noqa: E402
from xbarlab.follow import Follower, read_view  # noqa: E402


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def campaign(path: Path, n: int = 8) -> None:
    disturbance.run(SimulatedRig(Crossbar(CrossbarConfig(rows=n, cols=n), seed=1)),
                    disturbance.DisturbanceConfig(), path, seed=1, progress=False,
                    overwrite=True, station={"name": "bench", "shape": [n, n]})


def large(path: Path, history_rows: int, devices: int = 4) -> None:
    rng = np.random.default_rng(0)
    per = history_rows // devices
    tunings = 320
    w = RunWriter.open(path, protocol="tuning-untuning", config={"tune": {"tolerance": 0.01}},
                       station={"shape": [1, devices]}, seed=0,
                       tables={"tunings": TUNINGS_COLUMNS, "history": HISTORY_COLUMNS},
                       units_total=devices)
    for d in range(devices):
        target = np.repeat(np.linspace(100e-6, 400e-6, 8), tunings // 8)
        tun = {c: np.zeros(tunings, dtype=np.dtype(t)) for c, (t, _) in TUNINGS_COLUMNS.items()}
        tun.update(device=np.full(tunings, d), col=np.full(tunings, d), target=target,
                   converged=np.ones(tunings, bool), g_final=target * 1.002,
                   g_settled=target * (1 + rng.normal(0, 0.005, tunings)),
                   pulses=rng.integers(20, 200, tunings))
        hist = {c: np.zeros(per, dtype=np.dtype(t)) for c, (t, _) in HISTORY_COLUMNS.items()}
        hist.update(device=np.full(per, d), tuning=np.sort(rng.integers(0, tunings, per))
                    + d * tunings, phase=np.ones(per, np.int8), g=rng.uniform(80e-6, 420e-6, per))
        w.commit(d, {"tunings": tun, "history": hist})
    w.finish({})


def figures(label: str, path: Path, tmp: Path) -> None:
    size = path.stat().st_size / 2**20
    copy = timed(lambda: shutil.copyfile(path, tmp / "copy.h5"))
    read = timed(lambda: read_view(str(path), None))
    f = Follower(path, read_timeout_s=600)
    try:
        f.poll()  # starts the reader process
        def poll():
            f._sig = None  # force a re-read: what one commit costs the follower
            f.poll()
        one = timed(poll)
    finally:
        f.close()
    t = time.perf_counter()
    _, pngs = plot_run(path, out_dir=tmp / "png")
    plot = time.perf_counter() - t
    print(f"{label}: file {size:.1f} MiB; copy {copy * 1e3:.0f} ms, read + view {read * 1e3:.0f} "
          f"ms, one poll (copy + reader process) {one * 1e3:.0f} ms; plot {len(pngs)} PNGs "
          f"{plot:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history-rows", type=int, default=500_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        campaign(tmp / "dist.h5", 12)
        alone = time.perf_counter() - t
        figures("disturbance 12x12 (144 devices, history)", tmp / "dist.h5", tmp)
        large(tmp / "large.h5", args.history_rows)
        figures(f"tuning-like, {args.history_rows:,} history rows", tmp / "large.h5", tmp)

        from xbarlab.live import LiveServer

        path = tmp / "watched.h5"
        server = LiveServer(path, port=0).start()  # default poll: 1 s
        try:
            t = time.perf_counter()
            campaign(path, 12)
            watched = time.perf_counter() - t
            polls = server.follower.snapshot.version
        finally:
            server.stop()
        print(f"campaign alone {alone:.1f} s, with a live server (default 1 s poll) "
              f"{watched:.1f} s ({100 * (watched / alone - 1):+.0f} %, {polls} snapshots read)")


if __name__ == "__main__":
    main()
