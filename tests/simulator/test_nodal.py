"""Nodal solver against hand-computed networks and the grounded-scheme limit."""

import math

import numpy as np
import pytest

from simulator.errors import SimulatorError
from simulator.nodal import NodalSolver

NAN = float("nan")


def test_1x1_linear_series_with_source_resistances():
    G, rs, V = 100e-6, 2.0, 0.2
    s = NodalSolver(1, 1, r_line=0.0, r_source=rs, v_nl=None)
    res = s.solve(np.array([[G]]), [V], [0.0])
    expected = V / (1 / G + 2 * rs)
    assert res.row_currents[0] == pytest.approx(expected, rel=1e-12)
    assert res.col_currents[0] == pytest.approx(-expected, rel=1e-12)
    assert s.grounded_column_currents(np.array([[G]]), V)[0, 0] == pytest.approx(expected, rel=1e-12)


def test_1x1_sinh_device_satisfies_its_iv_equation():
    G, rs, V, vnl = 300e-6, 5.0, 0.4, 0.81
    s = NodalSolver(1, 1, r_line=1.0, r_source=rs, v_nl=vnl, v_ref=0.2)
    i = s.solve(np.array([[G]]), [V], [0.0]).row_currents[0]
    scale = 0.2 / math.sinh(0.2 / vnl)
    # the device voltage is what the two source resistors leave over
    vd = V - 2 * rs * i
    assert i == pytest.approx(G * scale * math.sinh(vd / vnl), rel=1e-9)
    # nonlinearity: at 0.4 V the device conducts more than G
    assert i / vd > G * 1.01
    assert s.grounded_column_currents(np.array([[G]]), V)[0, 0] == pytest.approx(i, rel=1e-9)


def test_2x2_floating_read_is_direct_plus_series_sneak_path():
    g = np.array([[100e-6, 200e-6], [300e-6, 400e-6]])
    s = NodalSolver(2, 2, 0.0, 0.0, v_nl=None)
    res = s.solve(g, [0.2, NAN], [0.0, NAN])
    sneak = 1 / (1 / g[0, 1] + 1 / g[1, 1] + 1 / g[1, 0])
    assert -res.col_currents[0] == pytest.approx(0.2 * (g[0, 0] + sneak), rel=1e-12)
    assert res.row_currents[1] == 0.0 and res.col_currents[1] == 0.0
    # the floating row settles between the driven levels
    assert 0 < res.device_voltages[1, 0] < 0.2


def test_2x2_v2_read_collects_half_selected_column_current():
    g = np.array([[100e-6, 200e-6], [300e-6, 400e-6]])
    s = NodalSolver(2, 2, 0.0, 0.0, v_nl=None)
    res = s.solve(g, [0.2, 0.1], [0.0, 0.1])
    assert -res.col_currents[0] == pytest.approx(0.2 * g[0, 0] + 0.1 * g[1, 0], rel=1e-12)
    # device (1,1) sees 0 V, device (0,1) sees +0.1 V
    assert res.device_voltages[1, 1] == pytest.approx(0.0, abs=1e-15)
    assert res.device_voltages[0, 1] == pytest.approx(0.1)


