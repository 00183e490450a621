"""Per-pulse device physics: thresholds, monotonicity, limits, relaxation, I-V."""

import math

import numpy as np
import pytest

from simulator import physics
from simulator.config import DeviceParams

P = DeviceParams()


def step(g, v, seconds=200e-9, xi=1.0, p=P):
    G = np.array([g])
    g_new, gv_new = physics.pulse_update(G, np.zeros(1), np.array([float(v)]), seconds,
                                         0.0, 0.0, np.array([p.g0_set]), np.array([p.g0_reset]),
                                         np.array([xi]), None, p)
    return (g_new + gv_new)[0] - g


def test_thresholds_follow_the_reference_table():
    # physics.md §3.3: Vth_set 1.05 / 1.48 / 1.59 V, |Vth_reset| 1.90 / 1.30 / 1.15 V
    for g, vs, vr in ((100e-6, 1.05, 1.90), (250e-6, 1.48, 1.30), (400e-6, 1.59, 1.15)):
        assert physics.vth_set(g, P) == pytest.approx(vs, abs=0.01)
        assert physics.vth_reset(g, P) == pytest.approx(vr, abs=0.01)


def test_sub_threshold_barely_moves_above_threshold_does():
    g = 250e-6
    assert abs(step(g, 0.5)) < 1e-10          # far below SET threshold
    # RESET is softer but still tiny: the closed form at V0r (5 nS at the calibrated 0.215 V)
    w = (g - P.g_min) / P.g_max
    expect = -P.g0_reset * math.exp((0.5 - physics.vth_reset(g, P)) / P.v0_reset) * w
    assert step(g, -0.5) == pytest.approx(expect, rel=1e-9) and abs(expect) < 1e-8
    assert step(g, 1.6) > 0.5e-6              # +0.1 V above threshold: ~1 uS
    assert step(g, -1.5) < -0.5e-6             # +0.2 V beyond |Vth_reset| (softer RESET)
    # default (calibrated to the published database) V0r = 0.215 V:
    # -0.6 uS * exp((0.8 - 1.15) / 0.215) * (395 / 700)
    assert step(400e-6, -0.8) == pytest.approx(-0.0665e-6, rel=0.03)


def test_documented_reference_configuration_gives_the_reference_step():
    # physics.md §3.3 reference numbers at V0r = 0.17 V: -0.043 uS for a 0.8 V
    # RESET-direction pulse at 400 uS
    p = P.model_copy(update={"v0_reset": 0.17})
    assert step(400e-6, -0.8, p=p) == pytest.approx(-0.043e-6, rel=0.03)


def test_step_is_monotonic_in_amplitude_and_width():
    amps = np.linspace(0.3, 2.0, 40)
    set_steps = [step(200e-6, v) for v in amps]
    reset_steps = [step(200e-6, -v) for v in amps]
    assert np.all(np.diff(set_steps) >= 0) and set_steps[-1] > set_steps[0]
    assert np.all(np.diff(reset_steps) <= 0) and reset_steps[-1] < reset_steps[0]
    widths = [50e-9, 100e-9, 200e-9, 400e-9, 1e-6]
    set_w = [step(200e-6, 1.45, w) for w in widths]
    reset_w = [step(200e-6, -1.35, w) for w in widths]
    assert np.all(np.diff(set_w) > 0)
    assert np.all(np.diff(reset_w) < 0)


def test_fixed_set_train_self_limits_like_reference():
    # physics.md §3.3: +1.3 V from 100 uS -> 112 / 143 / 159 uS after 1 / 20 / 50 pulses
    p = P.model_copy(update={"volatile_fraction": 0.0})
    g, out = 100e-6, {}
    for k in range(1, 51):
        g += step(g, 1.3, p=p)
        out[k] = g
    assert out[1] == pytest.approx(112e-6, rel=0.02)
    assert out[20] == pytest.approx(143e-6, rel=0.03)
    assert out[50] == pytest.approx(159e-6, rel=0.03)


