"""Repair after transfer: the model it reasons with, the budget, the limits, the record, resume."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from repair_toy import CONFIG, HarshRig, assert_gradient_matches, chip, data, logit, plan

from instruments.errors import SafetyLimitError
from protocols.errors import ProtocolError
from protocols.plan import plan_weights
from protocols.refit import (
    MeasuredModel,
    ProgrammingErrors,
    TuningCost,
    pair_moves,
    pairs,
    refit,
    robust_refit,
    scope_pairs,
    sparse_refits,
)
from protocols.repair import (
    CALIBRATE,
    CHOSEN,
    COMPENSATE,
    REFIT_SET,
    REPAIR_SET,
    ROBUST,
    ROLLBACK,
    STOP,
    TEST_SET,
    RepairConfig,
    RepairData,
    default_refit_points,
    load_repair,
    run,
)
from protocols.rig import ReadSettings
from protocols.transfer import run as transfer
from protocols.tuning import TuneConfig
from simulator.direct_rig import SimulatedRig

ROOT = Path(__file__).resolve().parents[2]



class LimitRig(SimulatedRig):
    """Records every pulse the seam let through, with the limits it was checked against."""

    def __init__(self, crossbar, lab, log):
        super().__init__(crossbar, lab=lab)
        self.log = log

    def _pulse_and_read(self, row, col, volts, seconds, n):
        self.log.append((volts, seconds))
        return super()._pulse_and_read(row, col, volts, seconds, n)


def _transferred(tmp_path, seed=5):
    c = chip(seed)
    p = plan()
    names = [f"x{t}" for t in range(p.n_tiles)]
    tr = transfer(p, lambda n: SimulatedRig(c[n], lab=c.lab), names, tmp_path / "t.h5",
                  read=ReadSettings(), config=_tcfg(), progress=False)
    dev = tr.tables["devices"].sort_values("device")
    return c, p, names, ~dev.converged.to_numpy(), (dev.g_initial, dev.target, dev.pulses)


def _tcfg():
    from protocols.transfer import TransferConfig

    return TransferConfig(tune=TuneConfig(algorithm="fast"))


# -- the model ------------------------------------------------------------------------------

def _model(p, g, x, y, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    zs, h = [], x
    for i, (w, b) in enumerate(plan_weights(p, g)):
        z = h @ w.T + b + noise * rng.normal(size=(x.shape[0], w.shape[0]))
        zs.append(z)
        h = 1 / (1 + np.exp(-z)) if i == 0 else h
    return MeasuredModel(p, x, y, zs, g)


def test_measured_model_reproduces_the_measurement_and_its_gradient_is_exact():
    p, d = plan(), data()
    x, y = d.refit
    g = p.target * np.random.default_rng(1).uniform(0.9, 1.1, p.n_devices)
    m = _model(p, g, x, y, noise=0.3)
    s, _ = m.gradient(g)
    assert s == m.score(g)
    assert_gradient_matches(m, g, (0, 7, p.n_devices - 1))


def test_refit_keeps_stuck_devices_and_lowers_the_loss():
    p, d = plan(), data()
    x, y = d.refit
    g = p.target.copy()
    dp, dm = pairs(p)
    stuck = np.zeros(p.n_devices, bool)
    last = np.flatnonzero(p.layer[dp] == 1)
    g[dp[last[0]]] = 30e-6            # a stuck-HRS G+ in the last layer
    stuck[dp[last[0]]] = True
    m = _model(p, g, x, y)
    r = refit(m, scope_pairs(p, {1: [0]}), g, stuck)
    assert r.loss_after < r.loss_before
    devs, tgts = pair_moves(p, g, stuck, r.pair, r.diff, 0.01,
                            TuningCost(p.g_min, p.g_max, 20.0))
    assert dp[last[0]] not in devs
    assert np.all((tgts >= p.g_min) & (tgts <= p.g_max))


def test_sparse_refit_finds_the_one_distorted_first_layer_weight():
    """The regular half-moons network's repairs failed where the first layer was distorted: the
    joint refit of every layer changes every weight, and cut to a round's few devices it was no
    longer a fit. A sparse refit (l1 on the change) moves that one weight, in the first layer."""
    p, d = plan(), data()
    x, y = d.refit
    dp, dm = pairs(p)
    bad = int(np.flatnonzero((p.layer[dp] == 0) & (p.target[dp] <= 150e-6))[0])
    g = p.target.copy()
    g[dp[bad]] += 150e-6
    m = _model(p, g, x, y)
    fixed = np.zeros(p.n_devices, bool)
    k = np.arange(dp.size)
    dense = refit(m, k, g, fixed)
    assert np.sum(np.abs(dense.diff - (g[dp] - g[dm])) > 1e-9) > 5   # it moves many
    one = sparse_refits(m, k, g, fixed, sizes=[1, 2])[0]   # "about one": at most two here
    assert bad in one.pair and one.pair.size <= 2
    assert one.loss_after < one.loss_before
    i = one.pair.tolist().index(bad)
    want = p.target[dp[bad]] - p.target[dm[bad]]
    assert abs(one.diff[i] - want) < 0.5 * abs((g[dp[bad]] - g[dm[bad]]) - want)



def test_a_robust_refit_loses_less_to_the_programming_errors_than_a_plain_one():
    """A refit re-programmed misses its targets as the transfer did. Fitted for the errors the
    transfer left (the loss averaged over draws of them), the last layer gives up some of its
    exact loss for a lower loss as programmed; the plain refit puts its weights at the range's
    ends, where a relative error costs most."""
    p, d = plan(), data()
    x, y = d.refit
    g = p.target.copy()
    m = _model(p, g, x, y)
    dp, dm = pairs(p)
    k = scope_pairs(p, {1: [0]})
    fixed = np.zeros(p.n_devices, bool)
    rng = np.random.default_rng(1)
    errors = ProgrammingErrors(np.zeros(50), np.sort(np.expm1(rng.normal(0.0, 0.6, 500))))
    plain, robust = refit(m, k, g, fixed), robust_refit(m, k, g, fixed, errors)

    def programmed(diff, draws):
        gg = np.tile(g, (draws, 1))
        for side, dev in ((np.maximum(diff, 0), dp[k]), (np.maximum(-diff, 0), dm[k])):
            e = rng.choice(errors.above, (draws, k.size)) if draws > 1 else 0.0
            gg[:, dev] = np.where(side > 0, (p.g_min + side) * (1 + e), p.g_min)
        return [m.score(row).loss for row in gg]

    assert np.mean(programmed(robust.diff, 1)) > np.mean(programmed(plain.diff, 1))
    state = rng.bit_generator.state
    as_plain = np.mean(programmed(plain.diff, 600))
    rng.bit_generator.state = state           # the same draws for both
    assert np.mean(programmed(robust.diff, 600)) < 0.95 * as_plain
    # the fit's own view of it: its loss over fresh draws fell
    assert robust.loss_after < robust.loss_before


def test_the_transfers_errors_are_kept_apart_for_devices_at_g_min():
    p = plan()
    g = p.target.copy()
    at_min = p.target <= p.g_min * (1 + 1e-6)
    assert 5 <= at_min.sum() < p.n_devices - 5
    g[at_min] *= 1.2
    g[~at_min] *= 0.95
    stuck = np.zeros(p.n_devices, bool)
    stuck[np.flatnonzero(~at_min)[0]] = True
    g[stuck] = 1e-6                            # a stuck device's read-back says nothing
    e = ProgrammingErrors.measured(p, g, p.target, stuck)
    np.testing.assert_allclose(e.at_min, 0.2)
    np.testing.assert_allclose(e.above, -0.05)
    assert e.above.size == (~at_min).sum() - 1
    assert ProgrammingErrors.measured(p, g, p.target, stuck, least=p.n_devices) is None


def test_pair_moves_move_one_device_and_respect_the_range():
    p = plan()
    dp, dm = pairs(p)
    g = np.full(p.n_devices, 200e-6)
    cost = TuningCost(p.g_min, p.g_max, 20.0)
    # want +50 uS: raise G+ or lower G- by 50 uS, one device
    devs, tgts = pair_moves(p, g, np.zeros(p.n_devices, bool), [0], [50e-6], 0.01, cost)
    assert devs.size == 1 and abs(abs(tgts[0] - 200e-6) - 50e-6) < 1e-12
    # nothing to do inside the band
    assert pair_moves(p, g, np.zeros(p.n_devices, bool), [0], [1e-6], 0.01, cost)[0].size == 0
    # +350 uS does not fit one device from 200 uS: the mapping (G- to g_min)
    devs, tgts = pair_moves(p, g, np.zeros(p.n_devices, bool), [0], [280e-6], 0.01, cost)
    assert set(devs.tolist()) <= {dp[0], dm[0]}
    assert np.all((tgts >= p.g_min - 1e-15) & (tgts <= p.g_max + 1e-15))


def test_tuning_cost_is_at_least_one_pulse_when_past_tunings_needed_none():
    # devices found in band take 0 pulses; a correction moves a device out of its band, so it
    # costs at least one pulse (a cost of 0 divided the repair's gain per pulse by zero)
    p = plan()
    cost = TuningCost(p.g_min, p.g_max, 20.0).fit([100e-6, 100e-6, 300e-6],
                                                   [101e-6, 99e-6, 300e-6], [0, 0, 0])
    assert np.all(cost(np.array([150e-6, 300e-6]), np.array([101e-6, 400e-6])) >= 1.0)


# -- the protocol -----------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [0, 25, 140])
def test_repair_never_exceeds_its_budget_nor_pulses_outside_the_limits(tmp_path, budget):
    c, p, names, stuck, prior = _transferred(tmp_path)
    pulses = []
    res = run(p, lambda n: LimitRig(c[n], c.lab, pulses), names, tmp_path / "r.h5", data(),
              budget=budget, read=ReadSettings(), config=CONFIG, stuck=stuck, prior_tunings=prior, progress=False)
    tu = res.tables["tunings"]
    assert len(pulses) == res.summary["pulses"] == tu.pulses.sum() <= budget
    for v, w in pulses:
        assert -2.5 <= v <= 2.1 and 10e-9 <= w <= 1e-3
    # before each tuning its worst case fitted: the cap never goes beyond what was left
    assert np.all(tu.cap.to_numpy() <= budget - np.r_[0, np.cumsum(tu.pulses)[:-1]])
    assert np.all(tu.cap >= CONFIG.min_cap)
    if budget == 0:
        assert len(tu) == 0 and res.summary["stopped"] == "budget spent"


def test_repair_records_every_decision_and_improves_the_measured_network(tmp_path):
    c, p, names, stuck, prior = _transferred(tmp_path)
    assert stuck.any(), "the test chip should hold a stuck device"
    res = run(p, lambda n: SimulatedRig(c[n], lab=c.lab), names, tmp_path / "r.h5", data(),
              budget=400, read=ReadSettings(), config=CONFIG, stuck=stuck, prior_tunings=prior, progress=False)
    s = res.summary
    de = res.tables["decisions"]
    assert (de.action == STOP).sum() >= 1 and "stopped" in s
    chosen = de[(de.why == CHOSEN) & (de.action != STOP)]
    # a round is a pulse correction; the periphery calibration (no pulse) is chosen besides
    assert len(chosen[chosen.action != CALIBRATE]) == s["rounds"] >= 1
    assert s["chosen"].get("calibrate", 0) == (chosen.action == CALIBRATE).sum() >= 1
    assert (de.action == COMPENSATE).any()      # a stuck device is offered compensation
    me = res.tables["measurements"]
    rep = me[me.split == 1]
    # a correction lowered the measured repair-set loss (the measure the repair chooses by;
    # this chip starts at 39 of its 40 repair-set points)
    assert rep.loss.min() < 0.5 * rep.loss.iloc[0]
    assert s["accuracy_after"] >= s["accuracy_before"] - 0.05
    # the devices it tuned are the chosen candidates' devices, each round's read back
    tu = res.tables["tunings"]
    assert set(tu["round"]) <= set(chosen["round"])
    rb = res.tables["readback"]
    assert set(tu["round"]) <= set(rb["round"])
    assert load_repair(res.path).summary == s



@pytest.mark.parametrize("budget", [60, 1000])
def test_the_last_layer_re_programmed_whole_is_offered_only_where_the_budget_holds_it(
        tmp_path, budget):
    """The robust refit re-programs the last layer in one round, beyond a round's
    `retune_devices`; a layer cut off half-way by the budget would be neither fit, so it is
    offered only where the budget holds half as much again as it is expected to take."""
    c, p, names, stuck, prior = _transferred(tmp_path)
    res = run(p, lambda n: SimulatedRig(c[n], lab=c.lab), names, tmp_path / "r.h5", data(),
              budget=budget, read=ReadSettings(), config=CONFIG.model_copy(
                  update={"retune_devices": 1, "stop_at_software": False}),
              stuck=stuck, prior_tunings=prior, progress=False)
    de, tu = res.tables["decisions"], res.tables["tunings"]
    whole = de[de.action == ROBUST]
    used = {r: tu[tu["round"] < r].pulses.sum() for r in whole["round"]}
    assert np.all(1.5 * whole.expected_pulses <= [budget - used[r] for r in whole["round"]])
    if budget == 60:
        assert whole.empty
    else:
        assert (whole.devices > 1).any()       # more than a round's retune_devices
        for r in whole[whole.why == CHOSEN]["round"]:
            assert (tu["round"] == r).sum() > 1


def test_repair_ends_no_worse_than_it_found_the_test_chip_in_small_measured_steps(tmp_path):
    """On the test chip the repair that stopped at the first round whose single measurement
    did not improve, after a large correction, ended below its start (repair set 92.5 -> 90 %,
    test 90 -> 85 %). Each round now moves at most `retune_devices` devices and is judged on
    the measured loss: it ends at or above where it started on every measure."""
    c, p, names, stuck, prior = _transferred(tmp_path)
    res = run(p, lambda n: SimulatedRig(c[n], lab=c.lab), names, tmp_path / "r.h5", data(),
              budget=400, read=ReadSettings(), config=CONFIG, stuck=stuck,
              prior_tunings=prior, progress=False)
    me, tu = res.tables["measurements"], res.tables["tunings"]
    rep = me[me.split == REPAIR_SET]
    assert rep.loss.iloc[-1] <= rep.loss.iloc[0]
    assert rep.accuracy.iloc[-1] >= rep.accuracy.iloc[0]
    test = me[me.split == TEST_SET]
    assert test.accuracy.iloc[-1] >= test.accuracy.iloc[0]
    assert res.summary["accuracy_after"] >= res.summary["accuracy_before"]
    assert tu.groupby("round").device.nunique().max() <= CONFIG.retune_devices
    assert len(rep) > 2   # several measured rounds, not one large step


def test_every_round_judges_the_repair_set_measured_in_that_round(tmp_path):
    """The read-out's DC stress moves the chip (slow fluctuators switch under it), so a
    measurement from an earlier round is a state that no longer exists. The repair reused the
    repair set's currents of round 0 until a tile was pulsed: on bench chip 1004 (regular
    half-moons) it judged round 1's calibration on them, kept none, stopped and measured the
    test set at 79.5 % (95.0 % found) with no pulse. Every round that decides must measure the
    repair set on every tile first, and the refit set it fits on in the same round."""
    c, p, names, stuck, prior = _transferred(tmp_path)
    res = run(p, lambda n: SimulatedRig(c[n], lab=c.lab), names, tmp_path / "r.h5", data(),
              budget=400, read=ReadSettings(), config=CONFIG, stuck=stuck,
              prior_tunings=prior, progress=False)
    de, cu = res.tables["decisions"], res.tables["currents"]
    deciding = set(de["round"][de.why != 3])   # (3: a round after the stop, nothing to do)
    fitting = set(de["round"][de.action != STOP])   # calibrations and candidates: fitted
    assert CONFIG.max_rounds + 1 in deciding and len(fitting) >= 2
    for split, rounds in ((REPAIR_SET, deciding), (0, fitting)):   # (0: the refit set)
        for rnd in rounds:
            tiles = set(cu.tile[(cu["round"] == rnd) & (cu.split == split)])
            assert tiles == set(range(p.n_tiles)), (rnd, split)


def test_a_chip_measured_at_its_software_accuracy_is_not_pulsed(tmp_path):
    """A chip found at the software network's repair-set accuracy used to be pulsed anyway,
    each round's V/3 writes disturbing its tiles (chip seed 1: test accuracy 95 -> 92.5 %). The
    repair set here is the 20 points farthest from the software network's boundary, so any
    working chip measures the software's 100 % on it as found; it must stop before any pulse."""
    c, p, names, stuck, prior = _transferred(tmp_path, seed=1)
    d = data()
    x = np.concatenate([d.refit[0], d.repair[0]])
    y = np.concatenate([d.refit[1], d.repair[1]])
    far = np.argsort(-np.abs(logit(x)))[:20]
    d = RepairData(refit=d.refit, repair=(x[far], y[far]), test=d.test)
    res = run(p, lambda n: SimulatedRig(c[n], lab=c.lab), names, tmp_path / "r.h5", d,
              budget=400, read=ReadSettings(), config=CONFIG, stuck=stuck,
              prior_tunings=prior, progress=False)
    me = res.tables["measurements"]
    assert me[me.split == REPAIR_SET].accuracy.iloc[0] == 1.0
    assert res.summary["stopped"] == "reached the software accuracy"
    assert res.summary["pulses"] == 0 and len(res.tables["tunings"]) == 0
    # (its test accuracy may still differ by a point of 40 between the two read-outs: the
    # read-out's own stress and the fluctuators move the chip, docs/chip-in-the-loop.md)


