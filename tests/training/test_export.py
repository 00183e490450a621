"""The conductance plan matches what the training's physical mapping and tiles assumed."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protocols.errors import ProtocolError  # noqa: E402
from training.errors import TrainingError  # noqa: E402
from training.export import (  # noqa: E402
    BIAS,
    ConductancePlan,
    conductance_plan,
    plan_forward,
    plan_from_weights,
    plan_logits,
    plan_weights,
)
from training.layers import HardwareAwareMLP  # noqa: E402
from training.noise import NoiseConfig  # noqa: E402
from training.tiles import layer_devices  # noqa: E402


@pytest.fixture(scope="module")
def db():
    from database.reference import import_reference

    return import_reference()


@pytest.fixture(scope="module")
def moons():
    from database.datasets import load_moons_all

    return load_moons_all()


def _model(db, sizes=(2, 8, 1), k=2, **kw):
    m = HardwareAwareMLP(sizes, k=k, seeds=list(range(k)))
    with torch.no_grad():  # mixed-sign, non-trivial biases
        for layer in m.layers:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=torch.Generator().manual_seed(3)))
    return m.attach_noise(db, mapping="physical", **kw)


def _flat_index(model, plan):
    """Index of each plan device into the mapping's flattened (D, P) device arrays."""
    offs, a = {}, 0
    for i, layer in enumerate(model.layers):
        offs[(i, 0)] = a
        a += layer.weight[0].numel()
        offs[(i, 1)] = a
        a += layer.bias[0].numel()
    n_in = np.array([model.sizes[li] for li in plan.layer])
    base = np.array([offs[(int(li), int(p))] for li, p in zip(plan.layer, plan.param, strict=True)])
    return base + np.where(plan.param == BIAS, plan.out, plan.out * n_in + plan.inp)


@pytest.mark.parametrize("member", [0, 1])
def test_targets_and_keys_equal_the_training_mapping(db, member):
    m = _model(db)
    plan = conductance_plan(m, db, "physical", member=member)  # the model's 8x8, shared bias
    theta = torch.cat([p.detach().flatten(1) for p in m.tensors()], 1)
    gp, gm = m.mapping.to_conductance(theta)
    p_idx = _flat_index(m, plan)
    want = np.where(plan.sign == 0, gp[member].numpy()[p_idx], gm[member].numpy()[p_idx])
    np.testing.assert_allclose(plan.target, want, rtol=1e-6)
    keys = m.mapping.keys.numpy()  # (2, P)
    np.testing.assert_array_equal(plan.k, keys[plan.sign, p_idx])
    assert plan.target.min() >= db.g_min - 1e-12 and plan.target.max() <= db.g_max + 1e-12


