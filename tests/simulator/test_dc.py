"""DC physics of the simulated crossbar: operating points with SMU compliance, the stress of held
levels (the same per-pulse physics as any pulse), unformed devices and injected line faults."""

from __future__ import annotations

import numpy as np
import pytest

from simulator import dc, physics
from simulator.config import CrossbarConfig, LineFault
from simulator.crossbar import Crossbar
from simulator.nodal import NodalSolver

NONE = np.zeros(0, int)


def _grounded_read_sources(m, n, row, col, volts, comp=10e-3):
    others_r = np.array([i for i in range(m) if i != row])
    others_c = np.array([j for j in range(n) if j != col])
    return [dc.Source(np.array([row]), NONE, volts, comp, name="drive"),
            dc.Source(NONE, np.array([col]), 0.0, comp, name="sense"),
            dc.Source(others_r, others_c, 0.0, None, name="gnd")]


def test_operating_point_equals_the_grounded_read_of_the_solver():
    xb = Crossbar(CrossbarConfig(), seed=3)
    op = dc.operating_point(xb, _grounded_read_sources(8, 8, 2, 5, 0.2))
    want = xb.solver.grounded_column_currents(xb.conductance(), 0.2, rows=[2])[0, 5]
    assert -op.current[1] == pytest.approx(want, rel=1e-9)
    assert not op.limited.any() and op.volts[0] == 0.2


def test_compliance_turns_the_smu_into_a_current_source():
    xb = Crossbar(CrossbarConfig(), seed=3)
    free = dc.operating_point(xb, _grounded_read_sources(8, 8, 2, 5, 0.5))
    limit = abs(free.current[0]) / 3
    src = _grounded_read_sources(8, 8, 2, 5, 0.5, comp=limit)
    op = dc.operating_point(xb, src)
    assert op.limited[0] and op.current[0] == pytest.approx(limit, rel=1e-4)
    assert 0 < op.volts[0] < 0.5                 # its output sits below the level asked for
    # a sensing SMU at 0 V in compliance rises towards the drive, the current it takes is -limit
    src = _grounded_read_sources(8, 8, 2, 5, 0.5)
    src[1].compliance = abs(free.current[1]) / 4
    op = dc.operating_point(xb, src)
    assert op.limited[1] and op.current[1] == pytest.approx(-src[1].compliance, rel=1e-4)
    assert 0 < op.volts[1] < 0.5


def test_a_forced_current_meets_its_voltage_compliance():
    xb = Crossbar(CrossbarConfig(rows=1, cols=1), seed=0)
    g = xb.G[0, 0]
    src = [dc.Source(np.array([0]), NONE, 1.0, amps=10e-6), dc.Source(NONE, np.array([0]), 0.0)]
    op = dc.operating_point(xb, src)
    assert op.current[0] == pytest.approx(10e-6, rel=1e-6) and not op.limited[0]
    src[0].amps = 1.0                             # far more than 1 V can push
    op = dc.operating_point(xb, src)
    assert op.limited[0] and op.volts[0] == 1.0 and op.current[0] < g * 1.5


