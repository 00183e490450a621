"""The output file under stress: disk full, read-only, two writers.

A write that fails must say so in one line (DatabaseError, exit code 2 through the CLI), keep
every device committed before it readable, leave the rig safe, and let a re-run resume. A
second process writing the same file is refused at once, and a killed writer never blocks the
next run (the OS drops its lock).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import h5py
import pytest
from reliability_support import (
    PMU_STATION,
    ROOT,
    cli,
    open_station,
    single_thread_blas,  # noqa: F401 (autouse fixture)
    unsafe_parts,
)

from database.errors import DatabaseError
from database.runs import RunWriter, list_runs, read_run
from protocols.campaigns import CAMPAIGNS

DEVICES = [(0, 0), (0, 1), (1, 0), (1, 1)]


def _campaign():
    module, cls = CAMPAIGNS["stuck"]
    return module, cls(devices=DEVICES)


def _disk_full_after(monkeypatch, n_commits: int) -> None:
    """Every dataset write fails with ENOSPC once `n_commits` devices are committed."""
    orig_commit, orig_set = RunWriter.commit_device, h5py.Dataset.__setitem__
    state = {"done": 0}

    def commit(self, device, rows, st=None):
        orig_commit(self, device, rows, st)
        state["done"] = device + 1

    def setitem(self, key, value):
        if state["done"] >= n_commits:
            raise OSError(errno.ENOSPC, "No space left on device")
        orig_set(self, key, value)

    monkeypatch.setattr(RunWriter, "commit_device", commit)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)


def test_disk_full_mid_campaign_keeps_committed_devices_and_resumes(tmp_path, monkeypatch):
    module, cfg = _campaign()
    out = tmp_path / "s.h5"
    st, rig = open_station()
    with monkeypatch.context() as m:
        _disk_full_after(m, 2)
        with pytest.raises(DatabaseError) as ei, rig:
            module.run(rig, cfg, out, seed=0, progress=False)
    msg = str(ei.value)
    assert "disk full" in msg and "2 devices committed before are intact" in msg
    assert "\n" not in msg
    assert unsafe_parts(st) == []
    info, tables = read_run(out)
    assert info.devices_done == 2 and list(tables["devices"].device) == [0, 1]

    st, rig = open_station()
    with rig:
        res = module.run(rig, cfg, out, seed=0, progress=False)
    assert res.resumed_from == 2
    info, tables = read_run(out)
    assert info.complete and list(tables["devices"].device) == [0, 1, 2, 3]


def test_disk_full_through_the_cli_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.h5"
    _disk_full_after(monkeypatch, 1)
    code, _, err = cli(["run", "stuck", "--station", str(PMU_STATION), "-o", str(out),
                        "--device", "0,0", "--device", "0,1", "--no-progress"], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and "disk full" in lines[-1]
    assert list_runs(out)[-1].devices_done == 1


def _read_only_h5(monkeypatch, path):
    """h5py refuses to open `path` for writing as it does for a read-only file."""
    orig = h5py.File.__init__

    def init(self, name, mode="r", *a, **kw):
        if os.fspath(name) == os.fspath(path) and mode != "r":
            raise OSError(f"Unable to synchronously open file (unable to open file: name = "
                          f"'{name}', errno = 13, error message = 'Permission denied', "
                          "flags = 1, o_flags = 2)")
        orig(self, name, mode, *a, **kw)

    monkeypatch.setattr(h5py.File, "__init__", init)


def _interrupted_file(tmp_path, monkeypatch):
    module, cfg = _campaign()
    out = tmp_path / "s.h5"
    st, rig = open_station()
    with monkeypatch.context() as m:
        _disk_full_after(m, 2)
        with pytest.raises(DatabaseError), rig:
            module.run(rig, cfg, out, seed=0, progress=False)
    return out


def test_read_only_output_file_refused_clearly_and_untouched(tmp_path, monkeypatch, capsys):
    out = _interrupted_file(tmp_path, monkeypatch)
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    _read_only_h5(monkeypatch, out)
    code, _, err = cli(["run", "stuck", "--station", str(PMU_STATION), "-o", str(out),
                        *[a for d in DEVICES for a in ("--device", f"{d[0]},{d[1]}")],
                        "--no-progress"], capsys)
    assert code == 2
    line = [ln for ln in err.splitlines() if ln.startswith("error:")][-1]
    assert "read-only" in line and str(out) in line
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before
    assert list_runs(out)[-1].devices_done == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_read_only_file_mode_really_refused(tmp_path, monkeypatch):
    out = _interrupted_file(tmp_path, monkeypatch)
    out.chmod(0o444)
    module, cfg = _campaign()
    st, rig = open_station()
    with pytest.raises(DatabaseError, match="read-only"), rig:
        module.run(rig, cfg, out, seed=0, progress=False)


HOLDER = textwrap.dedent("""
    import sys, time
    from database.runs import RunWriter
    w = RunWriter.open(sys.argv[1], protocol="stuck", config={}, station={}, seed=0,
                       tables={"t": {"x": ("f8", "1")}}, devices_total=3)
    print("locked", flush=True)
    time.sleep(60)
""")


def test_second_process_writing_the_same_file_is_refused(tmp_path, capsys):
    out = tmp_path / "shared.h5"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked", p.stderr.read()
        before = (out.read_bytes(), out.stat().st_mtime_ns)
        with pytest.raises(DatabaseError, match="another xbarlab process"):
            RunWriter.open(out, protocol="stuck", config={}, station={}, seed=0,
                           tables={"t": {"x": ("f8", "1")}}, devices_total=3)
        code, _, err = cli(["run", "stuck", "--station", str(PMU_STATION), "-o", str(out),
                            "--device", "0,0", "--no-progress", "--overwrite"], capsys)
        assert code == 2 and "another xbarlab process" in err
        assert (out.read_bytes(), out.stat().st_mtime_ns) == before   # not even --overwrite
    finally:
        p.kill()
        p.wait()
    # the killed writer's lock died with it: the file can be continued at once
    w = RunWriter.open(out, protocol="stuck", config={}, station={}, seed=0,
                       tables={"t": {"x": ("f8", "1")}}, devices_total=3)
    w.commit_device(0, {"t": {"x": [1.0]}})
    assert w.devices_done == 1


def test_stale_writer_refused_by_the_progress_check(tmp_path):
    """Without OS locks (Windows, some network shares) the commit itself notices that the
    file moved on under it, instead of overwriting the other writer's device."""
    out = tmp_path / "s.h5"
    spec = dict(protocol="p", config={}, station={}, seed=0, tables={"t": {"x": ("f8", "1")}},
                devices_total=3)
    a = RunWriter.open(out, **spec)
    b = RunWriter.open(out, **spec)            # same process: allowed by the lock
    a.commit_device(0, {"t": {"x": [1.0]}})
    with pytest.raises(DatabaseError, match="changed by another process"):
        b.commit_device(0, {"t": {"x": [2.0]}})
    info, tables = read_run(out)
    assert info.devices_done == 1 and list(tables["t"].x) == [1.0]
