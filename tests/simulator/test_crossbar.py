"""Crossbar: initial states, stuck devices, determinism, save/restore, V/3 disturbance, schemes."""

import numpy as np
import pytest

from simulator.clock import VirtualClock
from simulator.config import CrossbarConfig, DeviceParams
from simulator.crossbar import STUCK_HRS, STUCK_LRS, Crossbar
from simulator.errors import SimulatorError

# Tests of one mechanism switch the slow fluctuators off (they are tested on their own below):
# a read then sees G + Gv exactly, up to read noise.
NO_RTN = DeviceParams(rtn_count=0)


def test_initial_population_and_stuck_classes():
    cfg = CrossbarConfig(rows=64, cols=64, stuck_hrs_rate=0.05, stuck_lrs_rate=0.05)
    xb = Crossbar(cfg, seed=1)
    G, st = xb.G, xb.stuck
    work = G[st == 0]
    assert np.median(work) == pytest.approx(120e-6, rel=0.05)
    assert np.std(np.log(work)) == pytest.approx(0.3, abs=0.03)
    assert (st == STUCK_HRS).mean() == pytest.approx(0.05, abs=0.015)
    assert (st == STUCK_LRS).mean() == pytest.approx(0.05, abs=0.015)
    hrs, lrs = G[st == STUCK_HRS], G[st == STUCK_LRS]
    assert hrs.min() >= 10e-6 and hrs.max() <= 100e-6
    assert lrs.mean() == pytest.approx(573e-6, rel=0.05)


