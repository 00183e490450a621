"""SimulatedRig: the CrossbarRig seam on a Crossbar (V/3 writes, grounded reads, clock)."""

import numpy as np
import pytest

from instruments.errors import SafetyLimitError
from protocols.rig import ReadSettings
from simulator.config import CrossbarConfig, DeviceParams, LatencyConfig
from simulator.crossbar import Crossbar
from simulator.direct_rig import SimulatedRig


def _rig(**kw):
    cfg = CrossbarConfig(stuck_hrs_rate=0, stuck_lrs_rate=0, **kw)
    return SimulatedRig(Crossbar(cfg, seed=3))


def test_shape_reads_and_clock_accounting():
    lat = LatencyConfig(round_trip=2e-3, read_time=10e-6, pulse_edge=10e-9)
    rig = SimulatedRig(Crossbar(seed=1), latency=lat)
    assert rig.shape == (8, 8) and rig.clock == 0
    rig.read(0, 0)
    assert rig.clock == pytest.approx(2e-3 + 10e-6)
    rig.pulse(1, 1, 1.2, 200e-9)
    assert rig.clock == pytest.approx(2 * 2e-3 + 10e-6 + 220e-9)
    out = rig.pulse_and_read(1, 1, 1.2, 200e-9, n_reads=3)
    assert out.shape == (3,)
    assert rig.clock == pytest.approx(3 * 2e-3 + 4 * 10e-6 + 440e-9)
    m = rig.read_array()
    assert m.shape == (8, 8)
    assert rig.crossbar.clock.totals["round_trip"] == pytest.approx((3 + 64) * 2e-3)


def test_pulses_move_selected_device_and_disturb_others_via_v3():
    rig = _rig()
    xb = rig.crossbar
    g0 = xb.conductance()
    for _ in range(15):
        rig.pulse(4, 4, 1.7, 200e-9)
    d = xb.conductance() - g0
    assert d[4, 4] > 10e-6
    others = np.delete(d.ravel(), 4 * 8 + 4)
    assert np.count_nonzero(others) > 0          # half-select disturbance is real
    assert np.median(np.abs(others)) < 0.05 * d[4, 4]


def test_reads_are_clipped_at_the_range_ceiling():
    rig = _rig(r_line=0.0, r_source=0.0)
    xb = rig.crossbar
    for _ in range(200):
        rig.pulse(0, 0, 2.0, 1e-6)
    assert xb.conductance()[0, 0] > 520e-6
    assert rig.read(0, 0) == 500e-6
    assert rig.read_array()[0, 0] == 500e-6
    low = SimulatedRig(xb, read=ReadSettings(ceiling_S=300e-6))
    assert low.read(0, 0) == 300e-6


def test_safety_limits_apply_before_the_physics():
    rig = _rig()
    g0 = rig.crossbar.G
    with pytest.raises(SafetyLimitError):
        rig.pulse(0, 0, 3.0, 200e-9)
    with pytest.raises(IndexError):
        rig.read(8, 0)
    assert np.array_equal(rig.crossbar.G, g0)
    with rig:
        rig.read(0, 0)


def test_closed_loop_tuning_reaches_one_percent():
    # a minimal write-verify loop (not the protocol): the rig's reads must be good enough
    rig = _rig()
    target = 250e-6
    vs, vr = 0.8, -1.1
    ok = 0
    for _ in range(600):
        g = rig.read(2, 3)
        if abs(g - target) <= 0.01 * target:
            ok += 1
            if ok >= 10:
                break
            continue
        ok = 0
        if g < target:
            rig.pulse(2, 3, vs, 200e-9)
            vs, vr = min(vs + 0.02, 2.0), -1.1
        else:
            rig.pulse(2, 3, vr, 200e-9)
            vr, vs = max(vr - 0.02, -2.4), 0.8
    assert ok >= 10


# -- the DC path: rows driven, column currents measured ------------------------------------

