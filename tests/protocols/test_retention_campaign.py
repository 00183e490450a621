"""The retention campaign: schedule, curves against the simulator's closed form, the hardware
time base, and resume after SIGKILL at random points."""

import math
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
import pytest

from database.runs import list_runs, read_run, read_table
from protocols.campaigns import retention
from protocols.rig import RealLab
from simulator.config import CrossbarConfig, DeviceParams
from simulator.crossbar import Crossbar
from simulator.direct_rig import SimulatedRig
from simulator.retention import RetentionParams

ROOT = Path(__file__).resolve().parents[2]


def _crossbar(**ret) -> Crossbar:
    # no line resistance (a grounded read is then exactly G * V plus read noise), no volatile
    # excess and no slow fluctuators, so a read is the retention closed form plus read noise
    dev = DeviceParams(volatile_fraction=0.0, volatile_cap=0.0, rtn_count=0,
                       retention=RetentionParams(**ret))
    return Crossbar(CrossbarConfig(rows=4, cols=4, r_line=0.0, r_source=0.0, stuck_hrs_rate=0,
                                   stuck_lrs_rate=0, device=dev), seed=8)


def test_schedule_units_and_levels(tmp_path):
    rig = SimulatedRig(_crossbar())
    cfg = retention.RetentionConfig(devices=[(0, 0), (1, 2), (3, 3)], levels=[150e-6, 300e-6],
                                    first_s=30.0, span_s=7 * 86400.0, reads=8)
    res = retention.run(rig, cfg, tmp_path / "r.h5", progress=False)
    info = list_runs(tmp_path / "r.h5")[-1]
    assert info.complete and info.units_total == 3 + 8 and res.unit == "steps"
    prog, reads = read_table(tmp_path / "r.h5", "programming"), read_table(tmp_path / "r.h5",
                                                                          "reads")
    assert prog.target.tolist() == [150e-6, 300e-6, 150e-6] and prog.converged.all()
    assert len(reads) == 3 * 8
    sched = np.geomspace(30.0, 7 * 86400.0, 8)
    for k, r in reads.groupby("read"):
        assert (r.t_scheduled == sched[k]).all()
        # on the virtual clock each read starts on time and takes a few ms of instrument time
        assert ((r.t_actual >= sched[k]) & (r.t_actual < sched[k] + 0.1)).all()
    # age: since each device's own programming, so the first programmed is the oldest
    first = reads[reads["read"] == 0].set_index("device")
    assert first.age[0] > first.age[1] > first.age[2] >= first.t_actual[2]
    assert np.allclose(reads.drift_rel, (reads.g - prog.g_final[reads.device].to_numpy())
                       / prog.g_final[reads.device].to_numpy())
    assert reads.unix.isna().all()   # no wall clock on a simulated station
    assert res.summary["reads"] == 8 and len(res.summary["by_level"]) == 2


def test_curves_follow_the_configured_model_within_read_noise(tmp_path):
    # strong drift, and half the devices retention failures (drifting up towards 450 uS)
    xb = _crossbar(drift_mean=-0.03, drift_std=0.01, fail_rate=0.5, fail_g_min=250e-6,
                   fail_g_mean=450e-6, fail_g_std=10e-6, fail_tau=3600.0, fail_tau_sigma=0.3)
    rig = SimulatedRig(xb)
    cfg = retention.RetentionConfig(levels=[120e-6, 200e-6, 300e-6, 350e-6], first_s=1.0,
                                    span_s=30 * 86400.0, reads=12)
    retention.run(rig, cfg, tmp_path / "r.h5", seed=2, progress=False)
    reads = read_table(tmp_path / "r.h5", "reads")
    p, ret = xb.config.device, xb._ret
    ups = downs = drifting = 0
    for (r, c), g in reads.groupby(["row", "col"]):
        # the model of simulator/retention.py, written out: the device's constants and the
        # state its last programming pulse left (nothing pulsed it since: reads do not)
        t = g.t.to_numpy()
        gp, tp, nu = float(ret.gp[r, c]), float(ret.tp[r, c]), float(ret.nu[r, c])
        base = float(ret.g_e[r, c]) - float(ret.d_e[r, c])
        if ret.fail[r, c] and gp >= 250e-6:
            want = base + (float(ret.gsat[r, c]) - gp) * (1 - np.exp(-(t - tp)
                                                                       / float(ret.tau[r, c])))
            ups += 1
        else:
            want = base + nu * gp * np.log10(1 + (t - tp) / p.retention.t0)
            downs += 1
        sigma = np.hypot(p.read_noise_rel * want, p.read_noise_abs / 0.2)
        assert np.all(np.abs(g.g.to_numpy() - want) < 5 * sigma), (r, c)
        # and the drift is far beyond the read noise by the end, for every device a pulse
        # programmed (moved by more than reprogram_fraction; a tuning of small steps may not)
        if gp > 0:
            assert abs(want[-1] - want[0]) > 10 * sigma[-1]
            drifting += 1
    assert ups >= 2 and downs >= 2 and drifting >= 14
    # the failures are what the campaign reports as drifting up
    last = reads[reads["read"] == 11]
    flagged = {(int(a), int(b)) for a, b in zip(last.row[last.drift_rel > 0.05],
                                                 last.col[last.drift_rel > 0.05], strict=True)}
    truth = {(int(a), int(b)) for a, b in zip(*np.nonzero(ret.fail & (ret.gp >= 250e-6)),
                                               strict=True)}
    assert flagged == truth


