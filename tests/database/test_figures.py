"""The figures of every campaign: the data each view extracts, and the PNGs drawn from it."""

import matplotlib.image as mpimg
import numpy as np
import pytest

from database.figures import Hist, Map, Plot, class_names, run_view, unit_counts
from database.plots import plot_run
from database.runs import RunWriter, read_run


def sim_rig(rows, cols, seed, **kw):
    from simulator.config import CrossbarConfig
    from simulator.crossbar import Crossbar
    from simulator.direct_rig import SimulatedRig

    return SimulatedRig(Crossbar(CrossbarConfig(rows=rows, cols=cols, **kw), seed=seed))


@pytest.fixture(autouse=True)
def _single_thread_blas():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One small real run of each protocol on simulated crossbars."""
    from protocols.campaigns import disturbance, iv_pulsed, retention, stuck, tuning_untuning

    tmp = tmp_path_factory.mktemp("figs")
    out = {}
    out["disturbance"] = tmp / "dist.h5"
    disturbance.run(sim_rig(3, 3, seed=1), disturbance.DisturbanceConfig(), out["disturbance"],
                    seed=1, progress=False)
    out["stuck"] = tmp / "stuck.h5"
    stuck.run(sim_rig(3, 3, seed=2, stuck_lrs_rate=0.25, stuck_hrs_rate=0.25),
              stuck.StuckConfig(), out["stuck"], progress=False)
    out["iv-pulsed"] = tmp / "iv.h5"
    iv_pulsed.run(sim_rig(2, 2, seed=3), iv_pulsed.PulsedIVConfig(v_step=0.2,
                  devices=[(0, 0), (1, 1)]), out["iv-pulsed"], progress=False)
    out["tuning-untuning"] = tmp / "tu.h5"
    tuning_untuning.run(sim_rig(1, 1, seed=4),
                        tuning_untuning.TuningUntuningConfig(levels=2, repeats=2),
                        out["tuning-untuning"], progress=False)
    out["transfer"] = _transfer(tmp / "transfer.h5")
    out["retention"] = tmp / "ret.h5"
    retention.run(sim_rig(3, 3, seed=6),
                  retention.RetentionConfig(devices=[(0, 0), (1, 2), (2, 1)],
                                            levels=[150e-6, 300e-6], span_s=3600.0, reads=4),
                  out["retention"], progress=False)
    return out


def _transfer(path):
    from protocols.rig import ReadSettings
    from protocols.transfer import TransferConfig, run
    from simulator.chip import VirtualChip
    from simulator.config import CrossbarConfig
    from simulator.direct_rig import SimulatedRig
    from training.export import plan_from_weights

    rng = np.random.default_rng(2)
    plan = plan_from_weights([rng.normal(size=(1, 2))], [rng.normal(size=1)], g_min=100e-6,
                             g_max=400e-6, tile_rows=4, tile_cols=4)
    chip = VirtualChip({"a": CrossbarConfig(rows=4, cols=4, stuck_hrs_rate=0.0,
                                            stuck_lrs_rate=0.0)}, seed=5)
    x = rng.random((20, 2))
    run(plan, lambda n: SimulatedRig(chip[n], lab=chip.lab), ["a"], path,
        test_data=(x, (x[:, 0] > 0.5)), config=TransferConfig(record_history=True), seed=1,
        read=ReadSettings(),
        progress=False)
    return path


def _panel(v, figure, i):
    return next(f for f in v.figures if f.name == figure).panels[i]


def _series(plot: Plot, label):
    return next(s for s in plot.series if s.label == label)


def test_disturbance_view_matches_the_tables(runs):
    info, t = read_run(runs["disturbance"])
    v = run_view(info, t)
    dev, smp, hist = t["devices"], t["samples"], t["history"]
    ok = smp[~smp.excluded]
    mean = _series(_panel(v, "by-k", 0), "mean")
    expect = ok.groupby("k").delta.mean()
    assert np.allclose(mean.x, expect.index) and np.allclose(mean.y, expect.to_numpy() * 1e6)
    # the latest map: the last device's own read, every earlier device's read after it
    last = dev.iloc[-1]
    g = v.conductance.values
    assert g[int(last.row), int(last.col)] == pytest.approx(last.g_ref * 1e6)
    cur = smp[smp["after"] == last.device]
    assert np.allclose(g[cur.row, cur.col], cur.g * 1e6)
    assert np.isfinite(g).sum() == len(dev) == 9
    status = _panel(v, "by-position", 1)
    assert status.classes == {0: "working", 1: "stuck-HRS", 2: "stuck-LRS", 3: "failed"}
    assert np.array_equal(status.values[dev.row, dev.col], dev.status)
    # the trace is the last device's tuning, against its 1 % band
    h = hist[(hist.tuning == last.device) & (hist.phase == 1)]
    assert np.allclose(_series(v.trace, "read").y, h.g * 1e6)
    band = v.trace.bands[0]
    assert (band.low, band.high) == pytest.approx((last.target * 0.99e6, last.target * 1.01e6))
    err = _panel(v, "tuning", 0)
    assert isinstance(err, Hist) and err.counts["converged"].sum() == dev.converged.sum()
    assert any(f.startswith("devices programmed: 9") for f in v.facts)


def test_stuck_view_maps_every_class(runs):
    info, t = read_run(runs["stuck"])
    v = run_view(info, t)
    dev = t["devices"]
    status = _panel(v, "status", 0)
    assert isinstance(status, Map) and status.classes[1] == "stuck-HRS"
    assert np.array_equal(status.values[dev.row, dev.col], dev.status)
    assert (dev.status != 0).any()  # the chip has stuck devices: the map must show them
    for code, name in class_names(dev).items():
        n = int((dev.status == code).sum())
        if code < 3:
            assert any(f.startswith(f"{name}: {n} (") for f in v.facts), (name, v.facts)
    before, after = _panel(v, "conductance", 0), _panel(v, "conductance", 2)
    assert np.allclose(before.values[dev.row, dev.col], dev.g_initial * 1e6)
    assert np.allclose(after.values[dev.row, dev.col], dev.g_after_reset * 1e6)
    assert v.trace is None and v.notes


def test_tuning_untuning_trace_is_the_latest_tuning(runs):
    info, t = read_run(runs["tuning-untuning"])
    v = run_view(info, t)
    tun, hist = t["tunings"], t["history"]
    tix = len(tun) - 1
    h = hist[(hist.tuning == tix) & (hist.phase == 1)]
    assert np.allclose(_series(v.trace, "read").y, h.g * 1e6)
    errs = _panel(v, "tuning", 1)
    assert errs.counts["settled read"].sum() == tun.converged.sum()
    traces = _panel(v, "tuning", 0)
    assert [s.label for s in traces.series] == [f"{g * 1e6:.0f} uS" for g in sorted(
        tun.target.unique())]


def test_pulsed_iv_view_draws_each_loop(runs):
    info, t = read_run(runs["iv-pulsed"])
    v = run_view(info, t)
    pts = t["points"]
    loops = _panel(v, "loops", 0)
    assert [s.label for s in loops.series] == ["(0,0) cycle 0", "(1,1) cycle 0"]
    p = pts[pts.device == 1]
    assert np.allclose(loops.series[1].x, p.volts) and np.allclose(loops.series[1].y,
                                                                     p.i_read * 1e6)


def test_retention_view_curves_on_a_log_time_axis(runs):
    info, t = read_run(runs["retention"])
    v = run_view(info, t)
    reads = t["reads"]
    curves, every = _panel(v, "curves", 0), _panel(v, "curves", 1)
    assert curves.log_x and every.log_x
    assert [s.label for s in curves.series] == ["150 uS", "300 uS"]
    r = reads[reads.target == 300e-6].groupby("read")
    s = _series(curves, "300 uS")
    assert np.allclose(s.x, r.age.median()) and np.allclose(s.y, r.drift_rel.mean() * 100)
    assert len(_series(every, "150 uS").x) == 2 * 4      # devices 0 and 2, four reads each
    last = reads[reads["read"] == 3]
    drift = _panel(v, "drift", 1)
    assert np.allclose(drift.values[last.row, last.col], last.drift_rel * 100)
    assert any(f.startswith("reads: 4 of 4 done") for f in v.facts)


def test_transfer_view_readback_error_map(runs):
    info, t = read_run(runs["transfer"])
    v = run_view(info, t)
    rb = t["readback"]
    err = _panel(v, "readback-error", 0)
    assert np.allclose(err.values[rb.row, rb.col], (rb.g - rb.target) / rb.target * 100)
    assert err.diverging
    acc = (t["inference"].predicted == t["inference"].label).mean() * 100
    assert any(f.startswith(f"test accuracy: {acc:.1f} %") for f in v.facts)
    assert v.trace is not None  # record_history was on


def test_plot_run_writes_a_png_per_figure(runs, tmp_path):
    for name, path in runs.items():
        v, written = plot_run(path, out_dir=tmp_path)
        assert [p.name for p in written] == [f"{path.stem}-run0-{f.name}.png" for f in v.figures]
        assert written, name
        for p in written:
            img = mpimg.imread(p)
            assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01


def test_unknown_protocol_and_unfinished_run(tmp_path):
    p = tmp_path / "x.h5"
    w = RunWriter.open(p, protocol="future-campaign", config={}, station={}, seed=None,
                       tables={"t": {"g": ("f8", "S")}}, units_total=4)
    w.commit(0, {"t": {"g": [1e-4]}})
    info, t = read_run(p)
    assert unit_counts(info) == (1, 4)
    v = run_view(info, t)
    assert v.figures == [] and "future-campaign" in v.notes[0] and "t: 1 rows" in v.notes[0]
    v, written = plot_run(p, out_dir=tmp_path)
    assert written == []


def test_stuck_figure_says_when_reads_were_clipped(tmp_path):
    # the demo's screening: stuck-LRS devices found, but every read of them at the range
    # ceiling; the figure must say so instead of drawing an empty histogram
    import dataclasses

    import numpy as np

    from database.plots import plot_stuck, stuck_notes
    from database.reference import import_reference

    db = dataclasses.replace(import_reference(), stuck_lrs_rate=0.02,
                             stuck_lrs_samples=np.zeros(0))
    notes = stuck_notes(db)
    assert len(notes) == 1 and "LRS" in notes[0] and "clipped" in notes[0] and "2.00 %" in notes[0]
    assert plot_stuck(db, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    measured = dataclasses.replace(db, stuck_lrs_samples=np.array([5e-4, 6e-4, 7e-4]))
    assert stuck_notes(measured) == []
