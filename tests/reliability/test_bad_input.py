"""Bad input through the CLI: one clear line on stderr, exit code 2, nothing overwritten.

Every case runs the real command line in-process and protects the files a careless command could
destroy (an existing run file passed with --overwrite, an existing database passed with --force):
their bytes and modification time must be the same afterwards.
"""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import yaml
from reliability_support import (
    PMU_STATION,
    cli,
    open_station,
    single_thread_blas,  # noqa: F401 (autouse fixture)
)

from database.nonideality import save_nonideality
from database.reference import import_reference
from database.runs import list_runs
from protocols.campaigns import CAMPAIGNS


def _stamp(paths):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def _fails_cleanly(args, capsys, protect=(), text=None):
    before = _stamp(protect)
    code, _out, err = cli([str(a) for a in args], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error")]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    # one error line; at most one informational line before it (e.g. "file exists: resuming")
    assert len(errors) == 1 and len(lines) <= 2 and lines[-1] == errors[0], err
    if text:
        assert text.lower() in errors[0].lower(), errors[0]
    assert _stamp(protect) == before
    return errors[0]


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """A complete, valid raw-run file (1 device of stuck screening)."""
    d = tmp_path_factory.mktemp("runs")
    out = d / "done.h5"
    module, cls = CAMPAIGNS["stuck"]
    st, rig = open_station()
    with rig:
        module.run(rig, cls(devices=[(0, 0)]), out, seed=0, progress=False)
    return out


@pytest.fixture
def victim(run_file, tmp_path):
    p = tmp_path / "victim.h5"
    shutil.copy(run_file, p)
    return p


def _station(tmp_path, edit):
    raw = yaml.safe_load(PMU_STATION.read_text())
    edit(raw)
    p = tmp_path / "bad-station.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _set(path, value):
    def edit(raw):
        node = raw
        for k in path[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


_DELETE = object()

BAD_STATIONS = {
    "wrong-type": (_set(["shape"], "eight by eight"), "shape"),
    "missing-field": (_set(["rig"], _DELETE), "rig"),
    "missing-instrument": (_set(["instruments", "k707b"], _DELETE), "k707b"),
    "voltage-limit-out-of-range": (_set(["limits", "v_set_max"], 20.0), "v_set_max"),
    "width-limit-inverted": (_set(["limits", "width_min"], 2e-3), "width_min"),
    "read-above-limit": (_set(["read", "volts"], 0.8), "read.volts"),
    "pulse-width-out-of-range": (_set(["pulse", "width"], 1.0), "pulse.width"),
    "unknown-instrument": (_set(["instruments", "k2400"], {"resource": "GPIB0::1::INSTR"}),
                           "k2400"),
    "unknown-matrix-row": (_set(["matrix", "terminals", "drive"], "Z"), "terminals"),
    "unknown-channel": (_set(["matrix", "rows", 0], [7, 1]), "rows"),
    "shape-vs-wiring": (_set(["shape"], [4, 4]), "shape"),
    "shape-vs-chip": (lambda raw: (raw.update(shape=[4, 4]),
                                   raw["matrix"].update(rows=raw["matrix"]["rows"][:4],
                                                        cols=raw["matrix"]["cols"][:4])),
                      "shape"),
    "not-a-mapping": (lambda raw: raw.clear(), None),
    "edge-too-long": (_set(["pulse", "edge"], 10.0), "pulse.edge"),     # s typed for ns
    "read-floor-above-ceiling": (_set(["read", "floor_S"], 1e-3), "floor_S"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATIONS))
def test_bad_station_file(case, tmp_path, victim, capsys):
    edit, text = BAD_STATIONS[case]
    st = _station(tmp_path, edit)
    if case == "not-a-mapping":
        st.write_text("- just\n- a list\n")
    _fails_cleanly(["run", "stuck", "--station", st, "-o", victim, "--device", "0,0",
                    "--overwrite", "--no-progress"], capsys, protect=[victim], text=text)
    _fails_cleanly(["station", "check", st], capsys, text=text)


BAD_CONFIGS = {
    "wrong-type": ({"levels": "many"}, "tuning-untuning", "levels"),
    "unknown-field": ({"levelz": 3}, "tuning-untuning", "levelz"),
    "negative-repeats": ({"repeats": -1}, "tuning-untuning", "repeats"),
    "ramp-beyond-any-instrument": ({"tune": {"v_set_max": 5.0}}, "stuck", "v_set_max"),
    "width-out-of-range": ({"tune": {"width": 1.0}}, "disturbance", "width"),
    "device-not-a-pair": ({"devices": [[0]]}, "iv-pulsed", "devices"),
    "not-a-mapping": (["a", "list"], "stuck", "mapping"),
    "settle-too-long": ({"settle_s": 1e6}, "tuning-untuning", "settle_s"),
    "iv-step-too-long": ({"width": 1.0}, "iv-pulsed", "width"),
    "empty-device-list": ({"devices": []}, "disturbance", "devices"),
    # targets the station cannot read back (read range 2.5 uS .. 500 uS): refused before the
    # store is opened, so the protected file is untouched even with --overwrite
    "target-range-in-S-typo": ({"g_high": 1.0}, "disturbance", "verify"),
    "targets-below-read-range": ({"g_low": 1e-9, "g_high": 1e-8}, "disturbance", "verify"),
    "stuck-top-level-typo": ({"top_level": 400.0}, "stuck", "verify"),
    "levels-up-to-the-ceiling": ({"g_high": 500e-6}, "tuning-untuning", "verify"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_campaign_config(case, tmp_path, victim, capsys):
    body, campaign, text = BAD_CONFIGS[case]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(body))
    _fails_cleanly(["run", campaign, "--station", PMU_STATION, "-o", victim, "--config", cfg,
                    "--overwrite", "--no-progress"], capsys, protect=[victim], text=text)


def test_ramp_inside_pydantic_but_beyond_station_limits(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"tune": {"v_set_max": 2.5}}))
    _fails_cleanly(["run", "stuck", "--station", PMU_STATION, "-o", tmp_path / "o.h5",
                    "--config", cfg, "--device", "0,0", "--no-progress"], capsys,
                   text="station limit")
    tcfg = tmp_path / "tune.yaml"
    tcfg.write_text(yaml.safe_dump({"v_set_max": 2.5}))
    _fails_cleanly(["tune", "--station", PMU_STATION, "--device", "0,0", "--target", "2e-4",
                    "--config", tcfg], capsys, text="station limit")


@pytest.mark.parametrize("target", ["250", "1", "1e-9", "5e-4", "0", "-1e-4", "nan", "inf"])
def test_tune_refuses_a_target_the_station_cannot_verify(target, capsys, monkeypatch):
    """250 is uS typed as S: without the check the tuning pulses to its ramp cap (~100
    pulses) and leaves the device at the read ceiling. Refused before the rig is even opened."""
    def no_rig(*_a, **_k):
        raise AssertionError("the rig was opened")

    monkeypatch.setattr("xbarlab.station.Station.open_rig", no_rig)
    _fails_cleanly(["tune", "--station", PMU_STATION, "--device", "0,0", "--target", target],
                   capsys, text="verify")


def test_negative_seed_is_refused_before_anything_is_created(tmp_path, capsys):
    out = tmp_path / "new" / "d.h5"
    _fails_cleanly(["run", "disturbance", "--station", PMU_STATION, "-o", out, "--seed", "-5",
                    "--no-progress"], capsys, text="--seed")
    assert not (tmp_path / "new").exists()


def test_station_file_that_is_not_utf8(tmp_path, victim, capsys):
    st = tmp_path / "latin1.yaml"
    st.write_bytes("name: station \xb5S\n".encode("latin-1"))
    _fails_cleanly(["run", "stuck", "--station", st, "-o", victim, "--device", "0,0",
                    "--overwrite", "--no-progress"], capsys, protect=[victim], text="UTF-8")
    _fails_cleanly(["station", "check", st], capsys, text="UTF-8")


def test_bad_input_creates_no_folder_and_no_log(tmp_path, capsys):
    st = _station(tmp_path, _set(["pulse", "edge"], 10.0))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"g_high": 1.0}))
    for args in (["--station", st], ["--station", PMU_STATION, "--config", cfg]):
        _fails_cleanly(["run", "disturbance", *args, "-o", tmp_path / "sub" / "d.h5",
                        "--no-progress"], capsys)
        assert not (tmp_path / "sub").exists()