def test_disturbance_is_the_loss_measured_beyond_prediction_per_pulse():
    """Each pulse of a correction disturbs its tile; the repair charges each candidate the loss
    its past rounds lost per pulse beyond what the model expected (after the next round's free
    re-calibration), once `disturbance_rounds` rounds have pulsed."""
    from protocols.repair import _State, _Work

    p = plan()
    work = _Work(p, None, None, None, CONFIG.model_copy(update={"disturbance_rounds": 2}),
                 {REPAIR_SET: data().repair}, 400, None)
    st = _State(g=p.target.copy(), diff=np.zeros(1), stuck=np.zeros(p.n_devices, bool))
    # round 1: base 1.0, expected gain 0.3, measured 0.9 after its 40 pulses, 0.8 after the
    # calibration of round 2 (the base of round 2's tunings): lost 0.1 beyond prediction
    st.history = [(0, 0, 15, 1), (0, 0, 25, 1), (0, 0, 60, 2)]
    st.losses = [(0, 1.0), (1, 0.9), (2, 0.8), (2, 0.7)]
    st.expected = {1: 0.3}
    assert work.disturbance(st) == 0.0            # one round pulsed and measured: no price
    st.expected[2] = 0.2
    # round 1: 0.8 - (1.0 - 0.3) = 0.1; round 2 (last): 0.7 - (0.8 - 0.2) = 0.1; 100 pulses
    assert work.disturbance(st) == pytest.approx(0.2 / 100)
    st.losses[-1] = (2, 0.5)                      # better than expected: no negative price
    st.losses[2] = (2, 0.75)
    assert work.disturbance(st) == 0.0


