"""Kill a single-device tuning/untuning campaign with SIGKILL at random moments, re-run it until
it finishes, and check what each kill cost and the final file.

The unit of work is one tuning, committed with the simulated chip's state: a kill may lose only
the tuning in progress (every tuning the campaign had logged as committed is in the file), the
resume starts at the first unfinished tuning, and the finished file equals an uninterrupted run
with the same seed, row for row."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from database.runs import list_runs, read_run

ROOT = Path(__file__).resolve().parents[2]
LEVELS, REPEATS = 2, 8
TUNINGS = LEVELS * REPEATS

SCRIPT = textwrap.dedent(f"""
    import logging
    import sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
    from simulator.config import CrossbarConfig
    from simulator.crossbar import Crossbar
    from simulator.direct_rig import SimulatedRig
    from protocols.campaigns import tuning_untuning as tu
    rig = SimulatedRig(Crossbar(CrossbarConfig(rows=1, cols=1), seed=21))
    cfg = tu.TuningUntuningConfig(levels={LEVELS}, repeats={REPEATS}, settle_s=1.0)
    tu.run(rig, cfg, sys.argv[1], seed=5, progress=False)
""")


def _run(script: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_loses_at_most_the_tuning_in_progress(tmp_path):
    script = tmp_path / "campaign.py"
    script.write_text(SCRIPT)
    ref = tmp_path / "ref.h5"
    p = _run(script, ref)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()

    out = tmp_path / "killed.h5"
    rng = random.Random(1234)
    kills = []  # (tunings logged as committed before the kill, tunings in the file after it)
    for _kill in range(5):
        p = _run(script, out)
        # let it commit one or two more tunings, then kill it at a random moment of the next
        # (scaled by how long a tuning took, so a faster machine is still interrupted mid-way)
        need, seen = rng.randint(1, 2), 0
        t_line, per_unit = time.monotonic(), 0.05
        while seen < need:
            line = p.stderr.readline().decode()
            if not line:
                break
            now = time.monotonic()
            if " done, " in line:
                seen += 1
                per_unit = now - t_line
            t_line = now
        time.sleep(rng.uniform(0.0, per_unit))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        _, err = p.communicate()
        logged = sum(" done, " in ln for ln in err.decode().splitlines()) + seen
        resumed = 0 if not kills else kills[-1][1]
        kills.append((resumed + logged, list_runs(out)[-1].units_done))
    p = _run(script, out)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    assert len(kills) >= 4, "the campaign finished before it could be interrupted"
    for logged, in_file in kills:
        # every committed tuning survived; at most the one in progress was lost (a commit
        # finished but not yet logged is the only way to find one more in the file)
        assert logged <= in_file <= logged + 1, kills
    assert 0 < kills[0][1] and kills[-1][1] < TUNINGS, kills

    info_ref, ref_tables = read_run(ref)
    info, tables = read_run(out)
    assert info.complete and info.units_done == info_ref.units_done == TUNINGS
    assert info.units_total == TUNINGS  # the unit is one tuning
    for name, df_ref in ref_tables.items():
        pd.testing.assert_frame_equal(tables[name], df_ref, check_exact=True)
    tun = tables["tunings"]
    keys = list(zip(tun.level, tun.repeat, strict=True))
    assert keys == [(lv, r) for lv in range(LEVELS) for r in range(REPEATS)]
    assert np.isfinite(tun.g_final).all()