def test_column_currents_are_the_nodal_solution_and_charge_one_execution():
    lat = LatencyConfig(round_trip=2e-3, smu_settle=1e-3, line_frequency=50.0)  # 0.1 PLC: 2 ms
    rig = SimulatedRig(Crossbar(CrossbarConfig(stuck_hrs_rate=0, stuck_lrs_rate=0), seed=2),
                       latency=lat, ideal={"noise"})
    v = np.random.default_rng(1).uniform(-0.2, 0.2, (5, 3))
    rows, cols = np.array([1, 4, 6]), np.array([0, 7])
    g = rig.crossbar.conductance()         # the sweep's start (its stress moves the devices)
    out = rig.column_currents(rows, v, cols)
    row_v = np.zeros((5, 8))
    row_v[:, rows] = v
    _, cc = rig.crossbar._solver.readout_currents(g, row_v)
    np.testing.assert_allclose(out, cc[:, cols], rtol=1e-12)
    assert rig.clock == pytest.approx(2e-3 + 5 * (1e-3 + 2e-3))
    t = rig.time_breakdown()
    assert t["dc_settle"] == pytest.approx(5e-3) and t["dc_integration"] == pytest.approx(1e-2)
    assert "relay" not in t   # one source per row, one meter per column: nothing switched


def test_fewer_channels_than_lines_switch_relays_when_the_lines_change():
    from protocols.rig import Channels

    lat = LatencyConfig(relay_switch=15e-3)
    rig = SimulatedRig(Crossbar(seed=2), latency=lat, channels=Channels(sources=4, meters=2))
    v = np.full((2, 4), 0.1)
    rig.column_currents([0, 1, 2, 3], v, [0, 1])
    rig.column_currents([0, 1, 2, 3], v, [0, 1])      # same lines: no relay change
    rig.column_currents([0, 1, 2, 3], v, [2, 3])
    assert rig.time_breakdown()["relay"] == pytest.approx(2 * 15e-3)
    with pytest.raises(ValueError, match="2 meters"):
        rig.column_currents([0], v[:, :1], [0, 1, 2])
    with pytest.raises(ValueError, match="4 sources"):
        rig.column_currents(range(5), np.full((1, 5), 0.1), [0])


def test_a_resumed_dc_path_keeps_its_routing():
    # the lines the switched DC path has connected are instrument state: a run resumed from a
    # commit connects the same lines again only when the uninterrupted run would have
    from protocols.rig import Channels

    lat = LatencyConfig(relay_switch=15e-3)
    ch = Channels(sources=4, meters=2)
    rig = SimulatedRig(Crossbar(seed=2), latency=lat, channels=ch)
    v = np.full((2, 4), 0.1)
    rig.column_currents([0, 1, 2, 3], v, [0, 1])
    state = rig.save_state()
    assert state["rig"] == {"routing": [[0, 1, 2, 3], [0, 1]]}
    again = SimulatedRig(Crossbar(seed=2), latency=lat, channels=ch)
    again.restore_state(state)
    before = again.time_breakdown().get("relay", 0.0)
    again.column_currents([0, 1, 2, 3], v, [0, 1])
    assert again.time_breakdown().get("relay", 0.0) == before     # nothing switched
    assert SimulatedRig(Crossbar(seed=2)).save_state().get("rig") is None


def test_ideal_effects_switch_line_resistance_and_nonlinearity_off():
    xb = Crossbar(CrossbarConfig(stuck_hrs_rate=0, stuck_lrs_rate=0), seed=8)
    v = np.full((1, 8), 0.2)
    g = xb.conductance()
    ideal = SimulatedRig(xb, ideal={"lines", "nonlinearity", "noise"})
    np.testing.assert_allclose(ideal.column_currents(np.arange(8), v, np.arange(8)),
                               v @ g, rtol=1e-12)
    real = SimulatedRig(xb, ideal={"noise"}).column_currents(np.arange(8), v, np.arange(8))
    assert np.all(real < v @ g)   # IR drop along the lines: less current than ideal
    with pytest.raises(ValueError, match="unknown effect"):
        SimulatedRig(xb, ideal={"gravity"})
    still = SimulatedRig(xb, ideal={"stress"})
    before = xb.state_dict()["rtn_next"].copy()
    still.column_currents(np.arange(8), v, np.arange(8))
    np.testing.assert_array_equal(xb.state_dict()["rtn_next"], before)   # no DC stress