def test_a_correction_that_gains_loss_is_not_refused_for_one_repair_set_point():
    """The repairs stopped with "no correction expected to gain" while the budget held and the
    chip was points below its software accuracy: every candidate gained loss but was expected to
    lose one repair-set point of 273, and a candidate that lost accuracy was never chosen. The
    loss decides now (the stopping rule's measure already); the disturbance's charge and a loss
    that does not fall still refuse."""
    from protocols.repair import choose

    def cands():
        return [{"gain": (-1 / 273, 0.05), "expected_pulses": 30.0},
                {"gain": (0.0, -0.01), "expected_pulses": 10.0},
                {"gain": (1 / 273, -0.02), "expected_pulses": 30.0}]

    c = cands()
    assert choose(c, 0.0, "loss") is c[0]
    assert c[1]["key"] is None and c[2]["key"] is None
    c = cands()
    assert choose(c, 0.0, "accuracy") is c[2]          # the old rule: accuracy first
    c = cands()[:2]
    assert choose(c, 0.0, "accuracy") is None          # ... and it stopped there
    c = cands()
    assert choose(c, 0.01, "loss") is None             # charged 0.3 for 30 pulses
    assert c[0]["disturbance"] == pytest.approx(0.3)


def test_rollback_tunes_the_pulsed_tiles_back_after_a_round_that_raised_the_loss(tmp_path):
    case = dict(ROLLBACK_CASE)
    case.pop("harsh")
    c, p, names, stuck, prior = _transferred(tmp_path)
    cfg = CONFIG.model_copy(update=case)
    res = run(p, lambda n: HarshRig(c[n], lab=c.lab), names, tmp_path / "r.h5", data(),
              budget=300, read=ReadSettings(), config=cfg, stuck=stuck, prior_tunings=prior,
              progress=False)
    de, tu, rb, me = (res.tables[n] for n in ("decisions", "tunings", "readback",
                                              "measurements"))
    rep = me[me.split == REPAIR_SET].groupby("round").loss.last()   # a round measures it
    back = de[(de.action == ROLLBACK) & (de.why == CHOSEN)]
    assert len(back) >= 1
    for rnd in back["round"]:
        prev = rnd - 1
        assert rep[prev] > rep[rep.index < prev].iloc[-1]   # round prev raised the loss
        # its targets: each device's read-back before round prev (the latest row before it)
        before = rb[rb["round"] < prev].groupby("device").g.last()
        t = tu[tu["round"] == rnd]
        assert len(t) and np.allclose(t.target.to_numpy(), before[t.device].to_numpy())
        assert set(p.tile[t.device]) <= set(p.tile[tu.device[tu["round"] == prev]])
        # a rollback round chooses nothing else
        assert set(de.action[(de["round"] == rnd) & (de.why == CHOSEN)]) <= {ROLLBACK, STOP}
    assert tu.pulses.sum() <= 300
    assert load_repair(res.path).summary == res.summary


