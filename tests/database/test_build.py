import numpy as np
import pytest

from database.build import build_nonideality
from database.errors import DatabaseError, SchemaError
from database.nonideality import load_nonideality, save_nonideality
from database.runs import RunWriter
from protocols.campaigns import disturbance, stuck, tuning_untuning


def _write(path, protocol, cls_tables, rows_per_device, config=None):
    w = RunWriter.open(path, protocol=protocol, config=config or {}, station={}, seed=1,
                       tables=cls_tables, units_total=len(rows_per_device))
    for i, rows in enumerate(rows_per_device):
        w.commit(i, rows)
    w.finish()


def _tunings(rng, levels, n_dev=4, reps=50, sigma=lambda g: 0.007 - 6e-3 * g / 1e-3 * 0.1,
             offset=-0.006):
    out = []
    for d in range(n_dev):
        cols = {k: [] for k in tuning_untuning.TUNINGS_COLUMNS}
        for li, lv in enumerate(levels):
            for r in range(reps):
                e = offset + sigma(lv) * rng.standard_normal()
                vals = dict(device=d, row=0, col=d, level=li, repeat=r, target=lv, g_off=50e-6,
                            untune_pulses=3, converged=not (d == 0 and r == 0 and li == 0),
                            gave_up=False, pulses=40, set_pulses=30, reset_pulses=10,
                            g_initial=50e-6, g_final=lv * (1 + e), g_settled=lv * (1 + e),
                            t_start=0.0, t_end=1.0, warm_set=1.0, warm_reset=-1.0)
                for k, v in vals.items():
                    cols[k].append(v)
        out.append({"tunings": cols})
    return out


def _disturbance_rows():
    rows = []
    for i in range(4):
        dev = {"device": [i], "row": [0], "col": [i], "target": [2e-4], "converged": [i != 1],
               "pulses": [30], "status": [0 if i != 1 else 1], "g_final": [2e-4],
               "g_ref": [2e-4], "t_end": [1.0]}
        prev = np.arange(i)
        s = {"after": np.full(i, i), "device": prev, "row": prev * 0, "col": prev, "k": i - prev,
             "g": np.full(i, 2e-4), "delta": -1e-6 * (i - prev) - (prev == 0) * 50e-6,
             "excluded": prev == 1}
        rows.append({"devices": dev, "samples": s})
    return rows


def test_tuning_sigma_is_within_device_and_offset_spread_is_per_device(tmp_path):
    # each device has its own offset (the paper's model: offset per device, sigma per tuning);
    # the DB's sigma must be the within-device spread, or a transfer sampled from it (offset
    # per device, then sigma) counts the offset spread twice
    rng = np.random.default_rng(5)
    levels = np.array([100e-6, 300e-6])
    runs = []
    for _ in range(60):
        off = -0.006 + 0.004 * rng.standard_normal()
        runs += _tunings(rng, levels, n_dev=1, reps=40, sigma=lambda g: 0.005, offset=off)
    for d, r in enumerate(runs):
        r["tunings"]["device"] = [d] * len(r["tunings"]["device"])
        r["tunings"]["converged"] = [True] * len(r["tunings"]["device"])
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           runs)
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    db = build_nonideality([tmp_path / "t.h5", tmp_path / "d.h5"])
    assert np.allclose(db.tuning_sigma_rel, 0.005, rtol=0.06)   # pooled would be ~0.0064
    assert db.offset_std_rel == pytest.approx(0.004, rel=0.25)
    assert db.offset_mean_rel == pytest.approx(-0.006, abs=0.0012)


