"""Retention in the simulated crossbar (simulator/retention.py): the closed form, lazy and exact
evaluation on the virtual clock, its own random stream, failures, state round trips."""

import math

import numpy as np
import pytest

from simulator.chip import VirtualChip
from simulator.config import CrossbarConfig, DeviceParams
from simulator.crossbar import Crossbar
from simulator.retention import RetentionParams

DAY = 86400.0


def _xb(seed=3, rows=4, cols=4, volatile=True, rtn=False, **ret):
    dev = {"retention": RetentionParams(**ret)}
    if not rtn:  # the slow fluctuators move the read, not G: out of the closed-form checks
        dev.update(rtn_count=0)
    if not volatile:  # Gv == 0: its relaxation (not exact in the last bit) stays out of the way
        dev.update(volatile_fraction=0.0, volatile_cap=0.0)
    return Crossbar(CrossbarConfig(rows=rows, cols=cols, stuck_hrs_rate=0, stuck_lrs_rate=0,
                                   device=DeviceParams(**dev)), seed=seed)


def _program(xb, r, c, volts=1.6, pulses=6):
    """A few V/3 SET pulses on (r, c), 1 ms apart."""
    for _ in range(pulses):
        xb.pulse_v3(r, c, volts, 200e-9)
        xb.clock.advance(1e-3)


def test_drift_follows_the_closed_form_log_time_law():
    xb = _xb(drift_mean=-0.01, drift_std=0.01, fail_rate=0.0)
    _program(xb, 1, 2)
    ret = xb._ret
    t_p, g_p, nu = float(ret.tp[1, 2]), float(ret.gp[1, 2]), float(ret.nu[1, 2])
    assert g_p > 0 and t_p == pytest.approx(xb.clock.now - 1e-3)
    g_e, d_e = float(ret.g_e[1, 2]), float(ret.d_e[1, 2])
    for t in (1.0, 60.0, 3600.0, DAY, 30 * DAY):
        xb.clock.advance(t - (xb.clock.now - t_p))
        want = g_e - d_e + nu * g_p * math.log10(1 + t / 300.0)
        assert xb.conductance()[1, 2] - xb.Gv[1, 2] == pytest.approx(want, rel=1e-12)
    # drifted by nu * log10(1 + 30 d / t0) of the programmed value, a few percent
    assert abs(xb.G[1, 2] - g_e) > 0.005 * g_p


def test_any_access_spacing_gives_the_same_state_bit_for_bit():
    a, b = _xb(volatile=False), _xb(volatile=False)
    rng = np.random.default_rng(0)
    for xb in (a, b):
        _program(xb, 0, 0)
        _program(xb, 3, 1)
    for step in range(6):   # b is looked at many times in between, a never
        for _ in range(int(rng.integers(1, 20))):
            b.clock.advance(float(rng.uniform(0, 500)))
            b.conductance()
        a.clock.advance(b.clock.now - a.clock.now)
        for xb in (a, b):
            xb.pulse_v3(step % 4, 2, 1.4, 200e-9)   # re-programs (2 or 3) and stresses others
            xb.clock.advance(5.0)
    for xb in (a, b):
        xb.clock.advance(DAY - xb.clock.now)
    assert np.array_equal(a.conductance(), b.conductance())
    assert np.array_equal(a.state_dict()["G"], b.state_dict()["G"])


def test_half_select_stress_does_not_restart_the_retention_clock():
    xb = _xb(fail_rate=0.0)
    _program(xb, 0, 0)
    t_p = float(xb._ret.tp[0, 0])
    xb.clock.advance(100.0)
    g_before = xb.G[0, 0]
    for _ in range(20):   # neighbours programmed: (0, 0) sees V/3 (same row) or -V/3 stress
        xb.pulse_v3(2, 3, 1.2, 200e-9)
        xb.pulse_v3(0, 3, -1.3, 200e-9)
    assert xb.G[0, 0] != g_before        # the stress moved it a little
    assert float(xb._ret.tp[0, 0]) == t_p  # but its clock runs on
    assert float(xb._ret.tp[2, 3]) > t_p   # a device tuned by the pulses restarted its own


