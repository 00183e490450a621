import errno
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import database.runs as runs
from database.errors import DatabaseError, SchemaError
from database.runs import RunWriter, list_runs, read_run, read_table

TABLES = {"t": {"device": ("i4", "1"), "g": ("f8", "S"), "ok": ("?", "1")}}
DATA = Path(__file__).parent / "data"


def _spec(**kw):
    args = dict(protocol="demo", config={"a": 1, "tune": {"v": 2.0}},
                station={"name": "sim", "crossbar": "xbar0", "path": "/a/st.yaml"}, seed=7,
                tables=TABLES, units_total=3)
    args.update(kw)
    return args


def _open(path, **kw):
    return RunWriter.open(path, **_spec(**kw))


def _rows(i, n=2):
    return {"t": {"device": [i] * n, "g": np.arange(n) * 1e-6 + i, "ok": [True] * n}}


def _leftovers(folder, name="r.h5"):
    return sorted(p.name for p in folder.iterdir() if p.name != name)


@pytest.fixture
def no_publish(monkeypatch):
    """Commits stay in the journal (only the first commit, finish and close publish)."""
    monkeypatch.setattr(runs, "PUBLISH_RATIO", float("inf"))


def test_roundtrip_attributes_units_and_dataframe(tmp_path):
    p = tmp_path / "r.h5"
    w = _open(p)
    for i in range(3):
        w.commit(i, _rows(i), state=b"state%d" % i)
    w.finish({"n": 3})
    info, tables = read_run(p)
    assert info.protocol == "demo" and info.config == {"a": 1, "tune": {"v": 2.0}}
    assert info.seed == 7 and info.format_version == runs.FORMAT_VERSION
    assert info.complete and info.units_done == info.units_total == 3
    assert info.summary == {"n": 3} and info.rows == {"t": 6}
    assert info.start_time and info.end_time and info.software_version
    df = tables["t"]
    assert list(df.columns) == ["device", "g", "ok"] and len(df) == 6
    assert df.attrs["units"] == {"device": "1", "g": "S", "ok": "1"}
    assert df.device.tolist() == [0, 0, 1, 1, 2, 2]
    with h5py.File(p, "r") as f:
        assert f.id.get_create_plist().get_version()[0] >= 3     # checksummed superblock
        for ds in f["runs/run0/t"].values():
            assert ds.attrs["units"] and ds.fletcher32
        assert f["runs/run0/_state"].fletcher32
    assert _leftovers(tmp_path) == []


def test_files_get_normal_permissions(tmp_path):
    from database.nonideality import save_nonideality
    from database.reference import import_reference

    old = os.umask(0o022)
    try:
        w = _open(tmp_path / "r.h5")
        w.commit(0, _rows(0))
        w.close()
        save_nonideality(import_reference(), tmp_path / "db.h5")
    finally:
        os.umask(old)
    assert (tmp_path / "r.h5").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "db.h5").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("change,field", [
    ({"protocol": "other"}, "protocol: file has 'demo', this run 'other'"),
    ({"seed": 8}, "seed: file has 7, this run 8"),
    ({"seed": None}, "seed: file has 7, this run None"),
    ({"units_total": 4}, "units_total: file has 3, this run 4"),
    ({"config": {"a": 1, "tune": {"v": 2.5}}}, "config.tune.v: file has 2.0, this run 2.5"),
    ({"config": {"a": 1}}, "config.tune: file has {'v': 2.0}, this run None"),
    ({"station": {"name": "sim", "crossbar": "xbar1", "path": "/a/st.yaml"}},
     "station.crossbar: file has 'xbar0', this run 'xbar1'"),
])
def test_resume_refuses_other_settings_naming_the_field(tmp_path, change, field):
    p = tmp_path / "r.h5"
    w = _open(p)
    w.commit(0, _rows(0))
    w.close()
    before = p.read_bytes()
    with pytest.raises(DatabaseError) as ei:
        _open(p, **change)
    assert field in str(ei.value) and "\n" not in str(ei.value)
    assert p.read_bytes() == before and _leftovers(tmp_path) == []
    # the station file's own path is not part of the binding (the same station, moved)
    w = _open(p, station={"name": "sim", "crossbar": "xbar0", "path": "/b/moved.yaml"})
    assert w.units_done == 1
    w.close()