def test_output_named_like_a_log(tmp_path, capsys):
    out = tmp_path / "x.log"
    code, _, err = cli(["run", "stuck", "--station", str(PMU_STATION), "-o", str(out),
                        "--device", "0,0", "--no-progress"], capsys)
    assert code == 0, err
    assert list_runs(out)[-1].complete
    assert "stuck on" in (tmp_path / "x.log.log").read_text()


def test_complete_run_asked_for_again_exits_0_and_says_so(tmp_path, capsys):
    out = tmp_path / "s.h5"
    args = ["run", "stuck", "--station", str(PMU_STATION), "-o", str(out), "--device", "0,0",
            "--no-progress"]
    assert cli(args, capsys)[0] == 0
    before = _stamp([out])
    code, stdout, err = cli(args, capsys)
    assert code == 0 and "already complete" in stdout and "nothing to do" in stdout, err
    assert _stamp([out]) == before
    # the same file asked for with other settings is still refused
    _fails_cleanly([*args, "--seed", "3"], capsys, protect=[out], text="complete")


@pytest.mark.parametrize("device", ["9,9", "-1,0"])
def test_device_outside_the_crossbar(device, victim, capsys):
    _fails_cleanly(["run", "stuck", "--station", PMU_STATION, "-o", victim, "--device",
                    device, "--overwrite", "--no-progress"], capsys, protect=[victim],
                   text="outside")


