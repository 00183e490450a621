import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from database.runs import list_runs, read_table
from xbarlab.cli import main

STATIONS = Path(__file__).resolve().parents[2] / "xbarlab" / "stations"
PMU = str(STATIONS / "sim-pmu.yaml")


@pytest.fixture(autouse=True)
def _single_thread_blas():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def _cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tune_command(capsys):
    code, out, _ = _cli(["tune", "--station", PMU, "--device", "2,3", "--target", "250e-6",
                         "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["converged"] and abs(res["error_pct"]) <= 1.0 and res["pulses"] > 0
    code, _, err = _cli(["tune", "--station", PMU, "--device", "9,9", "--target", "1e-4"],
                        capsys)
    assert code == 2 and err.strip()


def test_run_build_show_plot(tmp_path, capsys):
    cfg = tmp_path / "tu.yaml"
    cfg.write_text(yaml.safe_dump({"levels": 2, "repeats": 2, "record_history": False}))
    tu, dist, st = tmp_path / "tu.h5", tmp_path / "d.h5", tmp_path / "s.h5"
    code, out, _ = _cli(["run", "tuning-untuning", "--station", PMU, "-o", str(tu), "--config",
                         str(cfg), "--device", "0,0", "--device", "1,1", "--no-progress"], capsys)
    assert code == 0 and "tunings: 8" in out
    assert tu.with_name("tu.h5.log").exists()                # the campaign log, <file>.log
    assert list_runs(tu)[-1].station["name"] == "sim-pmu"
    devs = [a for d in ("0,0", "0,1", "1,0", "1,1") for a in ("--device", d)]
    code, _, _ = _cli(["run", "disturbance", "--station", PMU, "-o", str(dist), "--seed", "3",
                       "--no-progress", *devs], capsys)
    assert code == 0
    assert len(read_table(dist, "samples")) == 6
    code, _, _ = _cli(["run", "stuck", "--station", PMU, "-o", str(st), "--device", "3,3",
                       "--no-progress"], capsys)
    assert code == 0
    # the same complete run asked for again: nothing to do; another run is not written over
    # a complete file without --overwrite
    code, out, _ = _cli(["run", "stuck", "--station", PMU, "-o", str(st), "--device", "3,3",
                         "--no-progress"], capsys)
    assert code == 0 and "already complete" in out
    code, _, err = _cli(["run", "stuck", "--station", PMU, "-o", str(st), "--device", "2,3",
                         "--no-progress"], capsys)
    assert code == 2 and "overwrite" in err
    code, out, _ = _cli(["db", "show", str(tu)], capsys)
    assert code == 0 and "tuning-untuning" in out and "complete" in out
    db = tmp_path / "ni.h5"
    code, out, _ = _cli(["db", "build", str(tu), str(dist), str(st), "-o", str(db)], capsys)
    assert code == 0 and db.exists()
    code, out, _ = _cli(["db", "show", str(db)], capsys)
    assert code == 0 and "disturbance:" in out and "provenance tuning" in out
    code, out, _ = _cli(["db", "plot", str(db), "--out", str(tmp_path / "fig")], capsys)
    assert code == 0
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert pngs == ["disturbance.png", "stuck.png", "tuning.png"]
    assert all((tmp_path / "fig" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_bad_inputs_exit_2(tmp_path, capsys):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"junk")
    code, _, err = _cli(["db", "show", str(junk)], capsys)
    assert code == 2 and "HDF5" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("levels: 0\n")
    code, _, err = _cli(["run", "tuning-untuning", "--station", PMU, "-o",
                         str(tmp_path / "x.h5"), "--config", str(bad)], capsys)
    assert code == 2 and "levels" in err


@pytest.mark.parametrize("station, devices", [("sim-pmu", ["0,0", "2,3"]), ("sim-wgfmu", ["0,0"])])
def test_dc_campaigns_run_on_both_shipped_stations(station, devices, tmp_path, capsys):
    path = str(STATIONS / f"{station}.yaml")
    devs = [a for d in devices for a in ("--device", d)]
    cfg = tmp_path / "iv.yaml"
    cfg.write_text(yaml.safe_dump({"cycles": 1, "v_step": 0.1}))
    for campaign, extra in (("bringup", []), ("iv", ["--config", str(cfg)]), ("forming", [])):
        out = tmp_path / f"{campaign}.h5"
        code, stdout, err = _cli(["run", campaign, "--station", path, "-o", str(out),
                                  "--no-progress", *devs, *extra], capsys)
        assert code == 0, (campaign, err)
        info = list_runs(out)[-1]
        assert info.complete and info.protocol == campaign
        assert info.station["name"] == station and info.snapshot["instruments"]
    lines = read_table(tmp_path / "bringup.h5", "verdict")
    assert len(lines) == len({d[0] for d in devices}) + len({d[2] for d in devices})
    assert (lines.status == 0).all()
    cycles = read_table(tmp_path / "iv.h5", "cycles")
    assert len(cycles) == len(devices) and cycles.set_switched.all()
    formed = read_table(tmp_path / "forming.h5", "devices")
    assert (formed.status == 1).all() and len(formed) == len(devices)  # forming-free chips


@pytest.mark.parametrize("station", ["sim-pmu", "sim-wgfmu"])
def test_run_retention_on_each_shipped_simulated_station(station, tmp_path, capsys):
    """`xbarlab run retention` on both simulated stations: programs, then reads on a log-spaced
    schedule of virtual time (a day in a second)."""
    cfg = tmp_path / "ret.yaml"
    cfg.write_text(yaml.safe_dump({"levels": [150e-6, 300e-6], "span_s": 86400.0, "reads": 5}))
    out = tmp_path / "ret.h5"
    devices = ["--device", "0,0", "--device", "3,5"] if station == "sim-pmu" else []
    code, stdout, err = _cli(["run", "retention", "--station", str(STATIONS / f"{station}.yaml"),
                              "-o", str(out), "--config", str(cfg), "--seed", "2",
                              "--no-progress", *devices], capsys)
    assert code == 0, err
    assert "drift at the last read (24.0 h after programming)" in stdout
    info = list_runs(out)[-1]
    n_dev = 2 if station == "sim-pmu" else 1
    assert info.complete and info.units_done == n_dev + 5
    assert info.station["name"] == station
    prog, reads = read_table(out, "programming"), read_table(out, "reads")
    assert len(prog) == n_dev and prog.converged.all()
    assert len(reads) == 5 * n_dev
    sched = reads.t_scheduled.unique()
    assert sched[0] == pytest.approx(10.0) and sched[-1] == pytest.approx(86400.0)
    assert sched[1:] / sched[:-1] == pytest.approx(np.full(4, sched[1] / sched[0]))  # log-spaced
    # the virtual clock really waited: each read is taken at (not before) its scheduled time
    assert (reads.t_actual >= reads.t_scheduled).all()
    assert (reads.t_actual - reads.t_scheduled).max() < 60.0
    assert reads.t.max() - prog.t_prog.max() >= 86400.0
    assert reads.unix.isna().all() and (reads.drift_rel.abs() < 0.5).all()