def test_repair_refuses_bad_input(tmp_path):
    c, p, names, stuck, prior = _transferred(tmp_path)
    opener = lambda n: SimulatedRig(c[n], lab=c.lab)  # noqa: E731
    with pytest.raises(ProtocolError, match="budget"):
        run(p, opener, names, tmp_path / "a.h5", data(), budget=-1, read=ReadSettings(),
            progress=False)
    with pytest.raises(ProtocolError, match="one crossbar per tile"):
        run(p, opener, names[:1], tmp_path / "a.h5", data(), budget=10, read=ReadSettings(),
            progress=False)
    with pytest.raises(ProtocolError, match="stuck flags"):
        run(p, opener, names, tmp_path / "a.h5", data(), budget=10, stuck=np.zeros(3, bool),
            read=ReadSettings(), progress=False)


def test_a_tuning_cap_outside_the_station_limits_is_refused_before_any_pulse(tmp_path):
    c, p, names, stuck, prior = _transferred(tmp_path)
    from protocols.errors import ConfigError

    pulses = []
    cfg = RepairConfig(tune=TuneConfig(algorithm="fast", v_set_max=2.5, max_pulses=60),
                       max_rounds=2, refit_points=60)
    with pytest.raises((ConfigError, SafetyLimitError)):
        run(p, lambda n: LimitRig(c[n], c.lab, pulses), names, tmp_path / "r.h5", data(),
            budget=300, read=ReadSettings(), config=cfg, stuck=stuck, prior_tunings=prior, progress=False)
    assert all(v <= 2.1 for v, _ in pulses)


# -- resume after SIGKILL ------------------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    from repair_toy import CONFIG, HarshRig, chip, data, plan
    import json
    import logging
    import sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
    from threadpoolctl import threadpool_limits
    threadpool_limits(1, user_api="blas")
    from protocols.repair import run
    from protocols.transfer import TransferConfig, run as transfer
    from protocols.tuning import TuneConfig
    from simulator.direct_rig import SimulatedRig
    from protocols.rig import ReadSettings

    import time

    class Slow(SimulatedRig):   # slower than the parent reads its log: kills land mid-run
        def _column_currents(self, rows, volts, cols):
            time.sleep(0.01)
            return super()._column_currents(rows, volts, cols)

    class SlowHarsh(Slow, HarshRig):
        pass

    overrides = json.loads(sys.argv[2])
    c, p = chip(5), plan()
    names = [f"x{t}" for t in range(p.n_tiles)]
    opener = lambda n: Slow(c[n], lab=c.lab)
    repair_opener = (lambda n: SlowHarsh(c[n], lab=c.lab)) if overrides.pop("harsh", False) \
        else opener
    tr = transfer(p, opener, names, sys.argv[1] + ".transfer.h5", seed=1, progress=False,
                  read=ReadSettings(),
                  config=TransferConfig(tune=TuneConfig(algorithm="fast")))
    dev = tr.tables["devices"].sort_values("device")
    print("repair starts", file=sys.stderr, flush=True)
    run(p, repair_opener, names, sys.argv[1], data(), budget=300, seed=1, read=ReadSettings(),
        config=CONFIG.model_copy(update=overrides),
        stuck=~dev.converged.to_numpy(), prior_tunings=(dev.g_initial, dev.target, dev.pulses),
        progress=False)
