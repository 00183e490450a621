"""The output file under stress: disk full, readers, damage, wrong resumes, overwrite, two writers.

A write that fails must say so in one line (DatabaseError, exit code 2 through the CLI), keep
every unit committed before it bit-identical, leave the rig safe and let a re-run resume to the
same file an uninterrupted run writes. Readers never stop or endanger the writer. Damage is
detected on read. A second process writing the same file is refused at once, and a killed writer
never blocks the next run (the OS drops its lock).

The disk-full cases run the real command line in a subprocess on a tmpfs mounted at the size
drawn (root only; skipped where mounting is not permitted), so a native crash shows as a signal.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from reliability_support import (
    PMU_STATION,
    ROOT,
    cli,
    open_station,
    single_thread_blas,  # noqa: F401 (autouse fixture)
    unsafe_parts,
)

from database.errors import DatabaseError, SchemaError
from database.runs import RunWriter, list_runs, read_run
from protocols.campaigns import CAMPAIGNS

DEVICES = [(0, 0), (0, 1), (1, 0), (1, 1)]
DIST_ARGS = ["--seed", "3", "--no-progress",
             *[a for d in DEVICES for a in ("--device", f"{d[0]},{d[1]}")]]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           MPLBACKEND="Agg")


def _campaign():
    module, cls = CAMPAIGNS["stuck"]
    return module, cls(devices=DEVICES)


def _dist(out, *extra):
    return ["run", "disturbance", "--station", str(PMU_STATION), "-o", str(out), *DIST_ARGS,
            *extra]


def _xbarlab(args, timeout=300):
    """The CLI in a subprocess: (return code, stdout, stderr); a signal gives a negative code."""
    p = subprocess.run([sys.executable, "-m", "xbarlab", *map(str, args)], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _leftovers(folder, name):
    """Anything the store leaves next to `name` (lock, journal, temp files)."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith((name + ".", "." + name)) and not p.name.endswith(".log"))


def _assert_prefix_of(tables, ref_tables, units):
    """Every stored row equals the reference's row at the same place, exactly."""
    for name, df in tables.items():
        ref = ref_tables[name]
        key = "after" if "after" in ref.columns else "device"
        want = ref[ref[key] < units].reset_index(drop=True)
        pd.testing.assert_frame_equal(df.reset_index(drop=True), want, check_exact=True, obj=name)


def _assert_same(path, ref):
    info, tables = read_run(path)
    info_ref, ref_tables = read_run(ref)
    assert info.complete and info.units_done == info_ref.units_done
    assert tables.keys() == ref_tables.keys()
    _assert_prefix_of(tables, ref_tables, info.units_done)