def test_column_currents_refuse_levels_beyond_the_read_limit_before_the_array_sees_them():
    rig = _rig()
    before = rig.crossbar.state_dict()
    with pytest.raises(SafetyLimitError):
        rig.column_currents([0, 1], np.array([[0.1, -0.6]]), [0])
    assert rig.clock == 0.0
    np.testing.assert_array_equal(rig.crossbar.state_dict()["G"], before["G"])
    for bad in (np.array([[np.nan, 0.1]]), np.zeros((0, 2)), np.zeros((1, 3))):
        with pytest.raises(ValueError):
            rig.column_currents([0, 1], bad, [0])
    with pytest.raises(ValueError, match="twice"):
        rig.column_currents([1, 1], np.zeros((1, 2)), [0])
    with pytest.raises(IndexError):
        rig.column_currents([0], np.zeros((1, 1)), [8])


def test_column_currents_stop_at_the_current_compliance():
    from instruments.limits import SafetyLimits
    from protocols.errors import ProtocolError

    rig = SimulatedRig(Crossbar(seed=3), limits=SafetyLimits(i_compliance=1e-4))
    with pytest.raises(ProtocolError, match="compliance"):
        rig.column_currents(np.arange(8), np.full((1, 8), 0.2), np.arange(8))


def test_read_array_reads_each_device_at_its_own_time():
    # a map takes rows*cols executions: a device read late in the map has relaxed for longer,
    # as on a station that reads one device per execution (time-dependent physics sees it)
    lat = LatencyConfig(round_trip=1.0, read_time=10e-6)
    dev = DeviceParams(volatile_fraction=0.5, volatile_cap=0.2, sigma_volatile=0.0, tau_relax=1.0,
                       rtn_count=0)
    cfg = CrossbarConfig(rows=2, cols=2, stuck_hrs_rate=0, stuck_lrs_rate=0, r_line=0.0,
                         r_source=0.0, device=dev)
    rig = SimulatedRig(Crossbar(cfg, seed=1), latency=lat)
    xb = rig.crossbar
    for (i, j) in ((0, 0), (1, 1)):
        for _ in range(30):
            xb.pulse_device(i, j, 1.6, 200e-9)
    gv0 = xb.Gv
    assert gv0[0, 0] > 10e-6 and gv0[1, 1] > 10e-6
    t0 = rig.clock
    g = rig.read_array()
    for (i, j), k in (((0, 0), 1), ((1, 1), 4)):
        # device number k in raster order is read k round trips (and k-1 reads) into the map
        seen = xb.G[i, j] + gv0[i, j] * np.exp(-(k * 1.0 + (k - 1) * 10e-6) / dev.tau_relax)
        assert g[i, j] == pytest.approx(seen, abs=5 * np.hypot(0.0015 * seen, 0.45e-6))
    assert rig.clock == pytest.approx(t0 + 4 * (1.0 + 10e-6))


def test_column_currents_act_on_a_lost_ctrl_c_and_mark_the_rig_in_use():
    import signal

    from protocols import interrupts

    rig = _rig()
    rig.safe_state()
    with interrupts.sigint_handler():
        try:
            signal.raise_signal(signal.SIGINT)   # recorded, as one lost in a finaliser would be
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt):
            rig.column_currents([0], np.full((1, 1), 0.1), [0])
    assert rig.clock == 0.0 and rig.safe.state == "safe"   # nothing reached the array
    rig.column_currents([0], np.full((1, 1), 0.1), [0])
    assert rig.safe.state == "in use"


def test_read_out_noise_is_that_of_the_smus_integration():
    """The array tester's column currents carry the read noise of a current integrated for
    READOUT_NPLC, as the stations' SMUs measure it (they had the noise of one 10 us read: 13
    times the absolute part at the 4200's 0.1 PLC)."""
    lat = LatencyConfig()
    xb = Crossbar(CrossbarConfig(stuck_hrs_rate=0, stuck_lrs_rate=0), seed=3)
    rig = SimulatedRig(xb, latency=lat, ideal={"stress"})
    cur = rig.column_currents([0], np.full((400, 1), 0.01), [0])[:, 0]
    p = xb.config.device
    t_int = rig.READOUT_NPLC / lat.line_frequency
    want = np.hypot(p.read_noise_abs / np.sqrt(t_int / lat.read_time),
                    p.read_noise_rel * abs(cur.mean()))
    assert np.std(cur) == pytest.approx(want, rel=0.15)