""")


def _spawn(script: Path, out: Path, overrides: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{Path(__file__).parent}",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script), str(out), overrides], env=env,
                            cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


#: a round that raises the measured loss (budget 300), so a rollback happens: the repair's
#: pulses go through repair_toy.HarshRig, whose write pulses disturb their row hard (on the
#: plain simulated chip such a round depended on the chip seed and broke with every change
#: to the tuning or the repair); the corrections that avoid such rounds are off
ROLLBACK_CASE = {"rollback": True, "harsh": True, "calibrate": "off",
                 "sparse_refit": False, "price_disturbance": False,
                 "expected_disturbance": False, "stop_at_software": False,
                 "choose_by": "accuracy"}


@pytest.mark.parametrize("overrides", ['{}', json.dumps(ROLLBACK_CASE),
                                       '{"calibrate": "offset", "stop_at_software": false}'])
def test_sigkill_during_repair_then_rerun_equals_uninterrupted(tmp_path, overrides):
    from database.runs import list_runs, read_run

    script = tmp_path / "repair.py"
    script.write_text(SCRIPT)
    ref = tmp_path / "ref.h5"
    p = _spawn(script, ref, overrides)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    out = tmp_path / "killed.h5"
    rng = random.Random(7)
    seen = []
    for _ in range(3):
        p = _spawn(script, out, overrides)
        # kill it at once after one or two more units: a unit takes tens of milliseconds here
        units, need = 0, rng.randint(1, 2)
        while units < need:
            line = p.stderr.readline().decode()
            if not line:
                break
            if "repair: unit" in line:
                units += 1
        time.sleep(rng.uniform(0.0, 0.05))
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():
            seen.append(list_runs(out)[-1].units_done)
    p = _spawn(script, out, overrides)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    # killed mid-run at least twice (6 units in all), never losing a unit
    assert seen == sorted(seen) and len([u for u in seen if u < 6]) >= 2, seen
    info_ref, a = read_run(ref)
    info, b = read_run(out)
    assert info.complete and info.summary == info_ref.summary
    for name in a:
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy(), err_msg=name)
    if "rollback" in overrides:   # the rollback's state (pre-round read-back, losses) resumes
        assert (a["decisions"].action == ROLLBACK).any()
    if json.loads(overrides).get("calibrate", RepairConfig().calibrate) != "off":
        # the calibration resumes as it was (and is applied)
        assert len(a["calibration"]) and "calibration" in info.summary


class StationRig(LimitRig):
    """As on hardware: nothing to restore (the chip object lives on between the runs, as a real
    chip does); every pulse logged; Ctrl-C at the pulse after `ctl["stop_at"]` of the log."""

    restorable = False

    def __init__(self, crossbar, lab, log, ctl):
        super().__init__(crossbar, lab, log)
        self.ctl = ctl

    def save_state(self):
        return None

    def _pulse_and_read(self, row, col, volts, seconds, n):
        if self.ctl.get("stop_at") is not None and len(self.log) >= self.ctl["stop_at"]:
            raise KeyboardInterrupt
        return super()._pulse_and_read(row, col, volts, seconds, n)


def test_an_interrupted_round_on_hardware_counts_every_pulse_and_keeps_its_tunings(tmp_path):
    from protocols.ledger import Ledger

    kw = dict(budget=300, read=ReadSettings(), config=CONFIG, progress=False)
    c, p, names, stuck, prior = _transferred(tmp_path / "a")
    ref = run(p, lambda n: LimitRig(c[n], c.lab, []), names, tmp_path / "ref.h5", data(),
              stuck=stuck, prior_tunings=prior, **kw).tables["tunings"]
    # a round with two tunings or more, its second taking at least 2 pulses: cut that one off
    # after its first pulse, the round's first tuning done
    k = next(i for i in range(len(ref) - 1) if ref["round"][i] == ref["round"][i + 1]
             and ref.pulses[i + 1] >= 2)
    c, p, names, stuck, prior = _transferred(tmp_path / "b")   # the same chip, programmed again
    log, ctl = [], {"stop_at": int(ref.pulses[:k + 1].sum()) + 1}
    opener = lambda n: StationRig(c[n], c.lab, log, ctl)    # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        run(p, opener, names, tmp_path / "r.h5", data(), stuck=stuck, prior_tunings=prior, **kw)
    assert len(log) == ctl["stop_at"] and Ledger(tmp_path / "r.h5", "run0").path.exists()
    ctl["stop_at"] = None
    res = run(p, opener, names, tmp_path / "r.h5", data(), stuck=stuck, prior_tunings=prior,
              resume=True, **kw)
    tu = res.tables["tunings"]
    # every pulse that reached the chip is counted, the one cut off at its cap: never beyond
    # the budget
    cut = tu.iloc[k + 1]
    assert cut.device == ref.device[k + 1] and not cut.converged and np.isnan(cut.g_before)
    assert cut.pulses == cut.cap == ref.cap[k + 1]
    assert res.summary["pulses"] == tu.pulses.sum() == len(log) - 1 + cut.cap <= 300
    assert np.all(tu.cap.to_numpy() <= 300 - np.r_[0, np.cumsum(tu.pulses)[:-1]])
    # the tunings made before the cut are kept as measured, in their round
    for col in ("round", "device", "g_before", "g_after", "pulses", "converged"):
        np.testing.assert_array_equal(tu[col][:k + 1].to_numpy(), ref[col][:k + 1].to_numpy())
    # the round resumed from the chip as the cut left it: its tiles read back first
    rb = res.tables["readback"]
    tile = p.tile[int(cut.device)]
    assert np.isin(p.tile_devices(tile), rb.device[rb["round"] == cut["round"]]).all()
    assert not Ledger(tmp_path / "r.h5", "run0").path.exists()


def test_the_ledger_ignores_a_line_torn_by_the_crash_and_refuses_a_damaged_one(tmp_path):
    from protocols.ledger import Ledger

    led = Ledger(tmp_path / "r.h5", "run0")
    led.reserve(3, 7, 2e-4, 40)
    led.done(3, {"round": 3, "device": 7, "pulses": np.int64(12), "g_before": np.nan})
    led.reserve(3, 8, 1e-4, 28)
    led.reserve(2, 9, 1e-4, 60)         # an earlier, committed unit's: not this one's
    rec = led.recover(3)
    assert [r["device"] for r in rec.done] == [7] and rec.cut == [(8, 1e-4, 28)]
    assert np.isnan(rec.done[0]["g_before"]) and rec.devices == [7, 8]
    with open(led.path, "a") as f:
        f.write('{"run": "run0", "unit": 3, "dev')       # torn: the last line
    assert led.recover(3).cut == [(8, 1e-4, 28)]
    with open(led.path, "a") as f:
        f.write("\n" + '{"run": "run0", "unit": 3, "device": 5, "target": 1e-4, "cap": 9}\n')
    with pytest.raises(ProtocolError, match="damaged"):
        led.recover(3)
    led.clear()
    assert not led.path.exists() and led.recover(3).cut == []
    blocked = Ledger(tmp_path / "d.h5", "run0")
    blocked.path.mkdir()                 # where the record cannot be written, nothing pulses
    with pytest.raises(ProtocolError, match="nothing was pulsed"):
        blocked.reserve(1, 2, 1e-4, 10)


def _g_plus_stuck_low(p, k):
    """Pair k of plan p with its G+ stuck in HRS (the weight can only be <= 0), the rest at
    target: (g, stuck, the measured model, the intact network's loss, after(model, refit,
    cal): the loss once the refit's moves are made, the stuck device never among them)."""
    x, y = data().refit
    dp, _ = pairs(p)
    g = p.target.copy()
    g[dp[k]] = p.g_min
    stuck = np.zeros(p.n_devices, bool)
    stuck[dp[k]] = True
    cost = TuningCost(p.g_min, p.g_max, 20.0)

    def after(model, r, cal):
        devs, tgts = pair_moves(p, g, stuck, r.pair, r.diff, 0.01, cost)
        assert dp[k] not in devs
        g2 = g.copy()
        g2[devs] = tgts
        return model.score(g2, cal).loss

    return g, stuck, _model(p, g, x, y), _model(p, p.target, x, y).score(p.target).loss, after


