"""Kill a campaign process with SIGKILL at random moments, re-run it until it finishes, and
check the file against an uninterrupted run with the same seed: no device lost or duplicated,
every stored row identical (the simulated chip state is restored with the run's progress)."""

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

SCRIPT = textwrap.dedent("""
    import logging
    import sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")
    from simulator.config import CrossbarConfig
    from simulator.crossbar import Crossbar
    from simulator.direct_rig import SimulatedRig
    from protocols.campaigns import tuning_untuning as tu
    rig = SimulatedRig(Crossbar(CrossbarConfig(rows=3, cols=3), seed=21))
    cfg = tu.TuningUntuningConfig(levels=2, repeats=3, settle_s=1.0)
    tu.run(rig, cfg, sys.argv[1], seed=5, progress=False)
""")


def _run(script: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    script = tmp_path / "campaign.py"
    script.write_text(SCRIPT)
    ref = tmp_path / "ref.h5"
    p = _run(script, ref)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()

    out = tmp_path / "killed.h5"
    rng = random.Random(1234)
    done_seen = []
    for _kill in range(4):
        p = _run(script, out)
        # let it finish 1-2 devices, then kill it at a random moment of the next one (the
        # wait scales with the time a device took, so a faster simulator is still interrupted)
        need, seen = rng.randint(1, 2), 0
        t_line, per_device = time.monotonic(), 0.3
        while seen < need:
            line = p.stderr.readline().decode()
            if not line:
                break
            now = time.monotonic()
            if " done, " in line:
                seen += 1
                per_device = now - t_line   # the line before is the previous device's or set-up
            t_line = now
        time.sleep(rng.uniform(0.0, 0.8 * min(per_device, 0.3)))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        done_seen.append(list_runs(out)[-1].units_done)
    p = _run(script, out)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    assert len(done_seen) >= 3, "the campaign finished before it could be interrupted"
    assert done_seen == sorted(done_seen) and 0 < done_seen[0] and done_seen[-1] < 9, done_seen

    info_ref, ref_tables = read_run(ref)
    info, tables = read_run(out)
    assert info.complete and info.units_done == info_ref.units_done == 9
    for name, df_ref in ref_tables.items():
        pd.testing.assert_frame_equal(tables[name], df_ref, check_exact=True)
    tun = tables["tunings"]
    keys = list(zip(tun.device, tun.level, tun.repeat, strict=True))
    assert len(keys) == len(set(keys)) == 9 * 2 * 3
    assert np.isfinite(tun.g_final).all()