# -- HDF5 files ------------------------------------------------------------------------------

def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


def _newer(src, dst):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f.attrs["format_version"] = 99


def _not_ours(src, dst):
    with h5py.File(dst, "w") as f:
        f.create_dataset("x", data=np.arange(3))


def _text(src, dst):
    dst.write_text("time,current\n0,1\n")


BAD_FILES = {"truncated": (_truncated, "hdf5"), "newer-version": (_newer, "newer"),
             "not-ours": (_not_ours, "not"), "not-hdf5": (_text, "hdf5")}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_run_file(case, run_file, tmp_path, capsys):
    make, text = BAD_FILES[case]
    bad = tmp_path / "bad.h5"
    make(run_file, bad)
    db = tmp_path / "db.h5"
    save_nonideality(import_reference(), db)
    _fails_cleanly(["db", "show", bad], capsys, protect=[bad], text=text)
    _fails_cleanly(["db", "build", bad, "-o", db, "--force"], capsys, protect=[bad, db])
    # a campaign pointed at it must neither resume into it nor silently replace it
    _fails_cleanly(["run", "stuck", "--station", PMU_STATION, "-o", bad, "--device", "0,0",
                    "--no-progress"], capsys, protect=[bad])


# -- non-ideality databases and models -------------------------------------------------------

def _db_with(tmp_path, name, edit):
    p = tmp_path / name
    save_nonideality(import_reference(), p)
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


def _replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


BAD_DBS = {
    "empty-disturbance": lambda f: (_replace(f, "disturbance/delta", np.zeros(0)),
                                    _replace(f, "disturbance/keys", np.zeros(0, np.int64))),
    "nan-disturbance": lambda f: _replace(f, "disturbance/delta",
                                          np.where(np.arange(f["disturbance/delta"].size) == 3,
                                                   np.nan, f["disturbance/delta"][()])),
    "nan-tuning": lambda f: _replace(f, "tuning/sigma_rel",
                                     np.full(f["tuning/sigma_rel"].size, np.nan)),
    "empty-tuning": lambda f: [_replace(f, f"tuning/{n}", np.zeros(0))
                               for n in ("levels", "sigma_rel", "offset_rel", "counts")],
    "missing-stuck": lambda f: f.__delitem__("stuck"),
}


@pytest.mark.parametrize("case", sorted(BAD_DBS))
def test_bad_nonideality_db(case, tmp_path, capsys):
    db = _db_with(tmp_path, "bad-db.h5", BAD_DBS[case])
    _fails_cleanly(["db", "show", db], capsys, protect=[db], text="non-ideality")
    _fails_cleanly(["db", "plot", db, "--out", tmp_path / "plots"], capsys, protect=[db])
    assert not (tmp_path / "plots").exists() or not any((tmp_path / "plots").iterdir())


def test_training_refuses_a_bad_db_and_writes_no_model(tmp_path, capsys):
    pytest.importorskip("torch")
    db = _db_with(tmp_path, "bad-db.h5", BAD_DBS["nan-disturbance"])
    model = tmp_path / "m.pt"
    _fails_cleanly(["train", "--db", db, "--out", model, "--epochs", "1"], capsys,
                   protect=[db], text="NaN")
    assert not model.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_model_file_that_is_not_a_model(tmp_path, capsys):
    pytest.importorskip("torch")
    model = tmp_path / "m.pt"
    model.write_bytes(b"\x80\x04not a checkpoint")
    _fails_cleanly(["evaluate", "--model", model, "--transfers", "2", "--out",
                    tmp_path / "ev"], capsys, protect=[model], text="checkpoint")
    assert not (tmp_path / "ev").exists()