def test_limits_and_frozen_devices():
    G = np.array([650e-6, 100e-6, 300e-6, 300e-6])
    v = np.array([2.4, -2.4, 2.4, -2.4])
    frozen = np.array([False, False, True, True])
    g0 = np.full(4, 1e-3)   # huge steps to hit the clips
    g_new, gv = physics.pulse_update(G, np.zeros(4), v, 1e-6, 0.0, 0.0, g0, g0,
                                     np.ones(4), frozen, P)
    assert g_new[0] + gv[0] == pytest.approx(P.g_max)
    assert g_new[1] == pytest.approx(50e-6)        # at most halved
    assert g_new[2] == 300e-6 and g_new[3] == 300e-6 and gv[2] == 0 and gv[3] == 0


def test_volatile_share_and_cap():
    G = np.array([200e-6])
    g_new, gv = physics.pulse_update(G, np.zeros(1), np.array([1.7]), 200e-9, 0.0, 0.0,
                                     np.array([P.g0_set]), np.array([P.g0_reset]),
                                     np.ones(1), None, P)
    dg = g_new[0] + gv[0] - G[0]
    assert dg > 0
    assert gv[0] == pytest.approx(min(P.volatile_fraction * dg, P.volatile_cap * (G[0] + dg)))
    assert physics.relax(gv[0], P.tau_relax, P.tau_relax) == pytest.approx(gv[0] / math.e)


def test_scalar_path_matches_vector_path():
    rng = np.random.default_rng(0)
    for _ in range(200):
        g, gv = rng.uniform(20e-6, 690e-6), rng.uniform(0, 2e-6)
        v, w = rng.uniform(-2.4, 2.4), rng.uniform(1e-8, 1e-6)
        ds, dr, xi = rng.normal(0, 0.07), rng.normal(0, 0.07), rng.lognormal(0, 0.5)
        gs, gr = rng.lognormal(np.log(0.6e-6), 0.3), rng.lognormal(np.log(0.6e-6), 0.3)
        a = physics.pulse_update(np.array([g]), np.array([gv]), np.array([v]), w, ds, dr,
                                 np.array([gs]), np.array([gr]), np.array([xi]), None, P)
        b = physics.pulse_update_scalar(g, gv, v, w, ds, dr, gs, gr, xi, P)
        assert b[0] == pytest.approx(a[0][0], rel=1e-12, abs=1e-18)
        assert b[1] == pytest.approx(a[1][0], rel=1e-12, abs=1e-18)


def test_iv_normalised_at_read_voltage():
    assert physics.device_current(100e-6, 0.2, P) == pytest.approx(20e-6, rel=1e-12)
    # physics.md §3.2: I/(G V) = 1.12 at 0.67 V, 1.17 at 0.8 V, 3.25 at 2.4 V
    for v, ratio in ((0.67, 1.12), (0.8, 1.17), (2.4, 3.25)):
        assert physics.device_current(1.0, v, P) / v == pytest.approx(ratio, abs=0.03)


def test_drive_is_the_factor_of_the_step_and_zero_without_a_pulse():
    G = np.array([100e-6, 250e-6, 400e-6, 250e-6])
    v = np.array([1.3, -1.2, -0.8, 0.0])
    ds, dr = np.array([0.0, 0.05, -0.05, 0.0]), np.array([0.02, -0.03, 0.0, 0.0])
    out = np.empty(4)
    physics.pulse_update(G, np.zeros(4), v, 400e-9, ds, dr, np.full(4, P.g0_set),
                         np.full(4, P.g0_reset), np.ones(4), None, P, drive_out=out)
    for i in range(4):
        assert out[i] == pytest.approx(physics.drive_scalar(G[i], 0.0, v[i], 400e-9, ds[i],
                                                            dr[i], P), rel=1e-12)
    assert out[3] == 0 and out[0] > 1.0    # 1.3 V is above the SET threshold at 100 uS