def test_1x3_line_resistance_ladder():
    g = np.array([[100e-6, 250e-6, 400e-6]])
    r, rs, V = 3.0, 7.0, 0.2
    s = NodalSolver(1, 3, r_line=r, r_source=rs, v_nl=None)
    # each device with its column's sense resistor is one branch; ladder from the far end
    gb = 1 / (1 / g[0] + rs)
    y2 = gb[2]
    y1 = gb[1] + 1 / (r + 1 / y2)
    y0 = gb[0] + 1 / (r + 1 / y1)
    i_tot = V / (rs + 1 / y0)
    v0 = V - i_tot * rs
    v1 = v0 - (i_tot - v0 * gb[0]) * r
    v2 = v1 - (i_tot - v0 * gb[0] - v1 * gb[1]) * r
    expected = np.array([v0, v1, v2]) * gb
    got = s.grounded_column_currents(g, V)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    res = s.solve(g, [V], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(-res.col_currents, expected, rtol=1e-10)
    assert res.row_currents[0] == pytest.approx(i_tot, rel=1e-10)


def test_grounded_limit_zero_resistance_returns_device_conductance():
    rng = np.random.default_rng(3)
    g = rng.uniform(20e-6, 600e-6, (5, 7))
    for r_src in (0.0, 1e-9):
        s = NodalSolver(5, 7, 0.0, r_src, v_nl=0.81, v_ref=0.2)
        np.testing.assert_allclose(s.grounded_column_currents(g, 0.2) / 0.2, g, rtol=1e-6)
    # the general solver agrees, with line nodes and a tiny line resistance too
    s = NodalSolver(5, 7, 1e-9, 1e-9)
    rv = np.zeros(5)
    rv[2] = 0.2
    np.testing.assert_allclose(-s.solve(g, rv, np.zeros(7)).col_currents / 0.2, g[2], rtol=1e-6)


def test_grounded_batch_matches_single_solves_and_reads_low_with_line_resistance():
    rng = np.random.default_rng(4)
    g = rng.uniform(100e-6, 400e-6, (8, 8))
    s = NodalSolver(8, 8, 2.0, 2.0)
    batch = s.grounded_column_currents(g, 0.2)
    for i in (0, 5):
        rv = np.zeros(8)
        rv[i] = 0.2
        np.testing.assert_allclose(-s.solve(g, rv, np.zeros(8)).col_currents, batch[i], rtol=1e-9)
    err = batch / 0.2 / g - 1
    # physics.md §5.2: about -2.5 % at r = 2 ohm, never positive
    assert -0.06 < err.mean() < -0.01
    assert err.max() < 0


def test_all_floating_is_refused():
    s = NodalSolver(2, 2, 1.0, 1.0)
    with pytest.raises(SimulatorError):
        s.solve(np.full((2, 2), 1e-4), [NAN, NAN], [NAN, NAN])


def test_sparse_path_matches_dense(monkeypatch):
    import simulator.nodal as nodal

    rng = np.random.default_rng(5)
    g = rng.uniform(50e-6, 500e-6, (4, 5))
    dense = {r: NodalSolver(4, 5, 1.0, r) for r in (3.0, 0.0)}
    monkeypatch.setattr(nodal, "_DENSE_MAX_NODES", 0)
    rv = np.array([0.2, NAN, 0.05, NAN])
    cv = np.array([0.0, NAN, 0.1, NAN, 0.0])
    for r_src, de in dense.items():
        sp = NodalSolver(4, 5, 1.0, r_src)
        assert de.dense and not sp.dense
        np.testing.assert_allclose(sp.solve(g, rv, cv).col_currents,
                                   de.solve(g, rv, cv).col_currents, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(sp.grounded_column_currents(g, 0.2),
                                   de.grounded_column_currents(g, 0.2), rtol=1e-9)


@pytest.mark.parametrize("r_line, r_source, v_nl", [(0.75, 2.0, 0.81), (2.0, 0.0, 0.81),
                                                     (0.0, 5.0, 0.81), (5.0, 1.0, None)])
def test_grounded_fixed_point_matches_factorised_solve(r_line, r_source, v_nl):
    rng = np.random.default_rng(6)
    g = rng.uniform(5e-6, 900e-6, (6, 9))
    s = NodalSolver(6, 9, r_line, r_source, v_nl=v_nl)
    for volts in (0.2, -0.5, 1.2):
        ref = s.grounded_column_currents(g, volts, method="factor")
        got = s.grounded_column_currents(g, volts, method="fixed_point")
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)
        one = s.grounded_column_currents(g, volts, rows=[4], method="fixed_point")
        np.testing.assert_allclose(one[0], ref[4], rtol=1e-9, atol=1e-15)
    # the general (any-bias) solver agrees on one drive
    rv = np.zeros(6)
    rv[1] = 0.2
    np.testing.assert_allclose(-s.solve(g, rv, np.zeros(9)).col_currents,
                               s.grounded_column_currents(g, 0.2, rows=[1])[0], rtol=1e-9)


@pytest.mark.parametrize("r_line, r_source, v_nl", [(0.75, 2.0, 0.81), (2.0, 0.0, 0.81),
                                                     (0.0, 5.0, 0.81), (5.0, 1.0, None),
                                                     (0.75, 2.0, None)])
def test_driven_currents_match_the_newton_solve_for_any_all_driven_bias(r_line, r_source, v_nl):
    rng = np.random.default_rng(7)
    g = rng.uniform(5e-6, 900e-6, (6, 9))
    s = NodalSolver(6, 9, r_line, r_source, v_nl=v_nl)
    # the V/3 write routing read with the sensed column lifted (PmuRig 'write-routing'), a V/3
    # write and a random bias: every line driven
    rv, cv = np.full(6, 0.1), np.full(9, 0.2)
    rv[2], cv[4] = 0.3, 0.1
    third = np.full(6, 0.4), np.full(9, 0.8)
    third[0][1], third[1][3] = 1.2, 0.0
    for row_v, col_v in ((rv, cv), third, (rng.uniform(-1, 1, 6), rng.uniform(-1, 1, 9))):
        ref = s.solve(g, row_v, col_v)
        rc, cc = s.driven_currents(g, row_v, col_v)
        np.testing.assert_allclose(rc, ref.row_currents, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(cc, ref.col_currents, rtol=1e-8, atol=1e-14)
    with pytest.raises(SimulatorError, match="NaN"):
        s.driven_currents(g, np.full(6, NAN), cv)


def test_grounded_fixed_point_declines_a_weak_contraction():
    g = np.full((16, 16), 800e-6)
    s = NodalSolver(16, 16, 20.0, 10.0)
    with pytest.raises(SimulatorError, match="fixed-point"):
        s.grounded_column_currents(g, 0.2, method="fixed_point")
    # auto falls back to the factorised solve
    np.testing.assert_allclose(s.grounded_column_currents(g, 0.2, rows=[3]),
                               s.grounded_column_currents(g, 0.2, rows=[3], method="factor"))
    with pytest.raises(SimulatorError, match="method"):
        s.grounded_column_currents(g, 0.2, method="magic")


# -- any row drive, every bit line at virtual ground (analog read-out) ----------------------

def test_1x2_driven_row_with_line_resistance_is_the_hand_solved_ladder():
    # V -- rs -- a -- rl -- b ; a -- G0 -- BL0 -- rs -- 0 ; b -- G1 -- BL1 -- rs -- 0
    g0, g1, rs, rl, V = 300e-6, 150e-6, 2.0, 5.0, 0.15
    ra, rb = 1 / g0 + rs, rl + 1 / g1 + rs
    rp = ra * rb / (ra + rb)
    va = V * rp / (rs + rp)
    s = NodalSolver(1, 2, r_line=rl, r_source=rs, v_nl=None)
    rc, cc = s.readout_currents(np.array([[g0, g1]]), np.array([[V]]))
    np.testing.assert_allclose(cc[0], [va / ra, va / rb], rtol=1e-9)
    assert rc[0, 0] == pytest.approx(va / ra + va / rb, rel=1e-9)


def test_1x1_driven_sinh_device_satisfies_its_iv_equation_at_negative_drive():
    G, rs, V, vnl = 250e-6, 4.0, -0.18, 0.81
    s = NodalSolver(1, 1, r_line=0.0, r_source=rs, v_nl=vnl, v_ref=0.2)
    _, cc = s.readout_currents(np.array([[G]]), np.array([[V]]))
    i = cc[0, 0]
    vd = V - 2 * rs * i
    assert i < 0 and i == pytest.approx(G * 0.2 / math.sinh(0.2 / vnl) * math.sinh(vd / vnl),
                                        rel=1e-9)


@pytest.mark.parametrize("r_line,r_source,v_nl", [(0.75, 2.0, 0.81), (2.0, 5.0, None),
                                                  (0.0, 3.0, 0.81)])
def test_driven_fixed_point_matches_factorised_solve_and_the_general_solver(r_line, r_source,
                                                                           v_nl):
    rng = np.random.default_rng(5)
    g = rng.uniform(20e-6, 600e-6, (6, 5))
    row_v = rng.uniform(-0.2, 0.2, (7, 6))
    row_v[2, 3] = 0.0
    s = NodalSolver(6, 5, r_line, r_source, v_nl=v_nl)
    rc, cc = s.readout_currents(g, row_v, method="fixed_point")
    rc_f, cc_f = s.readout_currents(g, row_v, method="factor")
    np.testing.assert_allclose(cc, cc_f, rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(rc, rc_f, rtol=1e-8, atol=1e-15)
    for a in (0, 4):
        res = s.solve(g, row_v[a], np.zeros(5))
        np.testing.assert_allclose(cc[a], -res.col_currents, rtol=1e-8, atol=1e-15)
        np.testing.assert_allclose(rc[a], res.row_currents, rtol=1e-8, atol=1e-15)


def test_driven_one_row_equals_the_grounded_read():
    rng = np.random.default_rng(6)
    g = rng.uniform(50e-6, 500e-6, (8, 8))
    s = NodalSolver(8, 8, 0.75, 2.0)
    row_v = np.zeros((8, 8))
    np.fill_diagonal(row_v, 0.2)
    np.testing.assert_allclose(s.readout_currents(g, row_v)[1],
                               s.grounded_column_currents(g, 0.2), rtol=1e-12)


def test_driven_ideal_lines_and_linear_devices_is_the_matrix_product():
    rng = np.random.default_rng(7)
    g = rng.uniform(5e-6, 700e-6, (4, 6))
    row_v = rng.uniform(-0.3, 0.3, (5, 4))
    rc, cc = NodalSolver(4, 6, 0.0, 0.0, v_nl=None).readout_currents(g, row_v)
    np.testing.assert_allclose(cc, row_v @ g, rtol=1e-13)
    np.testing.assert_allclose(rc, row_v * g.sum(1), rtol=1e-13)


def test_driven_rejects_a_wrong_shape_or_a_floating_line():
    s = NodalSolver(2, 2, 0.5, 1.0)
    g = np.full((2, 2), 1e-4)
    with pytest.raises(SimulatorError):
        s.readout_currents(g, np.zeros((1, 3)))
    with pytest.raises(SimulatorError):
        s.readout_currents(g, np.array([[0.1, NAN]]))
