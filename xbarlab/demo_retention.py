"""The demo's retention step: program levels on a crossbar of the simulated chip and read it on a
log-spaced schedule (xbarlab/demo.py calls `step_retention`; the database step includes the
run). The span is virtual: the simulated station advances its clock between reads, so a day of
retention takes about a second here."""

from __future__ import annotations

import time
from pathlib import Path

from xbarlab.files import write_json

#: (devices, span [s], reads) per demo size; devices on the diagonal, then on col = row + 1
SIZES = {True: (8, 3600.0, 6), False: (16, 86400.0, 10)}
CROSSBAR = "xbar3"


def step_retention(out: Path, quick: bool, seed: int, *, progress: bool = True):
    """Retention on crossbar xbar3 through the PMU station: `runs/retention-xbar3.h5` and
    `runs/retention.json` (the run's summary, wall and predicted instrument time)."""
    from protocols.campaigns import retention
    from xbarlab.demo import TITLES, StepResult, _station

    t0 = time.perf_counter()
    n, span, reads = SIZES[quick]
    devices = [(i % 8, (i + i // 8) % 8) for i in range(n)]   # spread over rows and columns
    cfg = retention.RetentionConfig(devices=devices, levels=[100e-6, 200e-6, 300e-6, 400e-6],
                                    first_s=10.0, span_s=span, reads=reads)
    st = _station(out / "station" / "sim-pmu.yaml")
    d = out / "runs"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"retention-{CROSSBAR}.h5"
    clock0 = st.chip.clock.now
    with st.open_rig(CROSSBAR) as rig:
        res = retention.run(rig, cfg, path, seed=seed, station=st.describe(CROSSBAR),
                            overwrite=True, progress=progress)
    instrument = st.chip.clock.now - clock0
    run = {"protocol": retention.PROTOCOL, "station": st.name, "crossbar": CROSSBAR,
           "path": str(path.relative_to(out)), "summary": res.summary,
           "wall_s": time.perf_counter() - t0, "instrument_s": instrument}
    listing = write_json(d / "retention.json", [run])
    return StepResult("retention", TITLES["retention"], time.perf_counter() - t0, instrument,
                      [path, listing], {"devices": n, "span_s": span})