def test_complete_run_asked_again(tmp_path):
    p = tmp_path / "r.h5"
    w = _open(p)
    for i in range(3):
        w.commit(i, _rows(i))
    w.finish({"n": 3})
    assert not w.already_complete
    before = (p.read_bytes(), p.stat().st_mtime_ns)
    again = _open(p)
    assert again.already_complete and again.units_done == 3 and again.info.summary == {"n": 3}
    assert len(again.table("t")) == 6
    with pytest.raises(DatabaseError, match="complete"):
        again.commit(3, _rows(3))
    again.finish({"n": "ignored"})
    assert (p.read_bytes(), p.stat().st_mtime_ns) == before and _leftovers(tmp_path) == []
    with pytest.raises(DatabaseError, match="complete.*config.a: file has 1, this run 2"):
        _open(p, config={"a": 2, "tune": {"v": 2.0}})


def test_overwrite_keeps_the_old_file_until_the_first_commit(tmp_path):
    p = tmp_path / "r.h5"
    w = _open(p)
    for i in range(3):
        w.commit(i, _rows(i))
    w.finish()
    before = (p.read_bytes(), p.stat().st_mtime_ns)
    # a new run that fails before its first commit: the old file stays, nothing is left over
    w = _open(p, overwrite=True, config={"b": 1})
    assert w.units_done == 0 and not w.already_complete
    assert (p.read_bytes(), p.stat().st_mtime_ns) == before
    w.close()
    assert (p.read_bytes(), p.stat().st_mtime_ns) == before and _leftovers(tmp_path) == []
    # the first commit replaces it atomically
    w = _open(p, overwrite=True, config={"b": 1})
    w.commit(0, _rows(5))
    info, tables = read_run(p)
    assert info.config == {"b": 1} and info.units_done == 1 and tables["t"].device.tolist() == [5, 5]
    w.close()


def test_failed_open_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "new" / "deeper"
    with pytest.raises(DatabaseError, match="at least one unit"):
        _open(folder / "r.h5", units_total=0)
    w = _open(folder / "r.h5")
    w.close()                       # opened, never committed: no file, no lock, no folder
    assert not (tmp_path / "new").exists()


def test_commit_order_and_column_checks(tmp_path):
    w = _open(tmp_path / "r.h5")
    with pytest.raises(DatabaseError, match="lost or duplicated"):
        w.commit(1, _rows(1))
    with pytest.raises(DatabaseError, match="columns"):
        w.commit(0, {"t": {"device": [0], "g": [1.0]}})
    with pytest.raises(DatabaseError, match="lengths"):
        w.commit(0, {"t": {"device": [0, 0], "g": [1.0], "ok": [True]}})
    w.commit(0, _rows(0))
    assert w.units_done == 1
    w.close()


def test_readers_see_journal_commits_and_a_resume_continues(tmp_path, no_publish):
    p = tmp_path / "r.h5"
    w = _open(p)
    for i in range(2):
        w.commit(i, _rows(i), state=b"after%d" % i)
    # unit 0 was published (the first commit), unit 1 is only in the journal: still committed
    assert list_runs(p)[-1].units_done == 2
    assert read_table(p, "t").device.tolist() == [0, 0, 1, 1]
    del w                           # as if the process were killed: nothing more is written
    w2 = _open(p)
    assert w2.units_done == 2 and w2.saved_state() == b"after1"
    w2.commit(2, _rows(2), state=b"after2")
    w2.finish()
    info, tables = read_run(p)
    assert info.complete and tables["t"].device.tolist() == [0, 0, 1, 1, 2, 2]
    assert _leftovers(tmp_path) == []


def test_torn_journal_tail_is_the_unit_in_progress(tmp_path, no_publish):
    p = tmp_path / "r.h5"
    journal = p.with_name(p.name + ".journal")
    w = _open(p)
    w.commit(0, _rows(0))                       # published
    w.commit(1, _rows(1), state=b"one")         # journal record 1
    first = journal.stat().st_size
    w.commit(2, _rows(2), state=b"two")         # journal record 2
    whole = journal.read_bytes()
    del w                                       # killed: nothing more written
    for cut in (first + 1, first + 20, len(whole) - 1):
        journal.write_bytes(whole[:cut])        # record 2's append killed half-way
        assert list_runs(p)[-1].units_done == 2
        w = _open(p)
        assert w.units_done == 2 and w.saved_state() == b"one"
        assert journal.stat().st_size == first  # the torn record is gone
        del w