def test_stuck_devices_never_move_but_carry_current():
    cfg = CrossbarConfig(rows=4, cols=4, stuck_hrs_rate=0.3, stuck_lrs_rate=0.3, r_line=0.0,
                         r_source=0.0)
    xb = Crossbar(cfg, seed=2)
    st = xb.stuck != 0
    assert st.any() and (~st).any()
    g0 = xb.G
    for k in range(200):
        xb.pulse_v3(k % 4, (k // 4) % 4, 2.0 if k % 2 else -2.4, 1e-6)
        xb.apply_device_voltages(np.full((4, 4), 2.0), 1e-6)
    assert np.array_equal(xb.G[st], g0[st])
    assert np.all(xb.Gv[st] == 0)
    assert not np.allclose(xb.G[~st], g0[~st])
    # a stuck device still reads and contributes sneak current
    i, j = np.argwhere(st)[0]
    assert xb.read_map(noise=False)[i, j] == pytest.approx(g0[i, j], rel=1e-9)


def _history(xb: Crossbar, n: int, start: int = 0):
    out = []
    for k in range(start, start + n):
        xb.pulse_v3(k % 8, (3 * k) % 8, 1.5 if k % 3 else -1.6, 200e-9)
        xb.clock.advance(3e-3)
        out.append(xb.read(k % 8, (3 * k) % 8))
    return np.array(out)


def test_determinism_under_seed():
    a, b, c = Crossbar(seed=5), Crossbar(seed=5), Crossbar(seed=6)
    ha, hb, hc = _history(a, 60), _history(b, 60), _history(c, 60)
    assert np.array_equal(ha, hb) and np.array_equal(a.G, b.G)
    assert not np.allclose(ha, hc)


def test_state_dict_round_trip_gives_identical_continuation():
    ref = Crossbar(seed=9)
    _history(ref, 30)
    saved = ref.state_dict()
    cont_ref = _history(ref, 40, start=30)
    other = Crossbar.from_state_dict(saved)       # own fresh clock, restored from the dict
    cont = _history(other, 40, start=30)
    assert np.array_equal(cont, cont_ref)
    assert np.array_equal(other.G, ref.G) and np.array_equal(other.Gv, ref.Gv)
    assert other.clock.now == ref.clock.now


def test_bad_state_is_refused():
    d = Crossbar(seed=1).state_dict()
    d["G"] = np.zeros((3, 3))
    with pytest.raises(SimulatorError):
        Crossbar().load_state_dict(d)


def test_volatile_excess_relaxes_with_clock():
    clock = VirtualClock()
    cfg = CrossbarConfig(rows=1, cols=1, stuck_hrs_rate=0, stuck_lrs_rate=0, device=NO_RTN)
    xb = Crossbar(cfg, seed=0, clock=clock)
    for _ in range(30):
        xb.pulse_device(0, 0, 1.6, 200e-9)
    gv = xb.Gv[0, 0]
    total = xb.conductance()[0, 0]
    assert gv > 0
    clock.advance(cfg.device.tau_relax)
    assert xb.Gv[0, 0] == pytest.approx(gv / np.e)
    clock.advance(20 * cfg.device.tau_relax)
    assert xb.conductance()[0, 0] < total      # read after a wait is lower: negative offset


def test_v3_neighbours_drift_less_and_more_negatively():
    cfg = CrossbarConfig(stuck_hrs_rate=0, stuck_lrs_rate=0, r_line=0, r_source=0, device=NO_RTN)
    rng = np.random.default_rng(0)
    drifts_sel, drifts_other = [], []
    for seed in range(6):
        xb = Crossbar(cfg, seed=seed)
        # bring everyone into the tuning range first (ideal, disturbance-free)
        for i in range(8):
            for j in range(8):
                target = rng.uniform(150e-6, 400e-6)
                for _ in range(300):
                    g = xb.conductance()[i, j]
                    if abs(g - target) < 0.02 * target:
                        break
                    xb.pulse_device(i, j, 1.5 if g < target else -1.5, 200e-9)
        g0 = xb.conductance()
        # RESET-heavy writes on device (2, 5) only
        for k in range(120):
            xb.pulse_v3(2, 5, -1.7 if k % 4 else 1.3, 200e-9)
        d = xb.conductance() - g0
        drifts_sel.append(abs(d[2, 5]))
        mask = np.ones((8, 8), bool)
        mask[2, 5] = False
        drifts_other.append(d[mask])
    other = np.concatenate(drifts_other)
    assert np.median(np.abs(other)) < 0.05 * np.median(drifts_sel)
    assert other.mean() < 0
    assert abs(other.min()) > 3 * max(other.max(), 1e-9)


def _mixed(seed=0, r=0.0):
    cfg = CrossbarConfig(stuck_hrs_rate=0, stuck_lrs_rate=0, r_line=r, r_source=r,
                         device=NO_RTN)
    xb = Crossbar(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    target = rng.uniform(100e-6, 400e-6, (8, 8))
    xb._G = target.copy()     # set a mixed state directly (test only)
    return xb, target


def test_floating_and_v2_reads_overestimate_grounded_is_right():
    xb, g = _mixed()
    err = {s: np.mean(xb.read_map(scheme=s, noise=False) / g - 1) for s in
           ("grounded", "floating", "v2", "v3")}
    assert abs(err["grounded"]) < 1e-9
    assert err["floating"] > 2.0        # physics.md §5.2: +375 %
    assert err["v2"] > 2.5              # +411 %
    assert 1.5 < err["v3"] < err["v2"]  # +274 %


def test_grounded_read_with_line_resistance_reads_a_few_percent_low():
    xb, g = _mixed(r=2.0)
    err = xb.read_map(noise=False) / g - 1
    assert -0.06 < err.mean() < -0.01 and err.max() < 0
    one = xb.read(3, 4, scheme="grounded")
    assert one == pytest.approx(xb.read_map(noise=False)[3, 4], rel=0.01)


def test_read_noise_level_and_bad_scheme():
    xb, g = _mixed()
    reads = np.array([xb.read(1, 1) for _ in range(400)])
    sigma = np.hypot(0.0015 * g[1, 1], 0.45e-6)
    assert reads.mean() == pytest.approx(g[1, 1], abs=4 * sigma / 20)
    assert reads.std() == pytest.approx(sigma, rel=0.15)
    with pytest.raises(SimulatorError):
        xb.read(0, 0, scheme="bogus")
    with pytest.raises(SimulatorError):
        xb.read(8, 0)


def test_line_pulse_with_floating_lines_and_measure():
    cfg = CrossbarConfig(rows=3, cols=3, stuck_hrs_rate=0, stuck_lrs_rate=0, r_line=0,
                         r_source=0)
    xb = Crossbar(cfg, seed=1)
    g0 = xb.G
    nan = float("nan")
    xb.apply_line_pulse([1.8, nan, nan], [0.0, nan, nan], 200e-9)
    d = xb.G - g0
    assert d[0, 0] > 0.5e-6                   # the driven device switched
    assert np.all(np.abs(d[1:, 1:]) < 0.3 * d[0, 0])
    rc, cc = xb.measure([0.2, nan, nan], [0.0, nan, nan])
    assert rc[0] == pytest.approx(-cc[0]) and rc[1] == 0 and cc[2] == 0


def test_virtual_chip_layout_seeds_and_file_continuation(tmp_path):
    from simulator.chip import VirtualChip

    chip = VirtualChip(seed=11)
    assert set(chip) == {f"xbar{k}" for k in range(4)} | {f"dev{k}" for k in range(4)}
    assert chip["xbar0"].shape == (8, 8) and chip["dev2"].shape == (1, 1)
    assert chip["xbar1"].clock is chip.clock
    assert not np.allclose(chip["xbar0"].G, chip["xbar1"].G)
    assert np.array_equal(VirtualChip(seed=11)["xbar3"].G, chip["xbar3"].G)
    with pytest.raises(SimulatorError):
        chip["nope"]

    _history(chip["xbar2"], 20)
    chip["dev0"].pulse_device(0, 0, 1.5, 200e-9)
    path = tmp_path / "chip.npz"
    chip.save(path)
    again = VirtualChip.load(path)
    assert again.clock.now == chip.clock.now and again["xbar2"].clock is again.clock
    a = _history(chip["xbar2"], 30, start=20)
    b = _history(again["xbar2"], 30, start=20)
    assert np.array_equal(a, b)
    chip["dev0"].pulse_device(0, 0, 1.5, 200e-9)
    again["dev0"].pulse_device(0, 0, 1.5, 200e-9)
    assert np.array_equal(chip["dev0"].G, again["dev0"].G)

    (tmp_path / "bad.npz").write_bytes(b"not a chip")
    with pytest.raises(SimulatorError):
        VirtualChip.load(tmp_path / "bad.npz")


def test_sim_show_command_writes_png(tmp_path):
    from click.testing import CliRunner

    from xbarlab.cli import cli

    out = tmp_path / "map.png"
    res = CliRunner().invoke(cli, ["sim", "show", "--seed", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "stuck HRS" in res.output and out.stat().st_size > 1000


def test_volatile_cap_varies_per_device_and_old_states_load_without_it():
    cfg = CrossbarConfig(rows=16, cols=16)
    xb = Crossbar(cfg, seed=4)
    psi = xb.state_dict()["psi"]
    p = cfg.device
    # lognormal around the configured median with the configured spread
    assert np.median(psi) == pytest.approx(p.volatile_cap, rel=0.2)
    assert np.std(np.log(psi)) == pytest.approx(p.sigma_volatile, rel=0.25)
    # a device with a larger cap keeps more volatile excess after the same SET train
    one = CrossbarConfig(rows=1, cols=1, stuck_hrs_rate=0, stuck_lrs_rate=0)
    gv = []
    for cap in (0.005, 0.02):
        d = Crossbar(one, seed=1)
        d._psi[:] = cap          # set the device constant directly (test only)
        for _ in range(40):
            d.pulse_device(0, 0, 1.6, 200e-9)
        gv.append(d.Gv[0, 0] / d.G[0, 0])
    assert gv[0] <= 0.005 * (1 + 1e-6) and gv[1] > 2 * gv[0]
    # a state written before psi existed: every device gets the configured cap
    d = xb.state_dict()
    del d["psi"]
    again = Crossbar.from_state_dict(d)
    assert np.all(again.state_dict()["psi"] == p.volatile_cap)


def _rtn_cfg(**kw):
    dev = dict(rtn_count=8, rtn_amplitude=0.02, rtn_sigma=0.5, rtn_tau_min=1.0,
               rtn_tau_max=1e4, rtn_exponent=0.0)
    dev.update(kw)
    return CrossbarConfig(rows=16, cols=16, stuck_hrs_rate=0, stuck_lrs_rate=0,
                          device=DeviceParams(**dev))


def test_slow_fluctuators_move_reads_both_ways_more_with_time():
    xb = Crossbar(_rtn_cfg(), seed=3)
    g0 = xb.conductance()
    spreads = []
    for dt in (0.1, 10.0, 1000.0):
        xb.clock.advance(dt)
        d = xb.conductance() / g0 - 1
        spreads.append(d.std())
        assert (d > 0).any() and (d < 0).any()         # symmetric: up and down
        g0 = xb.conductance()
    # log-uniform dwell times: a longer wait switches more fluctuators
    assert spreads[0] < spreads[1] < spreads[2]
    # the switching state never touches the nonvolatile state
    assert np.array_equal(xb.G, Crossbar(_rtn_cfg(rtn_count=0), seed=3).G)


def test_fluctuators_switch_with_the_exact_two_state_probability_whatever_the_access_spacing():
    # one fluctuator per device, dwell time 10 s: after 5 s, P(other state) = (1 - e^-1) / 2
    cfg = _rtn_cfg(rtn_count=1, rtn_tau_min=10.0, rtn_tau_max=10.0)
    frac = []
    for steps in (1, 50):
        xb = Crossbar(cfg.model_copy(update={"rows": 64, "cols": 64}), seed=8)
        s0 = xb.state_dict()["rtn_state"].copy()
        for _ in range(steps):
            xb.clock.advance(5.0 / steps)
            xb.conductance()
        frac.append((xb.state_dict()["rtn_state"] != s0).mean())
    p = (1 - np.exp(-1.0)) / 2
    for f in frac:
        assert f == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 4096))


def test_fluctuators_keep_pulses_and_their_draws_as_without_them():
    # separate generator: the C2C and read-noise draws are the same with fluctuators on or off
    on, off = Crossbar(_rtn_cfg(), seed=4), Crossbar(_rtn_cfg(rtn_count=0), seed=4)
    for xb in (on, off):
        for k in range(40):
            xb.pulse_v3(k % 16, (5 * k) % 16, 1.5 if k % 3 else -1.7, 200e-9)
            xb.clock.advance(0.5)
    assert np.array_equal(on.G, off.G)
    assert not np.array_equal(on.conductance(), off.conductance())


def test_fluctuators_round_trip_and_old_states_load_without_them(tmp_path):
    from simulator.chip import VirtualChip

    ref = Crossbar(_rtn_cfg(), seed=9)
    ref.clock.advance(3.0)
    saved = ref.state_dict()
    seq = []
    for xb in (ref, Crossbar.from_state_dict(saved)):
        out = []
        for _ in range(30):
            xb.clock.advance(7.0)
            out.append(xb.read(2, 3))
        seq.append(out)
    assert seq[0] == seq[1]
    chip = VirtualChip({"a": _rtn_cfg()}, seed=2)
    chip.clock.advance(100.0)
    chip.save(tmp_path / "c.npz")
    again = VirtualChip.load(tmp_path / "c.npz")
    chip.clock.advance(50.0)
    again.clock.advance(50.0)
    assert np.array_equal(chip["a"].conductance(), again["a"].conductance())
    # a state written before the fluctuators existed: none, and the reads are G + Gv
    d = ref.state_dict()
    for k in ("rtn_amp", "rtn_tau", "rtn_state", "rtn_next", "rng_rtn"):
        del d[k]
    old = Crossbar.from_state_dict(d)
    assert np.array_equal(old.conductance(), old.G + old.Gv)
