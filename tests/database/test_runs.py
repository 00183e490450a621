import h5py
import numpy as np
import pytest

from database.errors import DatabaseError, SchemaError
from database.runs import RunWriter, list_runs, read_run, read_table

TABLES = {"t": {"device": ("i4", "1"), "g": ("f8", "S"), "ok": ("?", "1")}}


def _open(path, **kw):
    args = dict(protocol="demo", config={"a": 1}, station={"name": "sim"}, seed=7,
                tables=TABLES, devices_total=3)
    args.update(kw)
    return RunWriter.open(path, **args)


def _rows(i, n=2):
    return {"t": {"device": [i] * n, "g": np.arange(n) * 1e-6 + i, "ok": [True] * n}}


def test_roundtrip_attributes_units_and_dataframe(tmp_path):
    p = tmp_path / "r.h5"
    w = _open(p)
    for i in range(3):
        w.commit_device(i, _rows(i), state=b"state%d" % i)
    w.finish({"n": 3})
    info, tables = read_run(p)
    assert info.protocol == "demo" and info.config == {"a": 1} and info.seed == 7
    assert info.complete and info.devices_done == 3 and info.summary == {"n": 3}
    assert info.start_time and info.end_time and info.software_version
    df = tables["t"]
    assert list(df.columns) == ["device", "g", "ok"] and len(df) == 6
    assert df.attrs["units"] == {"device": "1", "g": "S", "ok": "1"}
    assert df.device.tolist() == [0, 0, 1, 1, 2, 2]
    with h5py.File(p) as f:
        for obj in f["runs/run0"].values():
            if isinstance(obj, h5py.Group):
                for ds in obj.values():
                    assert "units" in ds.attrs and ds.chunks is not None and ds.maxshape == (None,)


def test_refuses_to_overwrite_or_mix_settings(tmp_path):
    p = tmp_path / "r.h5"
    w = _open(p)
    w.commit_device(0, _rows(0))
    with pytest.raises(DatabaseError):
        _open(p, seed=8)
    with pytest.raises(DatabaseError):
        _open(p, config={"a": 2})
    w2 = _open(p)  # same settings: continue
    assert w2.devices_done == 1
    for i in (1, 2):
        w2.commit_device(i, _rows(i))
    w2.finish()
    with pytest.raises(DatabaseError, match="complete"):
        _open(p)
    w3 = _open(p, overwrite=True)
    assert w3.devices_done == 0 and len(read_table(p, "t")) == 0


def test_commit_order_and_column_checks(tmp_path):
    w = _open(tmp_path / "r.h5")
    with pytest.raises(DatabaseError, match="lost or duplicated"):
        w.commit_device(1, _rows(1))
    with pytest.raises(DatabaseError, match="columns"):
        w.commit_device(0, {"t": {"device": [0], "g": [1.0]}})
    with pytest.raises(DatabaseError, match="lengths"):
        w.commit_device(0, {"t": {"device": [0, 0], "g": [1.0], "ok": [True]}})
    w.commit_device(0, _rows(0))
    assert w.devices_done == 1


def test_uncommitted_tail_is_dropped_on_resume(tmp_path):
    """A kill after the columns were written but before the progress attribute: the extra rows
    must disappear, and the state slot must still be the previous device's."""
    p = tmp_path / "r.h5"
    w = _open(p)
    w.commit_device(0, _rows(0), state=b"after0")
    with h5py.File(p, "r+") as f:  # simulate a half-done commit of device 1
        for c in ("device", "g", "ok"):
            ds = f["runs/run0/t"][c]
            ds.resize((5,))
        f["runs/run0/_state/slot1"].resize((3,))
    w2 = _open(p)
    assert w2.devices_done == 1 and w2.saved_state() == b"after0"
    assert len(w2.table("t")) == 2
    with h5py.File(p) as f:
        assert f["runs/run0/t/g"].shape == (2,)
    w2.commit_device(1, _rows(1), state=b"after1")
    assert w2.saved_state() == b"after1"
    assert read_table(p, "t").device.tolist() == [0, 0, 1, 1]


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
    _open(newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(SchemaError, match="newer"):
        list_runs(newer)
    trunc = tmp_path / "trunc.h5"
    w = _open(trunc)
    w.commit_device(0, _rows(0))
    with h5py.File(trunc, "r+") as f:
        f["runs/run0/t/g"].resize((1,))
    with pytest.raises(SchemaError, match="truncated"):
        read_table(trunc, "t")
    with pytest.raises(DatabaseError):
        read_table(tmp_path / "missing.h5", "t")