def test_damaged_journal_is_refused_in_one_line(tmp_path, no_publish):
    p = tmp_path / "r.h5"
    w = _open(p)
    w.commit(0, _rows(0))
    w.commit(1, _rows(1))
    w.commit(2, _rows(2))
    journal = p.with_name(p.name + ".journal")
    data = bytearray(journal.read_bytes())
    del w
    data[40] ^= 0x10                           # inside the first of two records
    journal.write_bytes(bytes(data))
    with pytest.raises(SchemaError) as ei:
        _open(p)
    assert str(journal) in str(ei.value) and "\n" not in str(ei.value)
    # readers still see the published, undamaged part
    assert list_runs(p)[-1].units_done == 1


@pytest.mark.parametrize("budget", [0, 7, 25, 60, 200, 1000, 5000])
def test_enospc_inside_a_commit_keeps_committed_units(tmp_path, monkeypatch, budget, no_publish):
    """The disk fills up after `budget` more bytes: the commit fails in one line, everything
    committed before is untouched, and a resume ends with the same file as an uninterrupted
    run."""
    ref = tmp_path / "ref.h5"
    w = _open(ref)
    for i in range(3):
        w.commit(i, _rows(i, 50), state=bytes([i]) * 300)
    w.finish({"n": 3})
    p = tmp_path / "r.h5"
    w = _open(p)
    w.commit(0, _rows(0, 50), state=bytes([0]) * 300)
    w.commit(1, _rows(1, 50), state=bytes([1]) * 300)
    before = read_run(p)
    orig = os.write
    left = {"n": budget}

    def write(fd, data):
        if left["n"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), left["n"])
        left["n"] -= n
        return orig(fd, bytes(memoryview(data)[:n]))

    with monkeypatch.context() as m:
        m.setattr(os, "write", write)
        with pytest.raises(DatabaseError) as ei:
            w.commit(2, _rows(2, 50), state=bytes([2]) * 300)
            w.finish({"n": 3})
        msg = str(ei.value)
        assert "disk full" in msg and "\n" not in msg
        w.close()
    after = read_run(p)
    assert after[0].units_done >= 2
    for name, df in before[1].items():
        pd.testing.assert_frame_equal(after[1][name].iloc[: len(df)], df, check_exact=True)
    w = _open(p)
    for i in range(w.units_done, 3):
        w.commit(i, _rows(i, 50), state=bytes([i]) * 300)
    assert w.saved_state() == bytes([2]) * 300
    w.finish({"n": 3})
    got, want = read_run(p), read_run(ref)
    assert got[0].units_done == 3 and got[0].summary == want[0].summary
    pd.testing.assert_frame_equal(got[1]["t"], want[1]["t"], check_exact=True)
    assert _leftovers(tmp_path, "r.h5") == ["ref.h5"]


def test_reader_holding_the_file_does_not_block_the_writer(tmp_path):
    p = tmp_path / "r.h5"
    w = _open(p)
    w.commit(0, _rows(0))
    with h5py.File(p, "r") as held:                  # HDF5's own file locking, as any user
        w.commit(1, _rows(1))
        w.publish()
        w.commit(2, _rows(2))
        w.finish()
        assert held["runs/run0/t/g"].shape == (2,)   # its snapshot stays consistent
    assert read_run(p)[0].complete


def _edit_run_attr(p, name, fn):
    with h5py.File(p, "r+") as f:
        g = f["runs/run0"]
        g.attrs[name] = fn(g.attrs[name])


def _progress_edit(**kw):
    def fn(v):
        d = json.loads(v)
        d.update(kw)
        return json.dumps(d)
    return fn


def test_impossible_records_are_schema_errors(tmp_path):
    p = tmp_path / "r.h5"
    w = _open(p)
    for i in range(3):
        w.commit(i, _rows(i))
    w.finish()
    cases = {
        "done>total": ("progress", _progress_edit(units_done=67)),
        "negative": ("progress", _progress_edit(units_done=-5)),
        "rows": ("progress", _progress_edit(rows={"t": 7})),
        "rows-negative": ("progress", _progress_edit(rows={"t": -1})),
        "tables": ("progress", _progress_edit(rows={"t": 6, "u": 0})),
        "total": ("units_total", lambda v: 0),
        "garbled": ("progress", lambda v: "{no json"),
        "seed": ("seed", lambda v: -9),
    }
    for case, (attr, fn) in cases.items():
        bad = tmp_path / f"{case}.h5"
        shutil.copy(p, bad)
        _edit_run_attr(bad, attr, fn)
        for read in (list_runs, lambda q: read_table(q, "t"),
                     lambda q: RunWriter.open(q, **_spec())):
            with pytest.raises(SchemaError) as ei:
                read(bad)
            assert str(bad) in str(ei.value) and "\n" not in str(ei.value), case


