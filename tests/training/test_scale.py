"""Issue 8 training parts: tiled larger networks, ensembles with noise, early stopping, digits."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from database.datasets import load_dataset, load_moons_all  # noqa: E402
from database.reference import import_reference  # noqa: E402
from training.evaluate import evaluate_transfers  # noqa: E402
from training.layers import HardwareAwareMLP  # noqa: E402
from training.noise import NoiseConfig  # noqa: E402
from training.tiles import TileLayout, layer_devices  # noqa: E402
from training.train import TrainConfig, train  # noqa: E402


@pytest.fixture(scope="module")
def db():
    return import_reference()


@pytest.fixture(scope="module")
def moons():
    return load_moons_all()


@pytest.mark.parametrize("share_bias", [True, False])
def test_physical_mapping_uses_tile_keys_of_every_layer(db, share_bias):
    m = HardwareAwareMLP((64, 32, 10), seeds=[0], layout=TileLayout(share_bias=share_bias)
                         ).attach_noise(db, mapping="physical")
    keys = m.mapping.keys.numpy()  # (2, P): G+ and G- key of every parameter
    a = 0
    for layer in m.layers:
        lay = layer_devices(layer.out_features, layer.in_features, share_bias=share_bias)
        n_w, n_b = layer.weight[0].numel(), layer.bias[0].numel()
        np.testing.assert_array_equal(keys[:, a:a + n_w], lay.weight_k.reshape(2, -1))
        np.testing.assert_array_equal(keys[:, a + n_w:a + n_w + n_b], lay.bias_k)
        a += n_w + n_b
    assert a == keys.shape[1] and keys.max() == 63
    # key 0 (the last device of each tile) never moves; every tile has exactly one
    d = m.draw(50, torch.Generator().manual_seed(0),
               dataclasses.replace(NoiseConfig.off(), disturbance=True))
    assert torch.all(d.shift[:, 0][:, torch.as_tensor(keys == 0)] == 0)


@pytest.mark.parametrize("mapping", ["physical", "reference"])
def test_ensemble_equals_separate_networks_with_noise(db, moons, mapping):
    """K networks in one batched model = K separate runs (same seeds), every noise source on."""
    x, y = moons["train"]
    noise = dataclasses.replace(NoiseConfig(), stuck_hrs_rate=0.05, stuck_lrs_rate=0.05)
    base = dict(epochs=4, data_seed=11, mapping=mapping, noise=noise, draw_block=7)
    ens = train(TrainConfig(k=3, seed=4, **base), x, y, db)
    for j in range(3):
        one = train(TrainConfig(k=1, seed=4 + j, **base), x, y, db)
        for p, q in zip(ens.model.tensors(), one.model.tensors(), strict=True):
            torch.testing.assert_close(p[j], q[0], rtol=1e-4, atol=1e-5)
    # and the noise did act: a noise-free run from the same seeds ends elsewhere
    clean = train(TrainConfig(k=3, seed=4, **dict(base, noise=NoiseConfig.off())), x, y, db)
    diff = max(float((p - q).detach().abs().max()) for p, q in
               zip(ens.model.tensors(), clean.model.tensors(), strict=True))
    assert diff > 1e-3


def test_batched_evaluation_equals_separate(db, moons):
    xt, yt = moons["test"]
    m3 = HardwareAwareMLP((2, 8, 1), k=3, seeds=[5, 6, 7])
    # default chunking: variates drawn per one network's budget, forwarded in K-sized pieces
    r3 = evaluate_transfers(m3, xt, yt, 64, db, mapping="physical", seed=2)
    for j, s in enumerate((5, 6, 7)):
        r1 = evaluate_transfers(HardwareAwareMLP((2, 8, 1), k=1, seeds=[s]), xt, yt, 64, db,
                                mapping="physical", seed=2)
        np.testing.assert_allclose(r3.transfer_acc[:, j], r1.transfer_acc[:, 0])
        np.testing.assert_allclose(r3.point_rate[j], r1.point_rate[0])


def test_early_stopping_stops_and_reports_steps(db, moons):
    x, y = moons["train"]
    xv, yv = moons["validation"]
    # lr 0 never improves: stops at the first check after `patience` epochs without progress
    cfg = TrainConfig(epochs=200, lr=0.0, patience=10, eval_every=5, k=2, mapping="reference")
    r = train(cfg, x, y, db, val=(xv, yv))
    assert r.stopped_early == [True, True]
    assert r.steps == r.steps_per_network[0] == 15 * 4  # checks at 5 (best), 10, 15 (stop)
    assert [s for s, _ in r.val_history] == [20, 40, 60]
    # off by default: the fixed number of epochs
    r0 = train(TrainConfig(epochs=3, mapping="reference"), x, y, db)
    assert r0.steps == 12 and r0.stopped_early == [False]


def test_early_stopping_stops_each_network_on_its_own(db, moons):
    x, y = moons["train"]
    cfg = TrainConfig(epochs=120, patience=5, eval_every=5, min_delta=0.02, k=3, seed=1,
                      mapping="reference")
    r = train(cfg, x, y, db)  # no val set: 12.5 % of the training data held out
    assert len(r.steps_per_network) == 3 and r.steps == max(r.steps_per_network)
    per_epoch = int(np.ceil(round(875 * 0.875) / 256))
    assert all(s % (5 * per_epoch) == 0 for s in r.steps_per_network)
    assert any(r.stopped_early) and r.steps < 120 * per_epoch
    # a stopped network's weights did not move after it stopped: compare with a run of
    # exactly that many epochs for the earliest stopper
    j = int(np.argmin(r.steps_per_network))
    if r.steps_per_network[j] < r.steps:
        alone = train(dataclasses.replace(cfg, k=1, seed=1 + j, data_seed=1,
                                          epochs=r.steps_per_network[j] // per_epoch,
                                          patience=None),
                      *_held_in(cfg, x, y), db)
        for p, q in zip(r.model.tensors(), alone.model.tensors(), strict=True):
            torch.testing.assert_close(p[j], q[0], rtol=1e-4, atol=1e-5)


def _held_in(cfg, x, y):
    from training.train import _split_validation

    xt, yt, _ = _split_validation(cfg, x, y)
    return xt, yt


def test_digits_mlp_trains_and_evaluates_with_argmax(db):
    pytest.importorskip("sklearn")
    data = load_dataset("digits")
    (x, y), (xt, yt) = data["train"], data["test"]
    assert x.shape[1] == 64 and set(np.unique(y).tolist()) == set(range(10))
    cfg = TrainConfig(sizes=(64, 32, 10), activation="relu", epochs=6, lr=0.01,
                      mapping="physical", dataset="digits")
    r = train(cfg, x, y, db)
    res = evaluate_transfers(r.model, xt, yt, 40, db, mapping="physical", chunk=9)
    s = res.summary()
    assert s["clean_acc"] > 0.8  # argmax over 10 classes, far above chance (0.1)
    assert 0 <= s["share_correct_95"] <= 1 and res.transfer_acc.shape == (40, 1)


def test_cli_digits_train_with_early_stopping_and_evaluate(tmp_path):
    pytest.importorskip("sklearn")
    import json

    from click.testing import CliRunner

    from xbarlab.cli import cli

    model = tmp_path / "d.pt"
    r = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--out", str(model),
                                 "--epochs", "4", "--patience", "1", "--eval-every", "2",
                                 "--lr", "0", "--k", "2", "--tile", "16x8", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "early stopping: 2 of 2 stopped" in r.output  # lr 0: no improvement after epoch 2
    out = tmp_path / "ev"
    r = CliRunner().invoke(cli, ["evaluate", "--model", str(model), "--transfers", "30",
                                 "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    cfg = s["config"]
    assert cfg["sizes"] == [64, 32, 10] and cfg["tile_rows"] == 16 and cfg["patience"] == 1
    # 1,011 points / 256: early stopping on the validation set, none of it trained on
    assert s["train_steps"] == 4 * 4 and s["steps_per_network"] == [16, 16]
    assert s["stopped_early"] == [True, True] and len(s["per_network"]) == 2
    assert s["networks"]["hardware_aware"]["transfers"] == 30
    assert "boundary_map" not in s["figures"]  # 64-D inputs: no input-plane map
