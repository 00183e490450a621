"""Analog inference through the rig seam: encoding, hand-solved arrays, multiplexing, resume."""

import numpy as np
import pytest

from protocols.errors import ProtocolError
from protocols.inference import (
    InferConfig,
    analog_forward,
    drive_levels,
    input_scale,
    load_inference,
    run,
    tile_maps,
)
from protocols.plan import plan_logits
from protocols.rig import Channels
from simulator.chip import VirtualChip
from simulator.config import CrossbarConfig
from simulator.direct_rig import SimulatedRig
from training.export import plan_from_weights


def _set_g(xb, g):
    d = xb.state_dict()
    d["G"] = np.asarray(g, float)
    d["Gv"] = np.zeros_like(d["G"])
    xb.load_state_dict(d)


def _plan(tile=4, share_bias=True, seed=2):
    rng = np.random.default_rng(seed)
    w = [rng.normal(size=(3, 5)), rng.normal(size=(2, 3))]
    b = [rng.normal(size=3), rng.normal(size=2)]
    return plan_from_weights(w, b, g_min=100e-6, g_max=400e-6, tile_rows=tile, tile_cols=tile,
                             share_bias=share_bias, activation="tanh")


def _chip(plan, **cfg):
    c = CrossbarConfig(rows=plan.tile_rows, cols=plan.tile_cols, stuck_hrs_rate=0,
                       stuck_lrs_rate=0, **cfg)
    chip = VirtualChip({f"x{t}": c for t in range(plan.n_tiles)}, seed=4)
    # program every tile exactly at its targets (the unused devices keep their initial state)
    for t in range(plan.n_tiles):
        d = plan.tile_devices(t)
        xb = chip[f"x{t}"]
        g = xb.G
        g[plan.row[d], plan.col[d]] = plan.target[d]
        _set_g(xb, g)
    return chip


def _opener(chip, **kw):
    return lambda name: SimulatedRig(chip[name], lab=chip.lab, **kw)


def _g_plan_order(plan, chip):
    g = np.empty(plan.n_devices)
    for t in range(plan.n_tiles):
        d = plan.tile_devices(t)
        g[d] = chip[f"x{t}"].conductance()[plan.row[d], plan.col[d]]
    return g