def test_a_short_hold_is_a_pulse_and_a_long_one_follows_the_dc_voltage_time_slope():
    # up to t_ref a hold is the pulse law: a 200 ns hold is exactly one pulse of that width
    a = Crossbar(CrossbarConfig(rows=1, cols=1), seed=11)
    b = Crossbar(CrossbarConfig(rows=1, cols=1), seed=11)
    src = [dc.Source(np.array([0]), NONE, 1.1), dc.Source(NONE, np.array([0]), 0.0)]
    v = dc.operating_point(a, src).device_voltages   # 1.1 V less the drop on the contacts
    dc.hold(a, src, 200e-9)
    b.apply_device_voltages(v, 200e-9)
    assert a.G[0, 0] == b.G[0, 0] != Crossbar(CrossbarConfig(rows=1, cols=1), seed=11).G[0, 0]
    # beyond it, five decades of hold time act as a t_ref pulse dc_volts_per_decade * 5
    # higher (0.25 V), on both branches, where the pulse law's exponential would add
    # V0 ln(1e5) (0.9 V for SET, 2.5 V for RESET)
    xb = Crossbar(CrossbarConfig(rows=2, cols=2), seed=3)
    p = xb.config.device
    t_ref, up = p.t_ref, 5 * p.dc_volts_per_decade
    for volts in (0.9, -1.3, 0.3, -0.4):
        v = np.full((2, 2), volts)
        held = xb.predict_change(v, xb.dc_widths(v, 1e5 * t_ref)[0])
        pulse = xb.predict_change(v + np.sign(volts) * up, t_ref)
        assert held == pytest.approx(pulse, rel=1e-9, abs=1e-15), volts
    # widths of consecutive stretches of one hold add up to the width of the whole hold
    v = np.full((2, 2), 0.7)
    parts = xb.dc_widths([v, v], 3e-3).sum(axis=0)
    assert parts == pytest.approx(xb.dc_widths(v, 6e-3)[0], rel=1e-9)


def _stress_of(patterns, held=2.7e-3, seed=6):
    """Relative conductance change of an 8x8 chip after the read-out patterns `patterns`."""
    xb = Crossbar(CrossbarConfig(rows=8, cols=8, stuck_hrs_rate=0, stuck_lrs_rate=0), seed=seed)
    g0 = xb.G
    dc.sweep_stress(xb, patterns, [(held, "dc")])
    return np.abs(xb.G / g0 - 1)


def test_a_hold_continues_through_level_changes_and_across_calls():
    # 200 read-out patterns alternating between two nearly equal levels stress the chip as one
    # hold of the same length does; restarting the hold's age at every change of level made
    # them stress ~30 times more (and the 10-year read bound behind dc_volts_per_decade fail)
    level = np.full((200, 8, 8), 0.75)
    steady = _stress_of(level)
    alternating = level.copy()
    alternating[1::2] -= 1e-4
    assert steady.max() > 1e-4  # a measurable stress
    assert _stress_of(alternating).sum() == pytest.approx(steady.sum(), rel=0.02)
    # one call of 200 patterns or 200 calls of one: the chip remembers its DC stress
    xb = Crossbar(CrossbarConfig(rows=8, cols=8, stuck_hrs_rate=0, stuck_lrs_rate=0), seed=6)
    g0 = xb.G
    for v in alternating:
        dc.sweep_stress(xb, v[None], [(2.7e-3, "dc")])
    assert np.abs(xb.G / g0 - 1).sum() == pytest.approx(steady.sum(), rel=0.02)


def test_a_sequence_of_levels_stresses_no_more_than_one_hold_at_its_highest_level():
    rng = np.random.default_rng(1)
    xb = Crossbar(CrossbarConfig(rows=4, cols=4), seed=2)
    p = xb.config.device
    for sign in (1.0, -1.0):
        seq = sign * rng.uniform(0.0, 0.9, (50, 4, 4))
        top = np.full((50, 4, 4), sign * 0.9)
        accel = [physics.acceleration(xb.G, xb.Gv, v, xb.state_dict()["ds"],
                                      xb.state_dict()["dr"], p) for v in (seq, top)]
        dose = [(xb.dc_widths(v, 1e-3) * a).sum(axis=0) for v, a in zip((seq, top), accel, strict=True)]
        assert (dose[0] <= dose[1] * (1 + 1e-9)).all()
        assert (dose[0] < 0.9 * dose[1]).any()