def test_a_flip_reaches_a_weight_whose_stuck_device_is_on_the_wrong_side_of_its_pair():
    """The regular half-moons chip 1042: a G- stuck low where its output weight must be large
    and negative. No weight of that sign is reachable, so a refit of the layer (compensation)
    can only work around the hidden unit; with the unit negated in the periphery (sigmoid:
    s(-z) = 1 - s(z)) the wanted weight is positive, the free G+ reaches it, and the biases
    absorb the rest."""
    from protocols.inference import Calibration
    from protocols.refit import flipped_weights
    from protocols.repair import FLIP, _Work

    p = plan()
    dp, _ = pairs(p)
    k = int(np.flatnonzero((p.layer[dp] == 1) & (p.inp[dp] == 0))[0])   # w = +2.5
    g, stuck, m, target_loss, after = _g_plus_stuck_low(p, k)

    scope = scope_pairs(p, {1: [0]})
    comp = after(m, refit(m, scope, g, stuck), m.cal)
    cal = Calibration.identity(p).flipped(0, 0)
    assert cal.gain[0][0] == -1.0 and np.all(cal.gain[0][1:] == 1.0)
    mf = m.with_calibration(cal)
    flip = after(m, refit(mf, scope, g, stuck, toward=flipped_weights(p, g, 1, 0)), cal)
    assert flip < target_loss + 0.02 < comp   # the flip: the intact network's loss
    # the repair offers it where the activation allows (not ReLU) and the periphery calibrates
    w = _Work.__new__(_Work)
    w.plan, w.cfg = p, CONFIG
    st = type("S", (), {"stuck": stuck})()
    assert w.flips(st) == [(1, 0)] and FLIP == 7
    w.cfg = CONFIG.model_copy(update={"calibrate": "off"})
    assert w.flips(st) == []


def test_a_swap_reaches_a_first_layer_weight_whose_stuck_device_is_on_the_wrong_side():
    """The regular half-moons chip 1007: a hidden unit's bias needs a large G+, and that G+ is
    stuck in HRS. No bias of that sign is reachable, the next layer can only work around the
    unit, and a flip does not apply (the stuck device is in the unit's own pairs). With the
    unit negated in the periphery and its own pairs swapped (G- - G+) the wanted bias is made
    by the free G-, and the unit computes what it did (whatever its activation)."""
    from protocols.inference import Calibration
    from protocols.refit import swapped_weights
    from protocols.repair import SWAP, _Work

    p = plan()
    dp, dm = pairs(p)
    k = int(np.flatnonzero((p.layer[dp] == 0) & (p.out[dp] == 0) & (p.inp[dp] == 0))[0])
    assert p.weights[0][0, 0] == 3.0                 # its G+ wanted high
    g, stuck, m, target_loss, after = _g_plus_stuck_low(p, k)

    own = after(m, refit(m, scope_pairs(p, {0: [0]}), g, stuck), m.cal)
    nxt = after(m, refit(m, scope_pairs(p, {1: [0]}), g, stuck), m.cal)
    cal = Calibration.identity(p).flipped(0, 0)
    ms = m.with_calibration(cal)
    swap = after(m, refit(ms, scope_pairs(p, {0: [0]}), g, stuck,
                          toward=swapped_weights(p, p.target, 0, 0)), cal)
    assert swap < target_loss + 0.02 < min(own, nxt)   # the swap: the intact network's loss
    # the repair offers it for that unit only, and only while the stuck device is on the
    # wrong side of its pair, and where the periphery calibrates
    w = _Work.__new__(_Work)
    w.plan, w.cfg = p, CONFIG
    diff = p.target[dp] - p.target[dm]
    st = type("S", (), {"stuck": stuck, "g": g, "diff": diff})()
    assert w.swaps(st) == [(0, 0)] and SWAP == 9
    st.diff = np.where(np.arange(dp.size) == k, -diff, diff)   # the weight wanted <= 0
    assert w.swaps(st) == []
    st.diff = diff
    w.cfg = CONFIG.model_copy(update={"calibrate": "off"})
    assert w.swaps(st) == []