@contextlib.contextmanager
def tmpfs(folder, size: int):
    """A tmpfs of `size` bytes mounted on `folder` (skips the test where mounting is refused)."""
    folder.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _grow(folder, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


@pytest.fixture(scope="module")
def dist_ref(tmp_path_factory):
    """An uninterrupted disturbance run (4 devices, seed 3) through the CLI."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    code, _, err = _xbarlab(_dist(out))
    assert code == 0, err
    return out


# -- disk full -------------------------------------------------------------------------------

@pytest.mark.slow
def test_disk_full_on_a_tmpfs_at_random_sizes(dist_ref, tmp_path, capsys):
    """No crash, one line, committed units bit-identical; after freeing space the re-run
    resumes and the file equals an uninterrupted run."""
    rng = random.Random(11)
    full = dist_ref.stat().st_size
    for case in range(3):
        size = int(rng.uniform(0.05, 2.0) * full) + 4096
        with tmpfs(tmp_path / f"m{case}", size) as mnt:
            out = mnt / "d.h5"
            code, _, err = _xbarlab(_dist(out))
            assert code in (0, 2), (size, code, err[-3000:])   # a signal would be negative
            assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
            if code == 2:
                lines = [ln for ln in err.splitlines() if ln.strip()]
                assert lines[-1].startswith("error:") and "disk full" in lines[-1], err
                assert "\n" not in lines[-1]
            if out.exists():
                info, tables = read_run(out)          # committed units are intact and exact
                _assert_prefix_of(tables, read_run(dist_ref)[1], info.units_done)
            _grow(mnt, 64 << 20)
            code, _, err = cli([str(a) for a in _dist(out)], capsys)
            assert code == 0, err
            _assert_same(out, dist_ref)
            assert _leftovers(mnt, "d.h5") == []


def _enospc_after(monkeypatch, n_bytes: int) -> None:
    """Every write by the store fails with ENOSPC once `n_bytes` were written (os.write is what
    the store writes with; HDF5 itself never writes to disk)."""
    left = {"n": n_bytes}
    orig = os.write

    def write(fd, data):
        if left["n"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), left["n"])
        left["n"] -= n
        return orig(fd, bytes(memoryview(data)[:n]))

    monkeypatch.setattr("database.store_io.os.write", write)


def test_disk_full_mid_campaign_keeps_committed_units_and_resumes(tmp_path, monkeypatch):
    module, cfg = _campaign()
    ref = tmp_path / "ref.h5"
    st, rig = open_station()
    with rig:
        module.run(rig, cfg, ref, seed=0, progress=False)
    for budget in (20_000, 60_000, 90_000):
        out = tmp_path / f"s{budget}.h5"
        st, rig = open_station()
        with monkeypatch.context() as m:
            _enospc_after(m, budget)
            with pytest.raises(DatabaseError) as ei, rig:
                module.run(rig, cfg, out, seed=0, progress=False)
        msg = str(ei.value)
        assert "disk full" in msg and "\n" not in msg
        assert unsafe_parts(st) == []
        done = list_runs(out)[-1].units_done if out.exists() else 0
        assert f"the {done} units committed before are intact" in msg
        st, rig = open_station()
        with rig:
            res = module.run(rig, cfg, out, seed=0, progress=False)
        assert res.resumed_from == done
        _assert_same(out, ref)
        assert _leftovers(tmp_path, out.name) == []


def test_disk_full_through_the_cli_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.h5"
    _enospc_after(monkeypatch, 30_000)
    code, _, err = cli(["run", "stuck", "--station", str(PMU_STATION), "-o", str(out),
                        "--device", "0,0", "--device", "0,1", "--no-progress"], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "disk full" in lines[-1]


# -- readers ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_readers_during_a_whole_campaign_never_stop_it(dist_ref, tmp_path):
    """h5py holding the file open (default HDF5 locking) and a loop of `xbarlab db show` while
    the campaign writes: the campaign completes, every unit is kept, every read is consistent."""
    out = tmp_path / "d.h5"
    writer = subprocess.Popen([sys.executable, "-m", "xbarlab", *_dist(out)], env=ENV, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shows, held, seen = [], 0, []
    rng = random.Random(5)
    try:
        while writer.poll() is None:
            if not out.exists():
                time.sleep(0.01)
                continue
            show = subprocess.Popen([sys.executable, "-m", "xbarlab", "db", "show", str(out)],
                                    env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            with h5py.File(out, "r") as f:          # the default: HDF5 file locking on
                held += 1
                assert f.attrs["kind"] == "xbarlab-runs"
                time.sleep(rng.uniform(0.05, 0.4))
            info, tables = read_run(out)            # a consistent committed prefix
            seen.append(info.units_done)
            _assert_prefix_of(tables, read_run(dist_ref)[1], info.units_done)
            shows.append(show.communicate(timeout=60))
            assert show.returncode == 0, shows[-1]
    finally:
        if writer.poll() is None:
            writer.kill()
        _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-3000:]
    assert held and shows and seen == sorted(seen)
    _assert_same(out, dist_ref)


# -- damage ----------------------------------------------------------------------------------

FLIPS = textwrap.dedent("""
    import json, random, shutil, sys
    from pathlib import Path
    from database.errors import SchemaError
    from database.runs import RunWriter, list_runs, read_run

    src, work, n, seed, spec = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \\
        int(sys.argv[4]), json.loads(sys.argv[5])

    def read(p):
        info, tables = read_run(p)
        w = RunWriter.open(p, **spec)
        try:
            state = w.saved_state()
        finally:
            w.close()
        return info, {k: v.to_dict("list") for k, v in tables.items()}, state

    def same(a, b):
        return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True,
                                                                         default=repr)

    ref = read(src)
    data = src.read_bytes()
    rng = random.Random(seed)
    out = {"detected": 0, "harmless": 0, "undetected": [], "not_one_line": []}
    for i in range(n):
        pos = rng.randrange(len(data))
        bad = bytearray(data)
        bad[pos] ^= rng.randrange(1, 256)
        p = work / f"flip{i % 4}.h5"
        p.write_bytes(bytes(bad))
        try:
            got = read(p)
        except SchemaError as e:
            out["detected"] += 1
            if "\\n" in str(e) or str(p) not in str(e):
                out["not_one_line"].append(str(e))
            continue
        info_a, tab_a, st_a = ref
        info_b, tab_b, st_b = got
        if same(info_a.__dict__, info_b.__dict__) and same(tab_a, tab_b) and st_a == st_b:
            out["harmless"] += 1
        else:
            out["undetected"].append(pos)
    print(json.dumps(out))