def test_the_dc_history_restarts_where_a_device_was_reprogrammed():
    xb = Crossbar(CrossbarConfig(rows=4, cols=4, stuck_hrs_rate=0, stuck_lrs_rate=0), seed=2)
    v = np.full((4, 4), 0.3)
    fresh = xb.dc_widths(v, 1e-3)[0]
    g = xb.G
    xb.start_dc_hold()
    xb.hold_devices(v, 1.0)
    # a device of low conductance, its SET threshold near 0.3 V, switched under the hold
    steady = np.abs(xb.G / g - 1) < 1e-3
    assert steady.sum() >= 14
    continued = xb.dc_widths(v, 1e-3)[0]
    assert (continued[steady] < 0.01 * fresh[steady]).all()
    g = xb.G
    pulse = np.zeros((4, 4))
    pulse[1, :] = 1.6                              # row 1 written: its devices SET
    pulse[2, :] = 0.3                              # row 2 half-selected: it barely moves
    xb.apply_device_voltages(pulse, 1e-6)
    assert (np.abs(xb.G[1] / g[1] - 1) > 1e-2).all() and (np.abs(xb.G[2] / g[2] - 1) < 1e-4).all()
    after = xb.dc_widths(v, 1e-3)[0]
    assert (after[1] > 50 * continued[1]).all()
    rest = steady.copy()
    rest[1] = False
    assert after[rest] == pytest.approx(continued[rest], rel=1e-3)
    # saved and restored, the history goes on
    twin = Crossbar.from_state_dict(xb.state_dict())
    assert twin.dc_widths(v, 1e-3) == pytest.approx(xb.dc_widths(v, 1e-3), rel=1e-12)


@pytest.mark.parametrize("volts", [0.2, -0.2])
def test_a_read_level_held_for_a_second_disturbs_no_device_a_read_would_not(volts):
    # reads are non-disturbing in this simulator; a DC level at the read voltage held for 1 s
    # (a 50 PLC point) is too (the pulse law extrapolated moved devices by ~10 % in 20 ms).
    # Except devices whose t_ref SET threshold is itself near the read level (low G, where
    # the state-dependent threshold falls towards 0 V): the pulse law would have a single
    # 10 us read SET them as much, so that is the threshold model's limit, not the hold's.
    xb = Crossbar(CrossbarConfig(rows=8, cols=8, stuck_hrs_rate=0, stuck_lrs_rate=0), seed=5)
    g0 = xb.G.copy()
    low = physics.vth_set(g0, xb.config.device, xb.state_dict()["ds"]) < 0.6
    dc.hold(xb, [dc.Source(np.arange(8), NONE, volts), dc.Source(NONE, np.arange(8), 0.0)],
            1.0)
    change = np.abs(xb.G / g0 - 1)
    assert np.median(change) < 1e-5
    assert change[~low].max() < 1e-3


def test_a_long_hold_near_threshold_still_switches():
    c = Crossbar(CrossbarConfig(rows=1, cols=1), seed=11)
    g0 = c.G[0, 0]
    src = [dc.Source(np.array([0]), NONE, 1.2), dc.Source(NONE, np.array([0]), 0.0)]
    dc.hold(c, src, 20e-3)
    assert c.G[0, 0] > 1.2 * g0


def test_compliance_limits_a_set_under_dc():
    # a SET driven at 1.5 V: with 100 uA of compliance the SMU's voltage falls as the current
    # reaches it, the current stays there and the device ends far below a free one
    free = Crossbar(CrossbarConfig(rows=1, cols=1), seed=2)
    limited = Crossbar(CrossbarConfig(rows=1, cols=1), seed=2)
    def src(comp):
        return [dc.Source(np.array([0]), NONE, 1.5, comp), dc.Source(NONE, np.array([0]), 0.0)]
    dc.hold(free, src(None), 10e-3)
    op = dc.hold(limited, src(100e-6), 10e-3)
    assert op.limited[0] and op.current[0] == pytest.approx(100e-6, rel=1e-4)
    assert op.volts[0] < 1.5
    assert free.G[0, 0] > 3 * limited.G[0, 0]