def test_the_refit_penalty_is_the_same_whatever_the_layers_weight_scale():
    """The same network with its first layer's weights 20 times larger and its inputs 20 times
    smaller (no first-layer bias) computes the same on the same conductances; a refit of its
    weights is one objective in two parametrisations. With the penalty in the layer's own
    units it held the large-weight network 400 times harder (half-moons' weights of ~50
    against digits' ~3: chip 1042's weight that had to change sign never could)."""
    from protocols.plan import BIAS
    from training.export import plan_from_weights

    w, b = list(plan().weights), list(plan().biases)
    kw = {"tile_rows": 4, "tile_cols": 4, "meta": {"dataset": "toy"}}
    p = plan_from_weights(w, [0 * b[0], b[1]], g_min=100e-6, g_max=400e-6, **kw)
    big = plan_from_weights([w[0] * 20, w[1]], [0 * b[0], b[1]], g_min=100e-6, g_max=400e-6,
                            **kw)
    np.testing.assert_allclose(big.target, p.target, rtol=1e-9)
    x, y = data().refit
    g = p.target * np.random.default_rng(2).uniform(0.7, 1.3, p.n_devices)
    g[(p.layer == 0) & (p.param == BIAS)] = p.g_min    # no first-layer bias on the chip either
    fixed = np.zeros(p.n_devices, bool)
    dp, _ = pairs(p)
    k = scope_pairs(p, {0: range(4)})
    k = k[p.param[dp[k]] != BIAS]
    small_fit = refit(_model(p, g, x, y), k, g, fixed, l2=0.05)
    big_fit = refit(_model(big, g, x / 20, y), k, g, fixed, l2=0.05)
    assert big_fit.loss_before == pytest.approx(small_fit.loss_before, rel=1e-9)
    assert big_fit.loss_after == pytest.approx(small_fit.loss_after, rel=0.01)
    assert small_fit.loss_after < 0.95 * small_fit.loss_before


def test_a_round_moves_more_devices_on_a_larger_network():
    """8 devices a round suit a 66-device half-moons network; on digits' 4,800 they could not
    spend 1 % of the budget in 30 rounds. By default a round moves max(8, devices / 64)."""
    from protocols.repair import _Work
    from training.export import plan_from_weights

    small, d = plan(), data()
    assert _Work(small, [], None, [], RepairConfig(), {REPAIR_SET: d.repair}, 100, None).step == 8
    rng = np.random.default_rng(0)
    big = plan_from_weights([rng.normal(size=(32, 64)), rng.normal(size=(10, 32))],
                            [np.zeros(32), np.zeros(10)], g_min=100e-6, g_max=400e-6,
                            tile_rows=8, tile_cols=8, meta={"dataset": "toy"})
    sets = {REPAIR_SET: (rng.normal(size=(20, 64)), rng.integers(0, 10, 20))}
    assert _Work(big, [], None, [], RepairConfig(), sets, 100, None).step == \
        big.n_devices // 64 > 8
    assert _Work(big, [], None, [], RepairConfig(retune_devices=3), sets, 100, None).step == 3


def _wide_plan():
    from training.export import plan_from_weights

    rng = np.random.default_rng(0)
    return plan_from_weights([rng.normal(size=(16, 16)), rng.normal(size=(2, 16))],
                             [np.zeros(16), np.zeros(2)], g_min=100e-6, g_max=400e-6,
                             tile_rows=4, tile_cols=4, meta={"dataset": "toy"})


def test_the_transfers_drift_is_fitted_against_the_pulses_each_tile_took_after_a_device():
    """The transfer tunes each tile's devices in the plan's order; a device then takes the
    write pulses of the ones after it. The drift its read-back shows, per how many, is what a
    correction's pulses are expected to do to the rest of their tile."""
    from protocols.repair import fit_drift

    p = _wide_plan()
    rng = np.random.default_rng(1)
    pulses = rng.integers(1, 60, p.n_devices).astype(float)
    after = np.zeros(p.n_devices)
    for t in range(p.n_tiles):
        d = p.tile_devices(t)
        after[d] = np.cumsum(pulses[d][::-1])[::-1] - pulses[d]
    true = lambda n: 0.02 + 0.03 * (1 - np.exp(-n / 100))   # noqa: E731
    g0 = p.target * (1 + true(after) * rng.standard_normal(p.n_devices))
    stuck = np.zeros(p.n_devices, bool)
    stuck[:5] = True
    g0[:5] = 1.0                                   # a stuck device's read-back says nothing
    dr = fit_drift(p, g0, p.target, pulses, stuck)
    assert dr.sigma(0) == 0 and np.all(np.diff(dr.rms) >= 0)
    for n in (30, 120, 500):
        assert dr.sigma(n) == pytest.approx(true(n), rel=0.35)
    assert fit_drift(p, g0, p.target, pulses[::-1] * 0, stuck) is None   # no pulses after