def test_impossible_records_in_format1_files(tmp_path):
    """Format 1 has no checksums: the range and consistency checks alone must catch these."""
    cases = {
        "done>total": ("progress", _progress_edit(devices_done=67)),
        "negative": ("progress", _progress_edit(devices_done=-5)),
        "rows-beyond-data": ("progress", _progress_edit(rows={"devices": 99})),
        "slot": ("progress", _progress_edit(state_slot=7)),
        "complete-early": ("complete", lambda v: True),
        "total": ("devices_total", lambda v: -1),
    }
    for case, (attr, fn) in cases.items():
        bad = tmp_path / f"{case}.h5"
        shutil.copy(DATA / "format1-unfinished.h5", bad)
        _edit_run_attr(bad, attr, fn)
        with pytest.raises(SchemaError) as ei:
            list_runs(bad)
        assert str(bad) in str(ei.value) and "\n" not in str(ei.value), case


def test_schema_errors(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(SchemaError, match="HDF5"):
        list_runs(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["kind"] = "something-else"
    with pytest.raises(SchemaError, match="not an xbarlab raw-run"):
        read_table(other, "t")
    newer = tmp_path / "newer.h5"
    w = _open(newer)
    w.commit(0, _rows(0))
    w.close()
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(SchemaError, match="newer"):
        list_runs(newer)
    trunc = tmp_path / "trunc.h5"
    w = _open(trunc)
    w.commit(0, _rows(0))
    w.close()
    with h5py.File(trunc, "r+") as f:
        f["runs/run0/t/g"].resize((1,))
    with pytest.raises(SchemaError, match="different lengths"):
        read_table(trunc, "t")
    nocol = tmp_path / "nocol.h5"
    shutil.copy(newer, nocol)
    with h5py.File(nocol, "r+") as f:
        f.attrs["format_version"] = runs.FORMAT_VERSION
        del f["runs/run0/t/ok"]
    for read in (list_runs, read_run, lambda q: RunWriter.open(q, **_spec())):
        with pytest.raises(SchemaError, match="ok"):
            read(nocol)
    with pytest.raises(DatabaseError):
        read_table(tmp_path / "missing.h5", "t")


# -- format 1 (xbarlab before the journal) ---------------------------------------------------

def _format1_spec(path):
    from protocols.campaigns import stuck

    info = list_runs(path)[-1]
    return dict(protocol="stuck", config=info.config, station=info.station, seed=5,
                tables={"devices": stuck.DEVICES_COLUMNS}, units_total=3)


def test_format1_files_are_read_and_resumed(tmp_path):
    done = DATA / "format1-complete.h5"
    info, tables = read_run(done)
    assert info.format_version == 1 and info.complete and info.units_done == info.units_total == 3
    assert tables["devices"].device.tolist() == [0, 1, 2]
    p = tmp_path / "u.h5"
    shutil.copy(DATA / "format1-unfinished.h5", p)
    info = list_runs(p)[-1]
    assert info.format_version == 1 and info.units_done == 2 and not info.complete
    old = read_table(p, "devices")
    w = RunWriter.open(p, **_format1_spec(p))
    assert w.units_done == 2 and w.saved_state() is not None
    row = tables["devices"].iloc[2:].to_dict("list")
    w.commit(2, {"devices": row}, w.saved_state())
    w.finish()
    info, new = read_run(p)
    assert info.format_version == runs.FORMAT_VERSION and info.complete
    pd.testing.assert_frame_equal(new["devices"].iloc[:2], old, check_exact=True)
    pd.testing.assert_frame_equal(new["devices"], tables["devices"], check_exact=True)


def test_interrupt_inside_a_commit_never_publishes_half_a_unit(tmp_path, monkeypatch, no_publish):
    """Ctrl-C after the journal append but while the unit is put into memory: the writer stops
    writing (close does not publish a half-applied unit) and a re-open has the unit."""
    p = tmp_path / "r.h5"
    w = _open(p)
    w.commit(0, _rows(0))
    calls = {"n": 0}
    orig = runs._Column.extend

    def extend(self, x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        orig(self, x)

    with monkeypatch.context() as m:
        m.setattr(runs._Column, "extend", extend)
        with pytest.raises(KeyboardInterrupt):
            w.commit(1, _rows(1))
    with pytest.raises(DatabaseError, match="interrupted"):
        w.commit(1, _rows(1))
    w.close()
    info, tables = read_run(p)
    assert info.units_done == 2 and tables["t"].device.tolist() == [0, 0, 1, 1]
    w = _open(p)
    assert w.units_done == 2
    w.close()