def test_build_from_synthetic_runs_recovers_the_model(tmp_path):
    rng = np.random.default_rng(0)
    levels = np.linspace(100e-6, 400e-6, 4)
    sig = lambda g: 0.0069 - 6.24 * g  # noqa: E731  (the paper's line, G in S)
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           _tunings(rng, levels, n_dev=6, reps=400, sigma=sig))
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    db = build_nonideality([tmp_path / "t.h5", tmp_path / "d.h5"])
    assert np.allclose(db.tuning_levels, levels)
    assert np.allclose(db.tuning_sigma_rel, sig(levels), rtol=0.1)
    assert db.sigma_fit_slope == pytest.approx(-6.24, rel=0.15)
    assert db.offset_mean_rel == pytest.approx(-0.006, abs=5e-4)
    assert db.tuning_counts.sum() == 6 * 4 * 400 - 1  # the failed tuning is not used
    # disturbance: device 1 was flagged, its samples excluded; keys = devices after
    assert db.disturbance_keys.size == 6 - 2
    assert set(db.disturbance_keys) == {1, 2, 3}
    assert db.disturbance_delta.min() == pytest.approx(-53e-6)
    assert "no magnitude cut" in db.disturbance_rule
    cut = build_nonideality([tmp_path / "t.h5", tmp_path / "d.h5"], disturbance_cut=40e-6)
    assert cut.disturbance_delta.min() > -40e-6 and "dropped (3 samples)" in cut.disturbance_rule
    # stuck rates without a stuck run: from the disturbance flags
    assert db.stuck_hrs_rate == pytest.approx(0.25) and db.stuck_lrs_rate == 0
    assert "t.h5:run0" in db.provenance["tuning"] and "d.h5:run0" in db.provenance["disturbance"]
    sw = db.provenance["statistics"]["shapiro_tuning_error_per_level"]
    assert len(sw) == 4 and all(v["p"] > 1e-3 for v in sw.values())
    save_nonideality(db, tmp_path / "ni.h5")
    back = load_nonideality(tmp_path / "ni.h5")
    assert np.allclose(back.tuning_sigma_rel, db.tuning_sigma_rel)
    assert back.provenance == db.provenance


def test_build_needs_tuning_and_disturbance(tmp_path):
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    with pytest.raises(DatabaseError, match="tuning"):
        build_nonideality([tmp_path / "d.h5"])


def test_stuck_run_gives_rates_and_samples(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           _tunings(rng, [100e-6, 400e-6], n_dev=2, reps=5))
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    status = [0] * 90 + [1] * 4 + [2] * 6
    g0 = [2e-4] * 90 + [20e-6, 30e-6, 40e-6, 90e-6] + [450e-6, 480e-6, 470e-6, 500e-6, 500e-6, 460e-6]
    rows = []
    for i, (s, g) in enumerate(zip(status, g0, strict=True)):
        rows.append({"devices": {"device": [i], "row": [i // 10], "col": [i % 10],
                                 "g_initial": [g], "initial_clipped": [g >= 500e-6],
                                 "g_after_set": [g], "set_pulses": [10], "g_after_reset": [g],
                                 "reset_pulses": [10], "final_clipped": [False],
                                 "status": [s]}})
    _write(tmp_path / "s.h5", "stuck", {"devices": stuck.DEVICES_COLUMNS}, rows)
    db = build_nonideality([tmp_path / p for p in ("t.h5", "d.h5", "s.h5")])
    assert db.stuck_hrs_rate == pytest.approx(0.04) and db.stuck_lrs_rate == pytest.approx(0.06)
    assert db.stuck_hrs_samples.size == 4 and db.stuck_lrs_samples.size == 4  # 2 clipped
    assert db.stuck_hrs_range == pytest.approx((20e-6, 90e-6))
    assert "clipped" in db.provenance["stuck"]


def _damaged(edit):
    rows = _disturbance_rows()
    edit(rows)
    return rows


@pytest.mark.parametrize("case,edit,col", [
    ("k-huge", lambda r: r[3]["samples"]["k"].__setitem__(0, 2**31 - 1), "k"),
    ("k-negative", lambda r: r[3]["samples"]["k"].__setitem__(1, -5), "k"),
    ("device-later", lambda r: r[2]["samples"]["device"].__setitem__(0, 3), "device"),
    ("delta-nan", lambda r: r[3]["samples"]["delta"].__setitem__(2, np.nan), "delta"),
    ("status", lambda r: r[1]["devices"]["status"].__setitem__(0, 9), "status"),
])
def test_build_checks_every_number_it_uses(tmp_path, case, edit, col):
    """A file whose numbers are impossible (here written through the store, so every checksum
    is valid) stops the build with one line naming file, table, column and row; the key k in
    particular never sizes an allocation before it is checked."""
    rng = np.random.default_rng(0)
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           _tunings(rng, [100e-6, 400e-6], n_dev=2, reps=5))
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _damaged(edit))
    with pytest.raises(SchemaError) as ei:
        build_nonideality([tmp_path / "t.h5", tmp_path / "d.h5"])
    msg = str(ei.value)
    assert "d.h5" in msg and f"/{col}:" in msg and "row" in msg and "\n" not in msg


