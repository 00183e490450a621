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
