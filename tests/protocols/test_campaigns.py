import numpy as np
import pytest
from conftest import sim_rig

from database.errors import DatabaseError
from database.runs import list_runs, read_table
from protocols.campaigns import disturbance, iv_pulsed, stuck, tuning_untuning
from protocols.campaigns.common import STUCK_HRS, STUCK_LRS, WORKING
from protocols.errors import ProtocolError


def test_tuning_untuning_levels_repeats_and_history(tmp_path):
    rig = sim_rig(seed=1)
    cfg = tuning_untuning.TuningUntuningConfig(devices=[(0, 0), (2, 3)], levels=3, repeats=2)
    out = tmp_path / "tu.h5"
    res = tuning_untuning.run(rig, cfg, out, seed=3, progress=False)
    df = read_table(out, "tunings")
    assert len(df) == 2 * 3 * 2
    assert sorted(set(zip(df.row, df.col, strict=True))) == [(0, 0), (2, 3)]
    assert np.allclose(sorted(set(df.target)), [100e-6, 250e-6, 400e-6])
    assert df.converged.all()
    ok = np.abs(df.g_final - df.target) <= 0.01 * df.target
    assert ok.all()
    # each tuning started from the untuned (off) state below its level
    assert (df.g_off < df.target).all()
    hist = read_table(out, "history")
    assert set(hist.tuning) == set(range(12))
    tune_pulses = hist[(hist.phase == 1) & (hist.kind == 1)].groupby("tuning").size()
    assert tune_pulses.reindex(range(12), fill_value=0).tolist() == df.pulses.tolist()
    info = list_runs(out)[-1]
    assert info.complete and info.protocol == "tuning-untuning" and info.seed == 3
    assert res.summary["tunings"] == 12 and res.summary["failed"] == 0


def test_disturbance_raster_order_k_and_targets(tmp_path):
    rig = sim_rig(rows=3, cols=3, seed=2)
    out = tmp_path / "d.h5"
    disturbance.run(rig, disturbance.DisturbanceConfig(record_history=False), out, seed=11,
                    progress=False)
    dev = read_table(out, "devices")
    assert list(zip(dev.row, dev.col, strict=True)) == [(r, c) for r in range(3) for c in range(3)]
    assert ((dev.target >= 100e-6) & (dev.target <= 400e-6)).all()
    s = read_table(out, "samples")
    assert len(s) == sum(range(9))  # after device j, devices 0..j-1 are sampled
    assert (s.k == s["after"] - s.device).all() and s.k.min() == 1 and s.k.max() == 8
    # the delta is the change since the read right after the device's own tuning
    ref = dev.set_index("device").g_ref
    assert np.allclose(s.delta, s.g - ref.loc[s.device].to_numpy())
    # targets come from the seed, not from the order of events
    out2 = tmp_path / "d2.h5"
    disturbance.run(sim_rig(rows=3, cols=3, seed=5), disturbance.DisturbanceConfig(
        record_history=False), out2, seed=11, progress=False)
    assert np.allclose(read_table(out2, "devices").target, dev.target)


def test_disturbance_flags_stuck_devices_and_excludes_their_samples(tmp_path):
    rig = sim_rig(rows=3, cols=3, seed=4, stuck_hrs_rate=0.3, stuck_lrs_rate=0.2)
    truth = rig.crossbar.stuck.copy()
    assert (truth != 0).any()
    out = tmp_path / "d.h5"
    cfg = disturbance.DisturbanceConfig(record_history=False)
    disturbance.run(rig, cfg, out, seed=1, progress=False)
    dev = read_table(out, "devices")
    flagged = dev.status.to_numpy() != WORKING
    assert np.array_equal(flagged, truth.reshape(-1) != 0)
    s = read_table(out, "samples")
    bad = set(dev.device[flagged])
    assert s[s.device.isin(bad)].excluded.all()


def test_stuck_screening_matches_the_simulated_truth(tmp_path):
    rig = sim_rig(rows=4, cols=4, seed=3, stuck_hrs_rate=0.15, stuck_lrs_rate=0.15)
    truth = rig.crossbar.stuck.reshape(-1)
    assert (truth == 1).any() and (truth == 2).any()
    out = tmp_path / "s.h5"
    res = stuck.run(rig, stuck.StuckConfig(), out, progress=False)
    df = read_table(out, "devices")
    expect = np.select([truth == 1, truth == 2], [STUCK_HRS, STUCK_LRS], WORKING)
    assert df.status.tolist() == expect.tolist()
    # the screen's criterion is K pulses at the ramp cap (give_up_at_cap), not the fast
    # variant's earlier stop on still reads (give_up_still)
    k = stuck.StuckConfig().tune.give_up_at_cap
    assert (df.set_pulses[truth == 1] >= k).all() and (df.reset_pulses[truth == 2] >= k).all()
    # reads at the 100 uA ceiling are clipped and flagged
    assert (df.g_initial <= rig.read_settings.ceiling_S).all()
    assert (df.initial_clipped == (df.g_initial >= rig.read_settings.ceiling_S)).all()
    assert res.summary["working"] == int((truth == 0).sum())