def test_unformed_devices_form_at_their_forming_voltage():
    cfg = CrossbarConfig(rows=4, cols=4, unformed_rate=1.0, stuck_hrs_rate=0, stuck_lrs_rate=0)
    xb = Crossbar(cfg, seed=4)
    p = cfg.device
    assert xb.unformed.all() and np.allclose(xb.G, p.g_unformed)
    vf = xb._vform.copy()
    assert abs(vf.mean() - p.v_form_mean) < 3 * p.v_form_std
    # no response below the forming voltage, however long: frozen like a stuck device
    below = vf.min() - 0.05
    xb.apply_device_voltages(np.full((4, 4), below), 1e-3)
    assert xb.unformed.all() and np.allclose(xb.G, p.g_unformed)
    # the device whose forming voltage is reached forms and takes its formed conductance
    v = np.zeros((4, 4))
    v[1, 2] = vf[1, 2] + 1e-6
    xb.apply_device_voltages(v, 200e-9)
    assert not xb.unformed[1, 2] and xb.unformed.sum() == 15
    assert xb.G[1, 2] > 50 * p.g_unformed


def test_forming_free_chips_keep_their_random_draws():
    a = Crossbar(CrossbarConfig(), seed=5)
    b = Crossbar(CrossbarConfig(unformed_rate=0.0), seed=5)
    assert np.array_equal(a.G, b.G) and not a.unformed.any()
    assert a.rng.bit_generator.state == b.rng.bit_generator.state


def test_unformed_state_survives_a_state_dict_round_trip():
    xb = Crossbar(CrossbarConfig(rows=2, cols=2, unformed_rate=1.0), seed=1)
    again = Crossbar.from_state_dict(xb.state_dict())
    assert np.array_equal(again.unformed, xb.unformed)
    assert np.array_equal(again._vform, xb._vform, equal_nan=True)


@pytest.mark.parametrize("r_line", [0.0, 0.75])
def test_an_open_at_the_drive_end_floats_the_line(r_line):
    G = np.full((4, 4), 100e-6)
    ok = NodalSolver(4, 4, r_line, 2.0)
    cut = NodalSolver(4, 4, r_line, 2.0, faults=[LineFault(kind="open", line=("row", 1))])
    rv, cv = np.array([0.0, 0.2, 0.0, 0.0]), np.zeros(4)
    assert ok.solve(G, rv, cv).row_currents[1] > 70e-6
    res = cut.solve(G, rv, cv)
    assert res.row_currents[1] == 0 and np.abs(res.col_currents).max() < 1e-9


def test_an_open_inside_a_line_cuts_the_devices_beyond_it():
    G = np.full((4, 4), 100e-6)
    s = NodalSolver(4, 4, 0.75, 2.0, faults=[LineFault(kind="open", line=("col", 2), at=2)])
    res = s.solve(G, np.array([0.2, 0.0, 0.0, 0.0]), np.zeros(4))
    # column 2 is driven from row 3's end: rows 3 and 2 still reach it, rows 1 and 0 do not;
    # device (0, 2) drains through the cut piece into the grounded rows 1 instead
    assert abs(res.col_currents[2]) < 1e-6
    assert res.col_currents[0] == pytest.approx(-20e-6, rel=0.02)
    with pytest.raises(Exception, match="r_line"):
        NodalSolver(4, 4, 0.0, 2.0, faults=[LineFault(kind="open", line=("col", 2), at=2)])


def test_a_short_joins_two_lines():
    G = np.full((4, 4), 1e-6)
    s = NodalSolver(4, 4, 0.75, 2.0,
                    faults=[LineFault(kind="short", line=("row", 0), other=("row", 1), ohms=10)])
    res = s.solve(G, np.array([0.1, 0.0, 0.0, 0.0]), np.zeros(4))
    assert res.row_currents[0] == pytest.approx(0.1 / (10 + 2 + 2), rel=0.01)
    assert res.row_currents[1] == pytest.approx(-res.row_currents[0], rel=0.01)


def test_faults_must_name_lines_of_the_crossbar():
    with pytest.raises(ValueError, match="outside"):
        CrossbarConfig(faults=[{"kind": "open", "line": ["row", 9]}])
    with pytest.raises(ValueError, match="other"):
        CrossbarConfig(faults=[{"kind": "short", "line": ["row", 1]}])