def test_failing_devices_drift_up_towards_their_saturation_conductance():
    xb = _xb(rows=3, cols=3, fail_rate=1.0, drift_std=0.0, drift_mean=0.0)
    ret = xb._ret
    _program(xb, 0, 0, volts=1.3, pulses=3)      # high: a retention failure
    xb.clock.advance(1.0)
    g0 = xb.G[0, 0]
    assert ret.gp[0, 0] >= 250e-6, "the test needs a device programmed into the LRS"
    _program(xb, 2, 2, volts=1.25, pulses=2)       # low: below fail_g_min, no drift at all
    assert 0 < ret.gp[2, 2] < 250e-6
    g_low = xb.G[2, 2]
    tau, g_sat, t_p = float(ret.tau[0, 0]), float(ret.gsat[0, 0]), float(ret.tp[0, 0])
    g_p, g_e, d_e = float(ret.gp[0, 0]), float(ret.g_e[0, 0]), float(ret.d_e[0, 0])
    xb.clock.advance(50 * tau)
    # at saturation; the low device's programming stressed it a little (G_e - D(t_e) moved
    # from G_p): that change stays on top
    assert xb.G[0, 0] == pytest.approx(g_e - d_e + g_sat - g_p, rel=1e-12)
    assert xb.G[0, 0] == pytest.approx(g_sat, rel=0.01)
    assert xb.G[2, 2] == pytest.approx(g_low, rel=1e-9)
    half = t_p + tau * math.log(2)
    xb2 = _xb(rows=3, cols=3, fail_rate=1.0, drift_std=0.0, drift_mean=0.0)
    _program(xb2, 0, 0, volts=1.3, pulses=3)
    xb2.clock.advance(half - xb2.clock.now)
    r2 = xb2._ret
    assert xb2.G[0, 0] == pytest.approx(float(r2.g_e[0, 0] - r2.d_e[0, 0])
                                        + 0.5 * (g_sat - float(r2.gp[0, 0])), rel=1e-9)
    assert xb2.G[0, 0] > g0


def test_the_failing_population_is_the_configured_share_of_working_devices():
    xb = Crossbar(CrossbarConfig(rows=64, cols=64, stuck_hrs_rate=0.05, stuck_lrs_rate=0.05,
                                 device=DeviceParams(retention=RetentionParams(
                                     fail_rate=0.1))), seed=1)
    fail, stuck = xb._ret.fail, xb.stuck != 0
    assert not (fail & stuck).any()
    assert fail[~stuck].mean() == pytest.approx(0.1, abs=0.015)
    g_sat = xb._ret.gsat[fail]
    assert g_sat.mean() == pytest.approx(573e-6, rel=0.05) and g_sat.max() <= 700e-6


def test_own_random_stream_leaves_every_other_draw_unchanged():
    on = _xb(seed=7, rtn=True)
    off = _xb(seed=7, rtn=True, drift_mean=0.0, drift_std=0.0, fail_rate=0.0)
    for k in ("G", "stuck", "ds", "dr", "g0s", "g0r", "psi", "rtn_amp", "rtn_tau", "rtn_next",
              "rng", "rng_rtn"):
        assert np.array_equal(on.state_dict()[k], off.state_dict()[k]) if k[:3] != "rng" else \
            on.state_dict()[k] == off.state_dict()[k]
    # and on a chip: each crossbar's retention constants differ from the others'
    chip = VirtualChip(seed=2)
    assert not np.array_equal(chip["xbar0"]._ret.nu, chip["xbar1"]._ret.nu)


def test_state_round_trip_and_states_written_before_retention():
    xb = _xb(rtn=True)
    _program(xb, 1, 1)
    xb.clock.advance(3600.0)
    d = xb.state_dict()
    again = Crossbar.from_state_dict(d)
    for x in (xb, again):
        x.clock.advance(DAY)
        x.pulse_v3(2, 2, 1.5, 200e-9)
        x.clock.advance(DAY)
    assert np.array_equal(xb.conductance(), again.conductance())
    # an older state (no retention arrays): loads, and its devices do not drift
    old = {k: v for k, v in d.items() if not k.startswith("ret_")}
    legacy = Crossbar.from_state_dict(old)
    g = legacy.G
    legacy.clock.advance(30 * DAY)
    assert np.array_equal(legacy.G, g)
    # older still (neither fluctuators nor retention): loads with neither
    older = {k: v for k, v in old.items() if not k.startswith("rtn_") and k != "rng_rtn"}
    legacy = Crossbar.from_state_dict(older)
    assert legacy._rtn_amp.shape[2] == 0 and not legacy._ret.gp.any()
    g = legacy.G
    legacy.clock.advance(30 * DAY)
    assert np.array_equal(legacy.G, g)