def test_on_hardware_the_command_waits_and_a_resume_reads_late_without_reprogramming(
        tmp_path):
    # a rig on real time (RealLab: time.sleep, nothing to restore), as on a probe station
    def rig():
        return SimulatedRig(_crossbar(), lab=RealLab())

    cfg = retention.RetentionConfig(devices=[(0, 0), (2, 1)], levels=[100e-6, 150e-6],
                                    first_s=0.3, span_s=1.2, reads=3)
    out = tmp_path / "hw.h5"
    r1 = rig()
    orig, calls = r1._read_repeated, {"n": 0}

    def reads_then_crash(*a):
        calls["n"] += 1
        if calls["n"] == 6:   # 2 programming reads, 2 of read 0, then in the second read
            raise KeyboardInterrupt
        return orig(*a)

    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        r1._read_repeated = reads_then_crash
        cfg_short = cfg.model_copy(update={"tune": cfg.tune.model_copy(
            update={"n_inband": 1, "tolerance": 0.5})})
        retention.run(r1, cfg_short, out, progress=False)
    done = list_runs(out)[-1].units_done
    assert done == 3          # both devices programmed, the first read done
    first = read_table(out, "reads")
    assert first.t_actual.iloc[0] >= 0.3 and time.time() - t0 >= 0.3   # it waited, really
    time.sleep(0.5)            # the process is "down" past the second scheduled read (0.6 s)
    r2 = rig()
    res = retention.run(r2, cfg_short, out, progress=False)
    assert res.resumed_from == 3
    prog, reads = read_table(out, "programming"), read_table(out, "reads")
    assert len(prog) == 2      # nothing programmed again
    late = reads[reads["read"] == 1]
    assert (late.t_actual > late.t_scheduled + 0.2).all()   # taken at once, late, and said so
    last = reads[reads["read"] == 2]
    assert (last.t_actual >= last.t_scheduled).all()
    assert np.isfinite(reads.unix).all() and np.isfinite(prog.unix_prog).all()


SCRIPT = textwrap.dedent("""
    import logging
    import sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
    from simulator.config import CrossbarConfig
    from simulator.crossbar import Crossbar
    from simulator.direct_rig import SimulatedRig
    from protocols.campaigns import retention
    rig = SimulatedRig(Crossbar(CrossbarConfig(rows=3, cols=3), seed=4))
    cfg = retention.RetentionConfig(devices=[(0, 0), (1, 1), (2, 0), (0, 2)], reads=10,
                                    first_s=5.0, span_s=3 * 86400.0)
    retention.run(rig, cfg, sys.argv[1], seed=1, progress=False)
""")
N_DEV, N_READS = 4, 10


def _spawn(script: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_random_points_resumes_at_the_next_read_and_equals_uninterrupted(tmp_path):
    script = tmp_path / "campaign.py"
    script.write_text(SCRIPT)
    ref = tmp_path / "ref.h5"
    p = _spawn(script, ref)
    assert p.wait(timeout=120) == 0, p.stderr.read()

    out = tmp_path / "killed.h5"
    rng = random.Random(99)
    logs, kills = [], []
    for _ in range(6):
        p = _spawn(script, out)
        need, seen, lines = rng.randint(1, 3), 0, []
        t_line, per_unit = time.monotonic(), 0.05
        while seen < need:
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
            now = time.monotonic()
            if " done, " in line:
                seen += 1
                per_unit = now - t_line
            t_line = now
        time.sleep(rng.uniform(0.0, per_unit))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        lines += p.communicate()[1].splitlines()
        logs.append(lines)
        kills.append(list_runs(out)[-1].units_done)
    p = _spawn(script, out)
    assert p.wait(timeout=120) == 0, p.stderr.read()
    logs.append(p.stderr.read().splitlines() if p.stderr else [])
    assert len(kills) >= 4 and kills == sorted(kills), kills
    assert any(N_DEV <= k < N_DEV + N_READS for k in kills), "no kill during the reads"
    # once every device was programmed, no resumed run programmed anything again
    for before, lines in zip(kills, logs[1:], strict=False):
        if before >= N_DEV:
            assert not any("programming device" in ln and " done, " in ln for ln in lines)
    info, tables = read_run(out)
    info_ref, ref_tables = read_run(ref)
    assert info.complete and info.units_done == info_ref.units_done == N_DEV + N_READS
    for name, df in ref_tables.items():
        pd.testing.assert_frame_equal(tables[name], df, check_exact=True, obj=name)
    assert len(tables["programming"]) == N_DEV
    assert tables["reads"]["read"].tolist() == [k for k in range(N_READS) for _ in range(N_DEV)]
    assert math.isclose(tables["reads"].t_scheduled.max(), 3 * 86400.0)