""")


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "unfinished"])
def test_random_byte_flips_are_detected_or_harmless(tmp_path, finished):
    """Every flip either raises a one-line SchemaError naming the file, or the data read
    (run attributes, every table, the saved chip state) equal the original exactly. Run in a
    subprocess, so a native crash on a damaged file shows as a signal."""
    module, cfg = _campaign()
    out = tmp_path / "s.h5"
    st, rig = open_station()
    with rig:
        if finished:
            module.run(rig, cfg, out, seed=0, station={"name": "sim"}, progress=False)
        else:
            with pytest.raises(KeyboardInterrupt):
                _interrupt_after(module, rig, cfg, out, st, 2)
    spec = dict(protocol="stuck", config=cfg.model_dump(mode="json"),
                station={"name": "sim"} if finished else {}, seed=0,
                tables={"devices": module.DEVICES_COLUMNS}, units_total=len(DEVICES))
    p = subprocess.run([sys.executable, "-c", FLIPS, str(out), str(tmp_path), "100", "3",
                        json.dumps(spec)], env=ENV, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])
    res = json.loads(p.stdout.splitlines()[-1])
    assert res["undetected"] == [] and res["not_one_line"] == [], res
    assert res["detected"] > 0 and res["detected"] + res["harmless"] == 100


def _interrupt_after(module, rig, cfg, out, st, n_units):
    """Run the campaign and stop it with Ctrl-C right after `n_units` committed units."""
    orig = RunWriter.commit

    def commit(self, unit, rows, state=None):
        orig(self, unit, rows, state)
        if unit + 1 == n_units:
            raise KeyboardInterrupt

    RunWriter.commit = commit
    try:
        module.run(rig, cfg, out, seed=0, progress=False)
    finally:
        RunWriter.commit = orig


def _unfinished(tmp_path, n_units=2):
    module, cfg = _campaign()
    out = tmp_path / "u.h5"
    st, rig = open_station()
    with pytest.raises(KeyboardInterrupt), rig:
        _interrupt_after(module, rig, cfg, out, st, n_units)
    return out


def _del_column(f):
    del f["runs/run0/devices/g_initial"]


def _bad_progress(f):
    f["runs/run0"].attrs["progress"] = "{not json"


def _bad_state(f):
    ds = f["runs/run0/_state"]
    data = ds[()]
    data[len(data) // 2] ^= 0xFF
    del f["runs/run0/_state"]
    f["runs/run0"].create_dataset("_state", data=data)


@pytest.mark.parametrize("damage", [_del_column, _bad_progress, _bad_state],
                         ids=["deleted-column", "damaged-progress", "damaged-state"])
def test_rerun_of_a_damaged_unfinished_file_is_one_line(damage, tmp_path, capsys):
    out = _unfinished(tmp_path)
    with h5py.File(out, "r+") as f:
        damage(f)
    before = out.read_bytes()
    code, _, err = cli(["run", "stuck", "--station", str(PMU_STATION), "-o", str(out),
                        *[a for d in DEVICES for a in ("--device", f"{d[0]},{d[1]}")],
                        "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err, err
    line = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and str(out) in line[0], err
    assert out.read_bytes() == before
    assert _leftovers(tmp_path, out.name) == []


# -- resume binding, overwrite, complete -----------------------------------------------------

def test_resume_with_another_station_is_refused_naming_the_field(tmp_path, capsys):
    """A run is bound to its station: re-running an interrupted run with a station file whose
    limits differ is refused, naming the field; the file is left as it was."""
    module, cfg = _campaign()
    out = tmp_path / "u.h5"
    st, rig = open_station()
    orig = RunWriter.commit

    def commit(self, unit, rows, state=None):
        orig(self, unit, rows, state)
        if unit == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as m, pytest.raises(KeyboardInterrupt), rig:
        m.setattr(RunWriter, "commit", commit)
        module.run(rig, cfg, out, seed=0, station=st.describe(), progress=False)
    station = yaml.safe_load(PMU_STATION.read_text())
    station["limits"]["v_set_max"] = 2.0
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(station))
    before = out.read_bytes()
    code, _, err = cli(["run", "stuck", "--station", str(other), "-o", str(out), "--seed", "0",
                        *[a for d in DEVICES for a in ("--device", f"{d[0]},{d[1]}")],
                        "--no-progress"], capsys)
    assert code == 2
    assert "station.limits.v_set_max: file has 2.1, this run 2.0" in err, err
    assert out.read_bytes() == before and _leftovers(tmp_path, out.name) == []


def test_overwrite_with_an_invalid_config_keeps_the_finished_file(tmp_path, capsys):
    out = tmp_path / "done.h5"
    base = ["run", "stuck", "--station", str(PMU_STATION), "-o", str(out), "--device", "0,0",
            "--no-progress"]
    assert cli(base, capsys)[0] == 0
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"tune": {"v_set_max": 2.5}}))
    code, _, err = cli(base + ["--overwrite", "--config", str(cfg)], capsys)
    assert code == 2 and "Traceback" not in err
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert _leftovers(tmp_path, out.name) == []
    assert list_runs(out)[-1].complete


def test_complete_run_asked_again_is_reported_complete_and_untouched(tmp_path):
    module, cfg = _campaign()
    out = tmp_path / "s.h5"
    st, rig = open_station()
    with rig:
        first = module.run(rig, cfg, out, seed=0, progress=False)
    assert not first.already_complete
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    st, rig = open_station()
    with rig:
        again = module.run(rig, cfg, out, seed=0, progress=False)
    assert again.already_complete and again.summary == first.summary
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert _leftovers(tmp_path, out.name) == []
    st, rig = open_station()
    with pytest.raises(DatabaseError, match="seed: file has 0, this run 1"), rig:
        module.run(rig, cfg, out, seed=1, progress=False)


# -- read-only, two writers ------------------------------------------------------------------

def test_read_only_filesystem_refused_clearly_and_untouched(tmp_path):
    mnt = tmp_path / "ro"
    src = _unfinished(tmp_path)
    with tmpfs(mnt, 16 << 20):
        out = mnt / "u.h5"
        out.write_bytes(src.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        module, cfg = _campaign()
        st, rig = open_station()
        with pytest.raises(DatabaseError) as ei, rig:
            module.run(rig, cfg, out, seed=0, progress=False)
        assert "read-only" in str(ei.value) and str(out) in str(ei.value)
        assert out.read_bytes() == src.read_bytes()
        assert list_runs(out)[-1].units_done == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_read_only_file_mode_really_refused(tmp_path):
    out = _unfinished(tmp_path)
    out.chmod(0o444)
    module, cfg = _campaign()
    st, rig = open_station()
    with pytest.raises(DatabaseError, match="read-only"), rig:
        module.run(rig, cfg, out, seed=0, progress=False)


HOLDER = textwrap.dedent("""
    import sys, time
    from database.runs import RunWriter
    w = RunWriter.open(sys.argv[1], protocol="stuck", config={}, station={}, seed=0,
                       tables={"t": {"x": ("f8", "1")}}, units_total=3)
    w.commit(0, {"t": {"x": [1.0]}})
    print("locked", flush=True)
    time.sleep(60)