def test_pulsed_iv_staircase(tmp_path):
    rig = sim_rig(rows=2, cols=2, seed=0)
    cfg = iv_pulsed.PulsedIVConfig(devices=[(1, 1)], v_max=1.6, v_min=-1.8, v_step=0.1)
    iv_pulsed.run(rig, cfg, tmp_path / "iv.h5", progress=False)
    df = read_table(tmp_path / "iv.h5", "points")
    v = df.volts.to_numpy()
    assert v.max() == pytest.approx(1.6) and v.min() == pytest.approx(-1.8)
    assert np.allclose(df.i_read, df.g * 0.2)
    # hysteresis: the SET branch raises the state, the RESET branch lowers it (from the peak
    # the state reached, which may come after v_max: pulses above threshold on the way down)
    i_top = int(np.argmax(v))
    i_bot = int(np.argmin(v))
    assert df.g[i_top] > df.g[0] and df.g[i_bot] < df.g[:i_bot].max()


def test_bad_device_lists_and_ctrl_c_leaves_rig_safe(tmp_path):
    rig = sim_rig(rows=2, cols=2)
    with pytest.raises(ProtocolError):
        stuck.run(rig, stuck.StuckConfig(devices=[(5, 0)]), tmp_path / "x.h5", progress=False)
    with pytest.raises(ProtocolError):
        stuck.run(rig, stuck.StuckConfig(devices=[(0, 0), (0, 0)]), tmp_path / "x.h5",
                  progress=False)

    calls = {"safe": 0, "n": 0}
    orig_safe, orig_pr = rig.safe_state, rig._pulse_and_read

    def safe():
        calls["safe"] += 1
        orig_safe()

    def pulse_and_read(*a):
        calls["n"] += a[:2] == (0, 1)
        if calls["n"] > 5:  # Ctrl-C in the middle of the second device
            raise KeyboardInterrupt
        return orig_pr(*a)

    rig.safe_state, rig._pulse_and_read = safe, pulse_and_read
    out = tmp_path / "k.h5"
    with pytest.raises(KeyboardInterrupt):
        stuck.run(rig, stuck.StuckConfig(), out, progress=False)
    assert calls["safe"] >= 1
    info = list_runs(out)[-1]
    assert not info.complete and 1 <= info.units_done < 4
    assert len(read_table(out, "devices")) == info.units_done
    # an already complete file is reported complete, and not overwritten by other settings
    rig2 = sim_rig(rows=1, cols=1)
    done = tmp_path / "c.h5"
    stuck.run(rig2, stuck.StuckConfig(), done, progress=False)
    before = done.read_bytes()
    assert stuck.run(rig2, stuck.StuckConfig(), done, progress=False).already_complete
    with pytest.raises(DatabaseError, match="seed"):
        stuck.run(rig2, stuck.StuckConfig(), done, seed=1, progress=False)
    assert done.read_bytes() == before


def test_tuning_untuning_progress_moves_inside_a_device(tmp_path, monkeypatch):
    """The bar advances once per tuning (not per device), with its pulses, says which level and
    repeat it is on, shows tunings, pulses and an ETA, and a resumed run starts it where the
    file stopped."""
    from rich.console import Console

    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: the bar shows every column

    from protocols.campaigns import _loop
    from protocols.progress import Bar

    bars = []

    class Spy(Bar):
        def __init__(self, title, total, done=0, **kw):
            super().__init__(title, total, done, **kw)
            self.start, self.total, self.wheres, self.steps = done, total, [], []
            bars.append(self)

        def current(self, where):
            self.wheres.append(where)
            super().current(where)

        def advance(self, pulses=0):
            self.steps.append(pulses)
            super().advance(pulses)
            if self.p is not None:     # what the terminal shows now
                c = Console(record=True, width=200, force_terminal=False)
                c.print(self.p.get_renderable())
                self.text = c.export_text()

    monkeypatch.setattr(_loop, "Bar", Spy)
    cfg = tuning_untuning.TuningUntuningConfig(devices=[(1, 2)], levels=2, repeats=2)
    out = tmp_path / "tu.h5"
    tuning_untuning.run(sim_rig(seed=2), cfg, out, seed=1, progress=True)
    (bar,) = bars
    assert (bar.start, bar.total) == (0, 4)
    assert bar.wheres == [f"device (1,2) level {lv}/2 repeat {rep}/2"
                          for lv in (1, 2) for rep in (1, 2)]
    df = read_table(out, "tunings")
    assert bar.steps == (df.untune_pulses + df.pulses).tolist() and min(bar.steps) > 0
    assert "4/4 tunings" in bar.text and f"{sum(bar.steps)} pulses" in bar.text
    assert "device (1,2) level 2/2 repeat 2/2" in bar.text and "ETA" in bar.text

    # a run stopped after three tunings: its continuation's bar starts at 3 of 4
    part = tmp_path / "part.h5"
    rig = sim_rig(seed=2)
    calls = {"n": 0}
    orig = _loop.commit_state

    def stop_after_three(r):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return orig(r)

    monkeypatch.setattr(_loop, "commit_state", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        tuning_untuning.run(rig, cfg, part, seed=1, progress=False)
    monkeypatch.setattr(_loop, "commit_state", orig)
    tuning_untuning.run(sim_rig(seed=2), cfg, part, seed=1, progress=True)
    assert (bars[-1].start, bars[-1].total, len(bars[-1].steps)) == (3, 4, 1)
    assert bars[-1].wheres == ["device (1,2) level 2/2 repeat 2/2"]