def test_a_candidate_is_not_charged_the_drift_the_next_calibration_absorbs(tmp_path):
    """The drift a correction's pulses are expected to leave is judged draw by draw under the
    calibration re-fitted to that draw, as the next round's calibration will be fitted to the
    chip as the drift left it. A calibration re-fitted is kept only where it lowers the
    repair set's loss, so no candidate can expect less than under the calibration fitted to
    its undrifted conductances, and candidates whose drift the periphery absorbs expect
    more. (With the calibration held, the half-moons chips 1007 and 1020 found no correction
    worth its drift and ended 4-5.5 points below their software accuracy.)"""
    from protocols.repair import CALIBRATE

    c, p, names, stuck, prior = _transferred(tmp_path)
    dec, programmed = {}, c.lab.save_state()
    for on in (False, True):
        c.lab.restore_state(programmed)   # both repairs start from the same chip
        cfg = CONFIG.model_copy(update={"recalibrated_draws": on, "max_rounds": 1,
                                        "stop_at_software": False})
        res = run(p, lambda n: SimulatedRig(c[n], lab=c.lab), names, tmp_path / f"{on}.h5",
                  data(), budget=400, read=ReadSettings(), config=cfg, stuck=stuck,
                  prior_tunings=prior, progress=False)
        d = res.tables["decisions"]
        dec[on] = d[(d["round"] == 1) & (d.action != CALIBRATE)].reset_index(drop=True)
    off, on = dec[False], dec[True]
    assert len(on) >= 3
    for col in ("action", "layer", "weights", "devices", "expected_pulses"):
        np.testing.assert_array_equal(on[col].to_numpy(), off[col].to_numpy())
    gain_on, gain_off = on.expected_loss_gain.to_numpy(), off.expected_loss_gain.to_numpy()
    assert np.all(gain_on >= gain_off - 1e-12)
    assert np.any(gain_on > gain_off + 1e-4)


def test_a_corrections_pulses_spread_drift_over_the_rest_of_their_tiles():
    from protocols.repair import Drift

    p = _wide_plan()
    dr = Drift(np.array([0.0, 10.0, 100.0]), np.array([0.0, 0.05, 0.1]))
    tiles = sorted(set(p.tile.tolist()))
    a = int(p.tile_devices(tiles[0])[0])
    b = int(p.tile_devices(tiles[1])[2])
    stuck = np.zeros(p.n_devices, bool)
    stuck[p.tile_devices(tiles[0])[1]] = True
    rel = dr.spread(p, np.array([a, b]), np.array([10.0, 100.0]), stuck)
    assert rel[a] == rel[b] == 0.0 and rel[stuck].sum() == 0.0      # tuned ones, stuck ones
    others0 = [d for d in p.tile_devices(tiles[0]) if d != a and not stuck[d]]
    others1 = [d for d in p.tile_devices(tiles[1]) if d != b]
    np.testing.assert_allclose(rel[others0], 0.05)
    np.testing.assert_allclose(rel[others1], 0.1)
    rest = ~np.isin(p.tile, tiles[:2])
    assert np.all(rel[rest] == 0.0)                                 # tiles not pulsed


def test_a_tiles_tunings_go_costliest_last_tile_by_tile_in_that_order(monkeypatch):
    """A tile's later tunings drift its earlier ones, so the device whose own drift costs the
    loss most is tuned last; the repair applies a correction in that order (it tuned in the
    plan's order, which says nothing of what a device's drift costs)."""
    import protocols.repair as R
    from protocols.tuning import TuneResult

    p = _wide_plan()
    tiles = sorted(set(p.tile.tolist()))
    t0, t1 = p.tile_devices(tiles[0]), p.tile_devices(tiles[1])
    devices = np.array([t1[0], t0[2], t0[0], t1[3], t0[1]])
    cost = np.array([5.0, 3.0, 1.0, 0.5, 2.0])
    order = R.tuning_order(p, devices, cost)
    np.testing.assert_array_equal(devices[order], [t0[0], t0[1], t0[2], t1[3], t1[0]])
    done = []

    def fake_tune(rig, row, col, target, cfg):
        done.append((row, col))
        return TuneResult(row, col, target, True, 3, 3, 0, target, np.array([target]), 0.0,
                          0.0)

    class Rig:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(R, "tune", fake_tune)
    sets = {R.REPAIR_SET: (np.zeros((4, 16)), np.zeros(4, np.int64))}
    work = R._Work(p, [], lambda n: Rig(), [f"x{t}" for t in range(p.n_tiles)], R.RepairConfig(),
                   sets, 10_000, None)
    st = R._State(g=p.target.copy(), diff=np.zeros(1), stuck=np.zeros(p.n_devices, bool))
    ordered = devices[order]
    assert work.apply(st, ordered, p.target[ordered], 1, {})
    assert done == [(int(p.row[d]), int(p.col[d])) for d in ordered]


def test_the_refit_set_measured_grows_with_the_calibrations_parameters(tmp_path):
    """400 refit points over-fitted the 84 calibration parameters of the digits network (the
    refit set's loss a fifth of the test set's; all 1,011 points: lower test loss on every chip
    measured). By default a repair measures 400 points, or 12 per calibration parameter where
    that is more; a given `refit_points` still caps it."""
    from types import SimpleNamespace

    assert default_refit_points(SimpleNamespace(sizes=(64, 32, 10))) == 12 * 2 * 42
    assert default_refit_points(SimpleNamespace(sizes=(2, 8, 1))) == 400
    c, p, names, stuck, prior = _transferred(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (450, 2))
    y = (logit(x) > 0).astype(np.int64)
    d = RepairData(refit=(x, y), repair=data().repair, test=data().test)
    for n, cfg, want in ((1, CONFIG.model_copy(update={"refit_points": None}), 400),
                         (2, CONFIG, 60)):
        res = run(p, lambda t: SimulatedRig(c[t], lab=c.lab), names, tmp_path / f"{n}.h5", d,
                  budget=0, read=ReadSettings(), config=cfg, stuck=stuck,
                  prior_tunings=prior, progress=False)
        out = res.tables["outputs"]
        assert out[out.split == REFIT_SET].point.max() + 1 == want


def test_the_ledger_counts_every_cut_off_tuning_of_a_device_tuned_again(tmp_path):
    """A device cut off, then tuned again in the resumed unit (the transfer programs a cut
    device again; its re-verify may re-tune one): the earlier attempt's pulses reached the
    chip and stay booked, whether the next attempt ends or is cut off too."""
    from protocols.ledger import Ledger

    led = Ledger(tmp_path / "r.h5", "run0")
    led.reserve(4, 7, 2e-4, 40)          # cut off by the first kill
    led.reserve(4, 7, 2e-4, 30)          # the resumed attempt, cut off by a second kill
    assert led.recover(4).cut == [(7, 2e-4, 40), (7, 2e-4, 30)]
    led.reserve(4, 7, 2e-4, 20)          # a third attempt, which ends
    led.done(4, {"device": 7, "pulses": 12})
    rec = led.recover(4)
    assert [r["device"] for r in rec.done] == [7] and rec.cut == [(7, 2e-4, 40), (7, 2e-4, 30)]