def test_layout_matches_layer_devices():
    rng = np.random.default_rng(0)
    for sizes, share in (((2, 8, 1), True), ((5, 12, 3), True), ((5, 12, 3), False)):
        w = [rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
        b = [rng.normal(size=o) for o in sizes[1:]]
        plan = plan_from_weights(w, b, g_min=100e-6, g_max=400e-6, tile_rows=4, tile_cols=4,
                                 share_bias=share)
        tile0 = 0
        for li, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            lay = layer_devices(n_out, n_in, tile_rows=4, tile_cols=4, share_bias=share)
            for param, karr, tarr in ((0, lay.weight_k, lay.weight_tile),
                                      (1, lay.bias_k, lay.bias_tile)):
                m = (plan.layer == li) & (plan.param == param)
                idx = (plan.sign[m], plan.out[m]) + ((plan.inp[m],) if param == 0 else ())
                np.testing.assert_array_equal(plan.k[m], karr[idx])
                np.testing.assert_array_equal(plan.tile[m], tarr[idx] + tile0)
            tile0 += lay.n_tiles
        assert plan.n_tiles == tile0
        # programming order: tile by tile, column-major inside, k counting down to 0
        for t in range(plan.n_tiles):
            d = plan.tile_devices(t)
            assert d.size == plan.tile_shape[t].prod()  # tiles are filled rectangles
            order = plan.col[d] * plan.tile_shape[t][0] + plan.row[d]
            np.testing.assert_array_equal(order, np.arange(d.size))
            np.testing.assert_array_equal(plan.k[d], np.arange(d.size)[::-1])
        # every (tile, row, col) used once
        assert len(set(zip(plan.tile, plan.row, plan.col, strict=True))) == plan.n_devices


def test_plan_forward_equals_model_clean_and_noisy(db, moons):
    m = _model(db, k=2)
    plan = conductance_plan(m, db, member=1)
    x, _y = moons["test"]
    clean = m(torch.as_tensor(x))[0, 1].detach().numpy()
    np.testing.assert_allclose(plan_logits(plan, plan.target, x), clean, rtol=1e-4, atol=1e-4)
    # one noisy draw: the same device conductances through plan_weights give the noisy weights
    d = m.draw(1, torch.Generator().manual_seed(5), NoiseConfig(stuck=False))
    theta = torch.cat([p.detach().flatten(1) for p in m.tensors()], 1)
    w_noisy, _ = m.mapping.apply(theta, d)
    gp, gm = m.mapping.to_conductance(theta)
    gn = d.apply(torch.stack((gp, gm), 1))[0, 1].numpy()  # (D, P) of member 1
    g_dev = gn[plan.sign, _flat_index(m, plan)]
    flat = np.concatenate([np.concatenate([wl.reshape(-1), bl])
                           for wl, bl in plan_weights(plan, g_dev)])
    np.testing.assert_allclose(flat, w_noisy[0, 1].numpy(), rtol=1e-4, atol=1e-5)
    pred = plan_forward(plan, g_dev, x)
    assert pred.shape == (x.shape[0],) and set(np.unique(pred)) <= {0, 1}


def test_batched_conductances_and_json_roundtrip(db, tmp_path):
    plan = conductance_plan(_model(db, k=1), db)
    x = np.random.default_rng(1).random((7, 2))
    g = np.stack([plan.target, np.full(plan.n_devices, db.g_min)])
    pred = plan_forward(plan, g, x)
    assert pred.shape == (2, 7)
    assert (pred[1] == (plan_logits(plan, g[1], x)[..., 0] > 0)).all()
    again = ConductancePlan.load(plan.save(tmp_path / "plan.json"))
    np.testing.assert_array_equal(again.target, plan.target)
    assert json.dumps(again.to_dict()) == json.dumps(plan.to_dict())


def test_a_plan_for_a_station_holds_only_targets_it_can_verify(db, moons, tmp_path, capsys):
    # the published range reaches 500 uS, the shipped stations' read ceiling: the plan made
    # for sim-pmu is mapped into what it verifies, computes the same, and transfers whole
    from pathlib import Path

    from protocols.plan import check_verifiable
    from training.train import TrainConfig, save_checkpoint, train
    from xbarlab.cli import main
    from xbarlab.station import load_station

    station = Path(__file__).resolve().parents[2] / "xbarlab" / "stations" / "sim-pmu.yaml"
    read = load_station(station).read_settings
    assert db.g_max == pytest.approx(500e-6)
    m = _model(db, k=1)
    free = conductance_plan(m, db)
    with pytest.raises(ProtocolError, match="targets"):
        check_verifiable(free, 0.01, read)
    plan = conductance_plan(m, db, read=read)
    check_verifiable(plan, 0.01, read, whole_range=True)
    assert plan.g_max == pytest.approx(495e-6) and plan.g_min == db.g_min
    assert "[100, 495] uS instead of [100, 500] uS" in plan.meta["g_range_note"]
    x, _y = moons["test"]
    np.testing.assert_allclose(plan_logits(plan, plan.target, x),
                               plan_logits(free, free.target, x), rtol=1e-9, atol=1e-9)
    # the model -> plan path of `xbarlab transfer --model` (published DB by default)
    res = train(TrainConfig(epochs=1, mapping="physical"), *moons["train"], db)
    ckpt = save_checkpoint(res, tmp_path / "m.pt")
    saved = tmp_path / "plan.json"
    try:
        main(["transfer", "--model", str(ckpt), "--station", str(station), "-o",
              str(tmp_path / "t.h5"), "--save-plan", str(saved), "--no-progress"])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "note: mapped into [100, 495] uS" in out.err
    check_verifiable(ConductancePlan.load(saved), 0.01, read)


def test_refuses_reference_mapping_and_bad_input(db):
    m = _model(db, k=1)
    with pytest.raises(TrainingError, match="cannot be programmed"):
        conductance_plan(m, db, "reference")
    with pytest.raises(TrainingError, match="member"):
        conductance_plan(m, db, member=3)
    plan = conductance_plan(m, db)
    with pytest.raises(ProtocolError, match="conductances"):
        plan_forward(plan, np.zeros(5), np.zeros((1, 2)))
    with pytest.raises(ProtocolError, match="kind"):
        ConductancePlan.from_dict({"kind": "other"})


def test_export_module_does_not_import_torch():
    code = "import sys, training.export; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clipping_sets_each_layer_scale_at_the_percentile(db):
    from training.export import clip_weights

    m = _model(db, sizes=(6, 16, 3), k=2)
    with torch.no_grad():   # one outlier per member in each layer
        m.layers[0].weight[:, 0, 0] = 40.0
        m.layers[1].weight[:, 0, 0] = -30.0
    before = [(lay.weight.detach().clone(), lay.bias.detach().clone()) for lay in m.layers]
    c = clip_weights(m, 90)
    for lay, (w0, b0) in zip(m.layers, before, strict=True):   # the trained model is untouched
        assert torch.equal(lay.weight, w0) and torch.equal(lay.bias, b0)
    for li, (w0, b0) in enumerate(before):
        w0, b0 = w0.numpy(), b0.numpy()
        for k in range(2):
            s = np.percentile(np.abs(np.concatenate([w0[k].ravel(), b0[k]])), 90)
            np.testing.assert_allclose(c.layers[li].weight[k].detach().numpy(),
                                       np.clip(w0[k], -s, s), rtol=1e-6)
            np.testing.assert_allclose(c.layers[li].bias[k].detach().numpy(),
                                       np.clip(b0[k], -s, s), rtol=1e-6)
            assert conductance_plan(c, db, member=k).scales[li] == pytest.approx(s, rel=1e-6)
            assert s < 30.0 / 4
    assert torch.equal(clip_weights(m, 100).layers[0].weight, before[0][0])
    with pytest.raises(TrainingError, match="percentile"):
        clip_weights(m, 20)


def test_transfer_clips_a_model_it_is_told_to(db, moons, tmp_path):
    from click.testing import CliRunner

    from training.train import TrainConfig, save_checkpoint, train
    from xbarlab.cli import cli
    from xbarlab.commands.transfer import _plan_from_model

    ckpt = save_checkpoint(train(TrainConfig(epochs=1, mapping="physical"), *moons["train"],
                                 db), tmp_path / "m.pt")
    full, _ = _plan_from_model(str(ckpt), None, 0, None, 0.01)
    clipped, _ = _plan_from_model(str(ckpt), None, 0, None, 0.01, clip=80)
    w = np.concatenate([full.weights[0].ravel(), full.biases[0]])
    assert clipped.scales[0] == pytest.approx(np.percentile(np.abs(w), 80), rel=1e-6)
    assert clipped.scales[0] < full.scales[0] and clipped.meta["clip_percentile"] == 80
    assert "clip_percentile" not in full.meta
    full.save(tmp_path / "p.json")
    r = CliRunner().invoke(cli, ["transfer", "--plan", str(tmp_path / "p.json"), "--station",
                                 "x.yaml", "-o", str(tmp_path / "t.h5"), "--clip", "95"])
    assert r.exit_code == 2 and "--clip and --replicate apply to --model" in r.output
    r = CliRunner().invoke(cli, ["transfer", "--plan", str(tmp_path / "p.json"), "--station",
                                 "x.yaml", "-o", str(tmp_path / "t.h5"), "--replicate", "2"])
    assert r.exit_code == 2 and "--clip and --replicate apply to --model" in r.output
    # replicated, then clipped: the clip sees the layers as they are programmed
    rep, _ = _plan_from_model(str(ckpt), None, 0, None, 0.01, clip=80, replicate=2)
    assert rep.meta["replicate"] == 2 and rep.n_devices == 2 * full.n_devices - 2
    w = np.concatenate([np.tile(full.weights[0].ravel(), 2), np.tile(full.biases[0], 2)])
    assert rep.scales[0] == pytest.approx(np.percentile(np.abs(w), 80), rel=1e-6)


def test_a_replicated_network_computes_the_same_on_copies_on_their_own_tiles(db, moons):
    from training.export import replicate_hidden

    m = _model(db, sizes=(2, 8, 8, 3), k=2)
    r = replicate_hidden(m, 3)
    assert r.sizes == (2, 24, 24, 3) and r.k == 2 and r.activation == m.activation
    x = torch.as_tensor(moons["test"][0])
    torch.testing.assert_close(r(x), m(x), rtol=1e-5, atol=1e-6)   # the same function
    plan = conductance_plan(r, db, member=1)
    np.testing.assert_allclose(plan_logits(plan, plan.target, moons["test"][0]),
                               m(x)[0, 1].detach().numpy(), rtol=1e-4, atol=1e-4)
    w0 = [lay.weight[1].detach().numpy() for lay in m.layers]
    np.testing.assert_allclose(plan.weights[1][8:16, 16:24], w0[1] / 3, rtol=1e-6)
    np.testing.assert_allclose(plan.weights[2][:, :8], w0[2] / 3, rtol=1e-6)
    np.testing.assert_allclose(plan.biases[2], m.layers[2].bias[1].detach().numpy(), rtol=1e-6)

    # every copy of a weight sits on a crossbar of its own: copy c of hidden unit j is unit
    # 8c + j, so its column pair (layer 0, 1) and its input row (layer 1, 2) lie 16 / 8 lines on
    def tile(layer, param, out, inp):
        hit = ((plan.layer == layer) & (plan.param == param) & (plan.out == out)
               & ((plan.inp == inp) | (param == BIAS)))
        return set(plan.tile[hit].tolist())

    for j in range(8):
        assert len(set().union(*(tile(0, 0, j + 8 * c, 1) for c in range(3)))) == 3
        assert len(set().union(*(tile(2, 0, 1, j + 8 * c) for c in range(3)))) == 3
    assert replicate_hidden(m, 1).sizes == m.sizes
    for bad in (0, -2, 1.5, True):
        with pytest.raises(TrainingError, match="whole number"):
            replicate_hidden(m, bad)


def test_replication_averages_the_transfer_errors_away(db, moons):
    """Each copy's devices err on their own, so a network on 4 copies of each hidden unit
    moves its outputs by less over the same kind of transfers (not by half: the output's bias
    pair is not replicated). An output bias larger than every divided weight sets the layer's
    scale and takes the gain away (replicate_hidden's docstring)."""
    from training.export import replicate_hidden

    x = torch.as_tensor(moons["test"][0])
    spread = {}
    for bias in (0.1, 3.0):   # trained-like small biases; an output bias of 3 max|w|
        m = _model(db, sizes=(2, 8, 1), k=1)
        with torch.no_grad():
            m.layers[0].bias.mul_(0.1)
            m.layers[1].bias.fill_(bias * float(m.layers[1].weight.abs().max()))
        for copies in (1, 4):
            net = replicate_hidden(m, copies).attach_noise(db, mapping="physical")
            d = net.draw(400, torch.Generator().manual_seed(1), NoiseConfig(stuck=False))
            with torch.no_grad():
                spread[bias, copies] = float((net(x, d) - net(x)).square().mean().sqrt())
    assert spread[0.1, 4] < 0.75 * spread[0.1, 1]
    assert spread[3.0, 4] > spread[3.0, 1]


def test_choose_clip_takes_the_best_transfers_that_keep_the_clean_accuracy():
    from training.evaluate import choose_clip

    def rows(*r):
        return [{"percentile": p, "clean_acc": c, "transfer_acc_mean": m} for p, c, m in r]

    # p90 transfers best but loses 2 clean points: the guard leaves p95
    assert choose_clip(rows((90, 0.95, 0.93), (95, 0.968, 0.92), (100, 0.97, 0.70)),
                       0.005) == 95.0
    assert choose_clip(rows((90, 0.95, 0.93), (95, 0.968, 0.92), (100, 0.97, 0.70)),
                       0.05) == 90.0
    # within the tolerance of the best, the least clipping: p95's 0.4 points less than p90
    assert choose_clip(rows((90, 0.97, 0.925), (95, 0.97, 0.921), (100, 0.97, 0.70)),
                       0.005) == 95.0
    assert choose_clip(rows((90, 0.97, 0.925), (95, 0.97, 0.921), (100, 0.97, 0.70)),
                       0.005, tolerance=0.001) == 90.0
    # nothing beats the unclipped network by more than the tolerance: no clip
    assert choose_clip(rows((95, 0.97, 0.813), (100, 0.97, 0.81)), 0.005) is None
    with pytest.raises(TrainingError, match="percentile 100"):
        choose_clip(rows((95, 0.97, 0.8)), 0.005)


@pytest.fixture(scope="module")
def wasted_scale(db, moons):
    """A regular half-moons network with one hidden unit cut off from the output and its
    incoming weights 40 times the largest: the function is the network's, but the first
    layer's scale is set by weights that do nothing."""
    from training.train import TrainConfig, train

    res = train(TrainConfig(epochs=300, hardware_aware=False, mapping="physical"),
                *moons["train"], db)
    m = res.model
    with torch.no_grad():
        m.layers[1].weight[:, :, 0] = 0.0
        m.layers[0].weight[:, 0, :] = 40.0 * m.layers[0].weight.abs().max()
    return res


def test_clip_scan_finds_the_clip_that_frees_a_wasted_scale(db, moons, wasted_scale):
    from training.evaluate import scan_clips

    model = wasted_scale.model
    before = [lay.weight.detach().clone() for lay in model.layers]
    seen = []
    s = scan_clips(model, *moons["test"], db, transfers=100, on_row=seen.append)
    assert [r["percentile"] for r in s.rows] == [90, 93, 95, 97, 99, 100] and seen == s.rows
    by = {r["percentile"]: r for r in s.rows}
    # only p90 clips both outliers (2 of the layer's 24 parameters): the dead unit's weights
    # no longer set the scale, the transfers gain, and the clean accuracy is kept
    assert s.chosen == 90.0
    assert by[90]["transfer_acc_mean"] > by[100]["transfer_acc_mean"] + 0.1
    assert by[90]["clean_acc"] == by[100]["clean_acc"]
    for lay, w in zip(model.layers, before, strict=True):   # the caller's model as it was
        assert torch.equal(lay.weight, w)


def test_auto_clip_from_the_command_line(wasted_scale, tmp_path):
    from click.testing import CliRunner

    from training.train import save_checkpoint
    from xbarlab.cli import cli
    from xbarlab.commands.transfer import _plan_from_model

    ckpt = save_checkpoint(wasted_scale, tmp_path / "m.pt")
    plan, _ = _plan_from_model(str(ckpt), None, 0, None, 0.01, clip="auto")
    rows = plan.meta["clip_scan"]
    assert [r["percentile"] for r in rows] == [90, 93, 95, 97, 99, 100]
    assert plan.meta["clip_percentile"] == 90.0     # chosen on the held-out points
    r = CliRunner().invoke(cli, ["evaluate", "--model", str(ckpt), "--clip", "auto",
                                 "--transfers", "20", "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert "clip chosen: p90" in r.output and "not the test set" in r.output
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["clip_percentile"] == 90.0 and len(summary["clip_scan"]) == 6
    for bad, why in (("abc", "neither a percentile"), ("120", "outside 50-100")):
        r = CliRunner().invoke(cli, ["evaluate", "--model", str(ckpt), "--clip", bad])
        assert r.exit_code == 2 and why in r.output
    # replicated: the same clean accuracy, and the clip still chosen on the copies
    r = CliRunner().invoke(cli, ["evaluate", "--model", str(ckpt), "--clip", "auto",
                                 "--replicate", "2", "--transfers", "20",
                                 "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert rep["replicate"] == 2 and rep["clip_percentile"] == 90.0
    assert rep["networks"] and all(
        a["clean_acc"] == pytest.approx(b["clean_acc"], abs=1e-6)
        for a, b in zip(rep["networks"].values(), summary["networks"].values(), strict=True))


def test_replicating_says_when_a_bias_sets_the_scale(wasted_scale, tmp_path, capsys):
    """The output layer's biases are not divided by the copies: one as large as the largest
    weight takes half the conductance swing of the replicated weights, and the command says so."""
    import copy

    from training.train import save_checkpoint
    from xbarlab.commands.transfer import _plan_from_model

    res = copy.deepcopy(wasted_scale)
    out = res.model.layers[1]
    with torch.no_grad():
        out.bias.fill_(float(out.weight.abs().max()))
    ckpt = save_checkpoint(res, tmp_path / "m.pt")
    plan, _ = _plan_from_model(str(ckpt), None, 0, None, 0.01, replicate=2)
    err = capsys.readouterr().err
    assert "layer 1's scale is set by a bias" in err and "50% of the conductance swing" in err
    assert plan.scales[1] == pytest.approx(float(out.bias.detach().abs().max()), rel=1e-6)
    _plan_from_model(str(ckpt), None, 0, None, 0.01)   # one copy: nothing to say
    assert "set by a bias" not in capsys.readouterr().err