""")


def test_second_process_writing_the_same_file_is_refused(tmp_path, capsys):
    out = tmp_path / "shared.h5"
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=ENV, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spec = dict(protocol="stuck", config={}, station={}, seed=0,
                tables={"t": {"x": ("f8", "1")}}, units_total=3)
    try:
        assert p.stdout.readline().strip() == "locked", p.stderr.read()
        before = (out.read_bytes(), out.stat().st_mtime_ns)
        with pytest.raises(DatabaseError, match="another xbarlab process"):
            RunWriter.open(out, **spec)
        code, _, err = cli(["run", "stuck", "--station", str(PMU_STATION), "-o", str(out),
                            "--device", "0,0", "--no-progress", "--overwrite"], capsys)
        assert code == 2 and "another xbarlab process" in err
        assert (out.read_bytes(), out.stat().st_mtime_ns) == before   # not even --overwrite
    finally:
        p.kill()
        p.wait()
    # the killed writer's lock died with it: the file can be continued at once
    w = RunWriter.open(out, **spec)
    assert w.units_done == 1
    w.commit(1, {"t": {"x": [2.0]}})
    w.close()
    assert list_runs(out)[-1].units_done == 2


def test_stale_writer_refused(tmp_path):
    """A second writer of the same file in this process (or, where OS locks are missing, in
    another one) is noticed at its next commit instead of overwriting the other's units."""
    out = tmp_path / "s.h5"
    spec = dict(protocol="p", config={}, station={}, seed=0, tables={"t": {"x": ("f8", "1")}},
                units_total=3)
    a = RunWriter.open(out, **spec)
    b = RunWriter.open(out, **spec)            # same process: allowed by the lock
    a.commit(0, {"t": {"x": [1.0]}})
    with pytest.raises(DatabaseError, match="changed by another writer"):
        b.commit(0, {"t": {"x": [2.0]}})
    a.commit(1, {"t": {"x": [3.0]}})
    c = RunWriter.open(out, **spec)            # continues from what a committed
    assert c.units_done == 2
    c.commit(2, {"t": {"x": [4.0]}})
    with pytest.raises(DatabaseError, match="changed by another writer"):
        a.commit(2, {"t": {"x": [5.0]}})
    a.close()                                  # the stale writer does not release c's lock
    assert (tmp_path / "s.h5.lock").exists()
    c.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    info, tables = read_run(out)
    assert info.complete and list(tables["t"].x) == [1.0, 3.0, 4.0]


def test_progress_check_rejects_a_file_damaged_on_disk(tmp_path):
    """An impossible progress record is a one-line SchemaError naming the file."""
    module, cfg = _campaign()
    out = tmp_path / "s.h5"
    st, rig = open_station()
    with rig:
        module.run(rig, cfg, out, seed=0, progress=False)
    for done in (67, -5):
        bad = tmp_path / f"bad{done}.h5"
        bad.write_bytes(out.read_bytes())
        with h5py.File(bad, "r+") as f:
            p = json.loads(f["runs/run0"].attrs["progress"])
            p["units_done"] = done
            f["runs/run0"].attrs["progress"] = json.dumps(p)
        with pytest.raises(SchemaError) as ei:
            list_runs(bad)
        assert str(bad) in str(ei.value) and "\n" not in str(ei.value)
    assert np.all(read_run(out)[1]["devices"].device.to_numpy() == np.arange(4))
