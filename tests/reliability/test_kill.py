"""SIGKILL and SIGINT at random points of every campaign.

`xbarlab run <campaign>` runs in a subprocess on the simulated PMU station and is killed at a
random moment after a random number of finished devices. Then the same command is re-run (in
process, to keep the suite fast) and the file must equal an uninterrupted run: readable after the
kill, no device lost, none duplicated, identical rows (the simulated chip state is committed
with every device).

SIGINT (Ctrl-C) is tested twice: in a subprocess (exit code 130, one line, a resumable file) and
in process by interrupting an instrument call at a random moment, where the emulators' state is
still there to prove that every output is at 0 V and every relay open.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from reliability_support import (
    PMU_STATION,
    ROOT,
    cli,
    ctrl_c_as_in_a_terminal,
    open_station,
    single_thread_blas,  # noqa: F401 (autouse fixture)
    unsafe_parts,
)

from database.runs import list_runs, read_run
from protocols.campaigns import CAMPAIGNS

# enough devices that the run outlives the kill on a loaded machine (the fast station design
# finishes a device in tens of ms)
DEVICES = ["0,0", "0,1", "1,0", "1,1", "2,2", "2,3", "3,2", "3,3"]
#: what a unit of work is, where it is not a device
UNITS = {"tuning-untuning": "tunings", "iv-pulsed": "sweeps", "retention": "steps"}
CONFIGS = {"tuning-untuning": {"levels": 1, "repeats": 2, "record_history": True},
           "disturbance": {"record_history": True}, "stuck": {}, "iv-pulsed": {},
           "iv": {"cycles": 1, "v_step": 0.2, "v_set": 1.2, "v_reset": -1.2}, "bringup": {},
           "forming": {}, "retention": {"levels": [150e-6, 300e-6], "span_s": 3600.0, "reads": 4}}


def _args(campaign, out, cfg):
    return ["run", campaign, "--station", str(PMU_STATION), "-o", str(out), "--config",
            str(cfg), "--seed", "4", "--no-progress",
            *[a for d in DEVICES for a in ("--device", d)]]


def _spawn(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    return subprocess.Popen([sys.executable, "-m", "xbarlab", "-vv", *args], env=env, cwd=ROOT,
                            preexec_fn=ctrl_c_as_in_a_terminal,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_devices(p, n: int) -> None:
    seen = 0
    while seen < n:
        line = p.stderr.readline()
        if not line:
            return
        seen += " done, " in line


def _assert_same(out, ref):
    info, tables = read_run(out)
    info_ref, ref_tables = read_run(ref)
    assert info.complete and info.units_done == info_ref.units_done == info.units_total
    assert tables.keys() == ref_tables.keys()
    for name, df in tables.items():
        pd.testing.assert_frame_equal(df, ref_tables[name], check_exact=True, obj=name)


#: on the shipped (formed, intact) station a bring-up line or a forming check takes
#: milliseconds, so a kill after the n-th unit lands after the last one; their resume is
#: covered in-process by the Ctrl-C test below
QUICK_UNITS = {"bringup", "forming"}


@pytest.mark.slow
@pytest.mark.parametrize("campaign", sorted(set(CAMPAIGNS) - QUICK_UNITS))
def test_sigkill_at_random_point_then_rerun_equals_uninterrupted(campaign, tmp_path, capsys):
    rng = random.Random(hash(campaign) % 1000)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIGS[campaign]))
    ref = tmp_path / "ref.h5"
    assert cli(_args(campaign, ref, cfg), capsys)[0] == 0

    out = tmp_path / "killed.h5"
    p = _spawn(_args(campaign, out, cfg))
    _wait_devices(p, rng.randint(1, 3))
    time.sleep(rng.uniform(0.0, 0.05))
    killed = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert killed, "the campaign finished before it could be killed"
    info = list_runs(out)[-1]                       # readable right after the kill
    assert 1 <= info.units_done < info.units_total and not info.complete
    read_run(out)

    code, stdout, err = cli(_args(campaign, out, cfg), capsys)
    assert code == 0, err
    unit = UNITS.get(campaign, "devices")
    assert f"resumed after {info.units_done} finished {unit}" in stdout
    _assert_same(out, ref)


@pytest.mark.slow
def test_sigint_subprocess_exits_130_and_file_resumes(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIGS["tuning-untuning"]))
    out = tmp_path / "int.h5"
    p = _spawn(_args("tuning-untuning", out, cfg))
    _wait_devices(p, 2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted: instruments left in their safe state" in err.splitlines()
    assert "Traceback" not in err
    info = list_runs(out)[-1]
    assert 2 <= info.units_done < info.units_total
    ref = tmp_path / "ref.h5"
    assert cli(_args("tuning-untuning", ref, cfg), capsys)[0] == 0
    assert cli(_args("tuning-untuning", out, cfg), capsys)[0] == 0
    _assert_same(out, ref)


class _CtrlC:
    """Raises KeyboardInterrupt inside the `n`-th instrument write or query (any instrument):
    Ctrl-C arriving while a command is on its way, the worst moment for a rig."""

    def __init__(self, st, n: int):
        self.left = n
        for res in st.visa_library.sessions.values():
            if hasattr(res, "emulator"):
                emu = res.emulator
                emu.handle = self._wrap(emu.handle)

    def _wrap(self, handle):
        def h(msg):
            self.left -= 1
            if self.left == 0:
                raise KeyboardInterrupt
            return handle(msg)
        return h


@pytest.mark.parametrize("campaign", sorted(CAMPAIGNS))
def test_ctrl_c_inside_an_instrument_call_leaves_the_rig_safe(campaign, tmp_path):
    module, cls = CAMPAIGNS[campaign]
    devices = [tuple(int(x) for x in d.split(",")) for d in DEVICES[:3]]
    cfg = cls(devices=devices, **CONFIGS[campaign])
    rng = np.random.default_rng(sorted(CAMPAIGNS).index(campaign))
    out = tmp_path / "c.h5"
    for attempt in range(3):           # a few random moments, each followed by a resume
        st, rig = open_station()
        _CtrlC(st, int(rng.integers(5, 400)))
        try:
            with rig:
                module.run(rig, cfg, out, seed=1, progress=False)
        except KeyboardInterrupt:
            pass
        assert unsafe_parts(st) == [], (attempt, unsafe_parts(st))
        if out.exists():                # readable after every interruption (no file before
            read_run(out)               # the first unit is committed)
    st, rig = open_station()
    with rig:
        module.run(rig, cfg, out, seed=1, progress=False)
    info, tables = read_run(out)
    assert info.complete and info.units_done == info.units_total
    ref = tmp_path / "ref.h5"
    st, rig = open_station()
    with rig:
        module.run(rig, cfg, ref, seed=1, progress=False)
    _, ref_tables = read_run(ref)
    for name, df in tables.items():
        pd.testing.assert_frame_equal(df, ref_tables[name], check_exact=True, obj=name)


@pytest.mark.parametrize("station", ["sim-wgfmu", "sim-pmu"])
def test_resume_mid_device_through_the_emulated_stack_equals_uninterrupted(station, tmp_path):
    """A tuning/untuning run interrupted inside a device and resumed by a fresh station (a new
    process's instruments: no open session, no relay closed) equals an uninterrupted run: the
    rig re-instates its session and routing from the saved state before the chip and clock
    are restored, so the set-up costs no instrument time the uninterrupted run did not spend."""
    module, cls = CAMPAIGNS["tuning-untuning"]
    cfg = cls(levels=2, repeats=2, settle_s=1.0, devices=[(0, 0)] if station == "sim-pmu"
              else None)
    ref = tmp_path / "ref.h5"
    st, rig = open_station(station)
    with rig:
        module.run(rig, cfg, ref, seed=3, progress=False)
    tun = read_run(ref)[1]["tunings"]
    pulses = (tun.untune_pulses + tun.pulses).tolist()   # pulse_and_read calls per tuning
    out = tmp_path / "out.h5"
    # interrupt half-way through tuning 1, then (resumed at 1) half-way through tuning 2
    for stop in (pulses[0] + pulses[1] // 2, pulses[1] + pulses[2] // 2):
        st, rig = open_station(station)
        calls, orig = {"n": 0}, rig._pulse_and_read

        def pulse_and_read(*a, _orig=orig, _calls=calls, _stop=stop):
            _calls["n"] += 1
            if _calls["n"] == _stop:
                raise KeyboardInterrupt
            return _orig(*a)

        rig._pulse_and_read = pulse_and_read
        with pytest.raises(KeyboardInterrupt), rig:
            module.run(rig, cfg, out, seed=3, progress=False)
    assert list_runs(out)[-1].units_done == 2
    st, rig = open_station(station)
    with rig:
        res = module.run(rig, cfg, out, seed=3, progress=False)
    assert res.resumed_from == 2
    for name, df in read_run(ref)[1].items():
        pd.testing.assert_frame_equal(read_run(out)[1][name], df, check_exact=True, obj=name)


@pytest.mark.slow
def test_sigkill_inside_a_single_device_tuning_campaign_loses_at_most_the_tuning_in_progress(
        tmp_path, capsys):
    """`xbarlab run tuning-untuning` on the single-crosspoint WGFMU station, SIGKILLed several
    times at random moments: every tuning logged as done is in the file after each kill (at
    most the tuning in progress is lost), each re-run resumes at the first unfinished tuning,
    and the finished file equals an uninterrupted run."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"levels": 4, "repeats": 6, "record_history": True}))
    station = str(PMU_STATION.with_name("sim-wgfmu.yaml"))

    def args(out):
        return ["run", "tuning-untuning", "--station", station, "-o", str(out), "--config",
                str(cfg), "--seed", "5", "--no-progress"]

    ref = tmp_path / "ref.h5"
    assert cli(args(ref), capsys)[0] == 0
    total = list_runs(ref)[-1].units_total
    assert total == 24

    out = tmp_path / "killed.h5"
    rng = random.Random(13)
    before, kills = 0, []
    while len(kills) < 4:
        p = _spawn(args(out))
        need, seen, t_line, per_unit = rng.randint(1, 3), 0, None, 0.01
        while seen < need:
            line = p.stderr.readline()
            if not line:
                break
            if " done, " in line:
                seen += 1
                now = time.monotonic()
                per_unit = per_unit if t_line is None else now - t_line  # one tuning's time
                t_line = now
        time.sleep(rng.uniform(0.0, per_unit))   # a random moment inside the next tuning
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        logged = seen + sum(" done, " in ln for ln in p.communicate()[1].splitlines())
        after = list_runs(out)[-1].units_done        # readable right after the kill
        read_run(out)
        # every tuning logged as done survived; at most one more (committed, not yet logged)
        assert before + logged <= after <= before + logged + 1, (before, logged, after)
        assert after < total
        kills.append(after)
        before = after
    assert len(kills) == 4 and kills == sorted(kills), kills

    code, stdout, err = cli(args(out), capsys)
    assert code == 0, err
    assert f"resumed after {before} finished tunings" in stdout
    _assert_same(out, ref)