def test_build_checks_tuning_targets(tmp_path):
    rng = np.random.default_rng(0)
    rows = _tunings(rng, [100e-6, 400e-6], n_dev=2, reps=5)
    rows[1]["tunings"]["target"][3] = 0.0
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           rows)
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    with pytest.raises(SchemaError, match="t.h5: run0/tunings/target"):
        build_nonideality([tmp_path / "t.h5", tmp_path / "d.h5"])


def _retention_rows(rng, levels, n_dev, schedule, up_devices=(), drift=lambda t: -0.004 *
                    np.log10(1 + t / 300.0), noise=0.002):
    """A retention run: programming units, then one unit per scheduled read."""
    from protocols.campaigns import retention

    rows = []
    g_final = [levels[i % len(levels)] * (1 + 0.002 * rng.standard_normal())
               for i in range(n_dev)]
    for i in range(n_dev):
        lv = levels[i % len(levels)]
        rows.append({"programming": {k: [v] for k, v in dict(
            device=i, row=0, col=i, level=i % len(levels), target=lv, converged=True,
            gave_up=False, pulses=40, g_initial=1e-4, g_final=g_final[i], t_start=i * 2.0,
            t_prog=i * 2.0 + 1, unix_prog=np.nan).items()}})
    for k, t in enumerate(schedule):
        cols = {c: [] for c in retention.READS_COLUMNS}
        for i in range(n_dev):
            d = (1.0 - np.exp(-t / 3600.0)) if i in up_devices else drift(t)
            d += noise * rng.standard_normal()
            g = g_final[i] * (1 + d)
            vals = dict(read=k, device=i, row=0, col=i, level=i % len(levels),
                        target=levels[i % len(levels)], t_scheduled=t, t_actual=t + 0.01,
                        age=t + 0.01 + 2.0 * (n_dev - 1 - i), t=0.0, unix=np.nan, g=g,
                        clipped=False, drift_rel=d)
            for c, v in vals.items():
                cols[c].append(v)
        rows.append({"reads": cols})
    return rows


def _retention_run(path, rng, **kw):
    from protocols.campaigns import retention

    schedule = np.geomspace(10.0, 86400.0, 6)
    kw.setdefault("levels", [100e-6, 300e-6])
    kw.setdefault("n_dev", 40)
    _write(path, "retention", {"programming": retention.PROGRAMMING_COLUMNS,
                               "reads": retention.READS_COLUMNS},
           _retention_rows(rng, schedule=schedule, **kw), config={"up_threshold": 0.05})
    return schedule