def test_tiny_array_equals_the_hand_solved_network():
    """One input and the bias on a 2x2 crossbar with line and source resistance, linear devices:
    the output is what Kirchhoff's laws give for that circuit, solved here by hand."""
    plan = plan_from_weights([np.array([[0.8]])], [np.array([-0.3])], g_min=100e-6,
                             g_max=400e-6, tile_rows=2, tile_cols=2)
    chip = _chip(plan, r_line=4.0, r_source=3.0)
    g = chip["x0"].conductance()
    x = np.array([[0.6], [-1.5]])
    cfg = InferConfig()
    z = analog_forward(plan, _opener(chip, ideal={"nonlinearity", "noise"}), ["x0"], x, cfg)[0]
    rl, rs = 4.0, 3.0
    for k, xi in enumerate(x[:, 0]):
        a = max(1.0, abs(xi))
        v = np.array([cfg.v_in * xi / a, cfg.v_in / a])   # input row, bias row
        # nodes: W00 W01 W10 W11 (word lines), B00 B01 B10 B11 (bit lines); sources at W*0
        # through rs (rows), bit lines grounded through rs at their bottom ends B1*
        n = 8
        A, rhs = np.zeros((n, n)), np.zeros(n)

        def link(p, q, c, A=A):
            A[p, p] += c
            A[q, q] += c
            A[p, q] -= c
            A[q, p] -= c

        W = {(i, j): 2 * i + j for i in range(2) for j in range(2)}
        B = {(i, j): 4 + 2 * i + j for i in range(2) for j in range(2)}
        for i in range(2):
            link(W[i, 0], W[i, 1], 1 / rl)
            A[W[i, 0], W[i, 0]] += 1 / rs
            rhs[W[i, 0]] += v[i] / rs
        for j in range(2):
            link(B[0, j], B[1, j], 1 / rl)
            A[B[1, j], B[1, j]] += 1 / rs
        for i in range(2):
            for j in range(2):
                link(W[i, j], B[i, j], g[i, j])
        vn = np.linalg.solve(A, rhs)
        i_col = vn[[B[1, 0], B[1, 1]]] / rs           # out of each bit line into ground
        expected = (i_col[0] - i_col[1]) * a / cfg.v_in * plan.scales[0] / (400e-6 - 100e-6)
        assert z[k, 0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("share_bias", [True, False])
def test_ideal_lines_and_linear_devices_give_the_matrix_product(share_bias):
    plan = _plan(share_bias=share_bias)
    assert plan.n_tiles >= 4      # several tiles per layer: partial sums are added
    chip = _chip(plan, r_line=0.0, r_source=0.0)
    x = np.random.default_rng(3).uniform(-2, 2, (9, 5))
    zs = analog_forward(plan, _opener(chip, ideal={"nonlinearity", "noise", "stress"}),
                        [f"x{t}" for t in range(plan.n_tiles)], x)
    np.testing.assert_allclose(zs[-1], plan_logits(plan, _g_plan_order(plan, chip), x),
                               rtol=1e-10, atol=1e-12)


def test_fewer_sources_and_meters_than_lines_multiplex_and_stay_exact_when_linear():
    plan = _plan()
    chip = _chip(plan, r_line=0.0, r_source=0.0)
    names = [f"x{t}" for t in range(plan.n_tiles)]
    x = np.random.default_rng(4).uniform(-1, 1, (6, 5))
    still = {"nonlinearity", "noise", "stress"}   # the chip held still between the two
    full = analog_forward(plan, _opener(chip, ideal=still), names, x)
    few = analog_forward(plan, _opener(chip, ideal=still,
                                       channels=Channels(sources=1, meters=3)), names, x)
    np.testing.assert_allclose(few[-1], full[-1], rtol=1e-10)
    assert chip.clock.totals["relay"] > 0


def test_levels_never_exceed_the_full_scale_input():
    plan = _plan()
    maps = tile_maps(plan)
    # layer 0 is 5 inputs + bias on 4-row tiles: rows 0-3, then input 4 and the bias
    assert [m.inputs.tolist() for m in maps[:2]] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert maps[2].inputs.tolist() == [4, -1]
    h = np.random.default_rng(5).uniform(-3, 3, (7, 5))
    h[0] = 0.1                     # all inputs small: the bias input sets the scale
    v = np.concatenate([drive_levels(m, h, input_scale(h), 0.15) for m in maps[:3]], axis=1)
    assert np.abs(v).max() <= 0.15 + 1e-15
    # each pattern reaches full scale on its largest input (or the bias row)
    np.testing.assert_allclose(np.abs(v).max(1), 0.15)
    assert v[0, -1] == pytest.approx(0.15)


def test_read_range_is_checked_against_the_switching_threshold():
    with pytest.raises(ValueError, match="non-disturbing"):
        InferConfig(v_in=0.3)
    InferConfig(v_in=0.3, v_switch=1.0)


def _run(tmp_path, name, fail_at=None):
    plan = _plan()
    chip = _chip(plan)
    calls = []

    class Failing(SimulatedRig):
        def _column_currents(self, rows, volts, cols):
            calls.append(1)
            if fail_at is not None and len(calls) > fail_at:
                raise KeyboardInterrupt
            return super()._column_currents(rows, volts, cols)

    rng = np.random.default_rng(8)
    test = (rng.uniform(-1, 1, (23, 5)), rng.integers(0, 2, 23))
    return run(plan, lambda n: Failing(chip[n], lab=chip.lab),
               [f"x{t}" for t in range(plan.n_tiles)], tmp_path / name, test,
               config=InferConfig(batch=10), seed=1, progress=False), chip


def test_stored_run_has_every_level_current_and_output_and_matches_the_forward(tmp_path):
    res, chip = _run(tmp_path, "a.h5")
    s = res.summary
    assert s["points"] == 23 and 0 <= s["accuracy"] <= 1
    t = load_inference(res.path).tables
    maps = tile_maps(res.plan)
    assert len(t["drive"]) == 23 * sum(m.rows.size for m in maps)
    assert len(t["currents"]) == 23 * sum(m.cols.size for m in maps)
    assert len(t["outputs"]) == 23 * (3 + 2) and len(t["readback"]) == res.plan.n_devices
    # the per-inference time is what the rig charged: one execution per tile and batch
    per = s["per_inference_by_category_s"]
    assert per["dc_integration"] == pytest.approx(res.plan.n_tiles / 600)
    assert s["per_inference_s"] == pytest.approx(sum(per.values()))


def test_killed_run_resumes_to_the_same_file(tmp_path):
    ref, _ = _run(tmp_path, "ref.h5")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "k.h5", fail_at=7)
    # the second session starts from the committed state (a fresh chip object, as a new process)
    plan = _plan()
    chip = _chip(plan)
    rng = np.random.default_rng(8)
    test = (rng.uniform(-1, 1, (23, 5)), rng.integers(0, 2, 23))
    res = run(plan, lambda n: SimulatedRig(chip[n], lab=chip.lab),
              [f"x{t}" for t in range(plan.n_tiles)], tmp_path / "k.h5", test,
              config=InferConfig(batch=10), seed=1, progress=False)
    assert res.resumed_from == 7
    a, b = load_inference(ref.path).tables, load_inference(res.path).tables
    for name in a:
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy(), err_msg=name)
    assert res.summary == ref.summary


def test_plan_and_crossbars_must_fit(tmp_path):
    plan = _plan()
    chip = _chip(plan)
    with pytest.raises(ProtocolError, match="one crossbar per tile"):
        run(plan, _opener(chip), ["x0"], tmp_path / "a.h5", (np.zeros((2, 5)), [0, 1]),
            progress=False)
    with pytest.raises(ProtocolError, match="do not fit"):
        run(plan, _opener(chip), [f"x{t}" for t in range(plan.n_tiles)], tmp_path / "a.h5",
            (np.zeros((2, 4)), [0, 1]), progress=False)
