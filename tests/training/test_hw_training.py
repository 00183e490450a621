"""Layers, training, evaluation and checkpoints of the hardware-aware network (small epochs)."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from database.datasets import load_moons_all  # noqa: E402
from database.reference import import_reference  # noqa: E402
from training.evaluate import evaluate_transfers, multi_seed_table  # noqa: E402
from training.layers import HardwareAwareMLP  # noqa: E402
from training.noise import NoiseConfig  # noqa: E402
from training.train import TrainConfig, load_checkpoint, save_checkpoint, train  # noqa: E402


@pytest.fixture(scope="module")
def db():
    return import_reference()


@pytest.fixture(scope="module")
def moons():
    return load_moons_all()


@pytest.mark.parametrize("mapping", ["physical", "reference"])
def test_stuck_weights_get_no_gradient(db, mapping):
    m = HardwareAwareMLP((2, 8, 1), k=3, seeds=[0, 1, 2]).attach_noise(
        db, mapping=mapping, cfg=dataclasses.replace(NoiseConfig(), stuck_hrs_rate=0.2,
                                                     stuck_lrs_rate=0.2))
    x = torch.rand(16, 2)
    out, stuck = m(x, m.draw(1, torch.Generator().manual_seed(0)), return_stuck=True)
    out.sum().backward()
    grads = torch.cat([p.grad.flatten(1) for p in m.tensors()], 1)
    s = stuck[0]
    assert s.any() and (~s).any()
    assert torch.all(grads[s] == 0)
    assert (grads[~s] != 0).float().mean() > 0.5


def test_stuck_weights_do_not_move_in_training(db, moons):
    x, y = moons["train"]
    noise = dataclasses.replace(NoiseConfig(), stuck_hrs_rate=0.1, stuck_lrs_rate=0.1)
    cfg = TrainConfig(epochs=1, batch_size=1000, noise=noise, mapping="physical", draw_block=1)
    # one step: compare weights before and after against the stuck mask of that step
    from training.train import build_model

    m0 = build_model(cfg, db, torch.device("cpu"))
    before = torch.cat([p.detach().flatten(1) for p in m0.tensors()], 1)
    g = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    stuck = m0.mapping.apply(before, m0.draw(1, g))[1][0]
    res = train(cfg, x, y, db)
    after = torch.cat([p.detach().flatten(1) for p in res.model.tensors()], 1)
    assert stuck.any()
    assert torch.equal(after[stuck], before[stuck])
    assert (after[~stuck] != before[~stuck]).float().mean() > 0.9


def test_transfer_draw_fixed_across_inputs_and_different_across_transfers(db):
    m = HardwareAwareMLP((2, 8, 1), k=1, seeds=[0]).attach_noise(db, mapping="physical")
    x = torch.rand(5, 2)
    d = m.draw(7, torch.Generator().manual_seed(0))
    batched = m(x, d)  # (7, 1, 5, 1)
    # input by input with the same draws gives the same outputs: one network per transfer
    for i in range(5):
        torch.testing.assert_close(m(x[i:i + 1], d)[:, :, 0], batched[:, :, i])
    ws, _ = m.effective(d)
    assert all(not torch.equal(ws[0][0], ws[0][t]) for t in range(1, 7))


def test_same_seed_same_table_and_checkpoint_reload(db, moons, tmp_path):
    x, y = moons["train"]
    xt, yt = moons["test"]
    cfg = TrainConfig(epochs=20, mapping="reference", seed=3)
    a = train(cfg, x, y, db)
    b = train(cfg, x, y, db)
    for p, q in zip(a.model.tensors(), b.model.tensors(), strict=True):
        assert torch.equal(p, q)
    ra = evaluate_transfers(a.model, xt, yt, 300, db, mapping="reference", seed=5)
    rb = evaluate_transfers(b.model, xt, yt, 300, db, mapping="reference", seed=5)
    assert ra.summary() == rb.summary()
    rc = evaluate_transfers(a.model, xt, yt, 300, db, mapping="reference", seed=6)
    assert not np.array_equal(ra.transfer_acc, rc.transfer_acc)
    path = save_checkpoint(a, tmp_path / "m.pt")
    m, cfg2, meta = load_checkpoint(path, "cpu")
    assert cfg2 == cfg and meta["db_hash"] == a.db_hash
    for p, q in zip(a.model.tensors(), m.tensors(), strict=True):
        assert torch.equal(p, q)
    rl = evaluate_transfers(m, xt, yt, 300, db, mapping="reference", seed=5)
    assert rl.summary() == ra.summary()


def test_chunked_evaluation_equals_unchunked_statistics(db, moons):
    xt, yt = moons["test"]
    m = HardwareAwareMLP((2, 8, 1), k=2, seeds=[0, 1])
    r1 = evaluate_transfers(m, xt, yt, 50, db, mapping="physical", chunk=50)  # one chunk
    r2 = evaluate_transfers(m, xt, yt, 50, db, mapping="physical")  # default chunking
    r3 = evaluate_transfers(m, xt, yt, 50, db, mapping="physical", chunk=7)  # 8 chunks
    assert r3.transfer_acc.shape == (50, 2) and r3.point_rate.shape == (2, 200)
    for r in (r2, r3):  # the same 50 transfers however they are cut into chunks
        np.testing.assert_array_equal(r.point_rate, r1.point_rate)
        np.testing.assert_array_equal(r.transfer_acc, r1.transfer_acc)
    r4 = evaluate_transfers(m, xt, yt, 50, db, mapping="physical", seed=1)
    assert not np.array_equal(r4.transfer_acc, r1.transfer_acc)
    ms = multi_seed_table(r1, r3)
    assert set(ms) == {"hardware_aware", "regular"}
    row = ms["hardware_aware"]["share_correct"][">=95%"]
    assert row["lo"] <= row["mean"] <= row["hi"]


def test_ensemble_equals_separate_networks_without_noise(moons):
    x, y = moons["train"]
    base = dict(epochs=3, hardware_aware=False, data_seed=11)
    ens = train(TrainConfig(k=3, seed=4, **base), x, y)
    for j in range(3):
        one = train(TrainConfig(k=1, seed=4 + j, **base), x, y)
        for p, q in zip(ens.model.tensors(), one.model.tensors(), strict=True):
            torch.testing.assert_close(p[j], q[0], rtol=1e-5, atol=1e-6)


def test_hardware_aware_beats_regular_quickly(db, moons):
    """Short training (600 epochs) already shows the robustness gap in the reference mapping."""
    x, y = moons["train"]
    xt, yt = moons["test"]
    res = {}
    for hw in (True, False):
        r = train(TrainConfig(epochs=600, hardware_aware=hw, mapping="reference"), x, y, db)
        res[hw] = evaluate_transfers(r.model, xt, yt, 1000, db, mapping="reference")
    assert res[True].summary()["share_correct_95"] > res[False].summary()["share_correct_95"]


def test_cli_train_and_evaluate(tmp_path):
    import json

    from click.testing import CliRunner

    from xbarlab.cli import cli

    model = tmp_path / "hw.pt"
    r = CliRunner().invoke(cli, ["train", "--out", str(model), "--epochs", "2",
                                 "--mapping", "reference", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "ev"
    r = CliRunner().invoke(cli, ["evaluate", "--model", str(model), "--transfers", "50",
                                 "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["networks"]["hardware_aware"]["transfers"] == 50
    assert (out / "accuracy_hist.png").exists() and (out / "boundary_map.png").exists()