def test_retention_statistics_build_round_trip_and_show(tmp_path, capsys):
    from database.nonideality import RetentionStats
    from xbarlab.cli import main

    rng = np.random.default_rng(5)
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           _tunings(rng, [100e-6, 400e-6], n_dev=2, reps=5))
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    schedule = _retention_run(tmp_path / "r.h5", rng, up_devices=(1, 3))
    db = build_nonideality([tmp_path / p for p in ("t.h5", "d.h5", "r.h5")])
    r = db.retention
    assert isinstance(r, RetentionStats) and r.time.size == 2 * 6
    assert sorted(set(r.level)) == [100e-6, 300e-6]
    for lv in (100e-6, 300e-6):
        sel = r.level == lv
        t = r.time[sel]
        assert np.all(np.diff(t) > 0) and t[0] >= 10.0
        # the drift of the devices that do not fail: the synthetic law, within its noise
        # (the failing devices count among the others until they are 5 % up)
        want = -0.004 * np.log10(1 + schedule / 300.0)
        assert np.allclose(r.mean_rel[sel], want, atol=0.002 if lv < 2e-4 else 0.004)
        assert np.all(r.counts[sel] == 20)
    assert np.all(r.std_rel[r.level == 100e-6] < 0.004)
    # devices 1 and 3 (both at 300 uS) drift up towards +100 %: drifting up once past 5 %
    hi = r.level == 300e-6
    assert r.up_fraction[hi][-1] == pytest.approx(2 / 20)
    assert r.up_fraction[hi][0] == 0 and np.isnan(r.up_mean_rel[hi][0])
    assert r.up_mean_rel[hi][-1] == pytest.approx(1 - np.exp(-24), abs=0.01)
    assert np.all(r.up_fraction[r.level == 100e-6] == 0)
    assert "r.h5:run0" in db.provenance["retention"] and "up_threshold" in r.rule
    # the database file round trip keeps every number and the rule
    save_nonideality(db, tmp_path / "ni.h5")
    back = load_nonideality(tmp_path / "ni.h5").retention
    for name in ("time", "level", "mean_rel", "std_rel", "counts", "up_fraction",
                 "up_mean_rel", "up_std_rel"):
        assert np.array_equal(getattr(back, name), getattr(r, name), equal_nan=True), name
    assert back.rule == r.rule
    # a database without retention runs has none, and reads back as such
    plain = build_nonideality([tmp_path / "t.h5", tmp_path / "d.h5"])
    assert plain.retention is None
    save_nonideality(plain, tmp_path / "plain.h5")
    assert load_nonideality(tmp_path / "plain.h5").retention is None
    # db show prints the table with units
    try:
        main(["db", "show", str(tmp_path / "ni.h5")])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "retention: 12 cells" in out and "24.0 h" in out and "drifting up" in out
    assert "provenance retention" in out


@pytest.mark.parametrize("field,value,match", [
    ("up_fraction", 1.5, "retention up_fraction"),
    ("time", -3.0, "retention time"),
    ("mean_rel", np.inf, "retention mean_rel"),
    ("level", 7.0, "retention level"),
])
def test_retention_statistics_are_validated_on_load(tmp_path, field, value, match):
    import h5py

    rng = np.random.default_rng(6)
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           _tunings(rng, [100e-6, 400e-6], n_dev=2, reps=5))
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    _retention_run(tmp_path / "r.h5", rng, n_dev=6)
    save_nonideality(build_nonideality([tmp_path / p for p in ("t.h5", "d.h5", "r.h5")]),
                     tmp_path / "ni.h5")
    with h5py.File(tmp_path / "ni.h5", "r+") as f:   # a mis-built file: checksums rewritten
        ds = f["retention"][field]
        a = ds[()]
        a[0] = value
        del f["retention"][field]
        f["retention"].create_dataset(field, data=a)
    with pytest.raises(SchemaError, match=match):
        load_nonideality(tmp_path / "ni.h5")


def test_one_tuning_per_level_is_refused_with_what_to_change(tmp_path):
    # a within-device spread needs two tunings of a level; one gave "tuning_sigma_rel contains
    # NaN or inf", which does not tell the user what to do
    runs = _tunings(np.random.default_rng(2), np.array([100e-6, 300e-6]), n_dev=1, reps=1)
    runs[0]["tunings"]["converged"] = [True, True]
    _write(tmp_path / "t.h5", "tuning-untuning", {"tunings": tuning_untuning.TUNINGS_COLUMNS},
           runs)
    _write(tmp_path / "d.h5", "disturbance", {"devices": disturbance.DEVICES_COLUMNS,
                                              "samples": disturbance.SAMPLES_COLUMNS},
           _disturbance_rows())
    with pytest.raises(DatabaseError, match=r"100 uS .*1 converged tuning.*at least 2"):
        build_nonideality([tmp_path / "t.h5", tmp_path / "d.h5"])
