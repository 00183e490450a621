"""Time since programming as a noise source (NoiseConfig.retention_s): off by default, and when
on the sampled conductances drift as the database's retention statistics say."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from database.nonideality import RetentionStats
from database.reference import import_reference
from training.errors import TrainingError
from training.noise import NoiseConfig, NoiseModel, retention_at

LEVELS = np.array([100e-6, 300e-6, 500e-6])
TIMES = np.array([10.0, 1e3, 1e5])


def _mean(t, g):   # the database's mean drift: linear in G, log-linear in t
    return -0.002 * np.log10(t) * (1 + 2000.0 * g)


def _std(t, g):
    return 0.001 * np.log10(t) * (1 + 1000.0 * g)


def _db(up=0.1):
    t, lv = np.meshgrid(TIMES, LEVELS, indexing="ij")
    t, lv = t.ravel(), lv.ravel()
    stats = RetentionStats(time=t, level=lv, mean_rel=_mean(t, lv), std_rel=_std(t, lv),
                           counts=np.full(t.size, 50.0),
                           up_fraction=np.where(t > 100, up, 0.0),
                           up_mean_rel=np.where(t > 100, 0.4, np.nan),
                           up_std_rel=np.where(t > 100, 0.05, np.nan), rule="synthetic")
    db = dataclasses.replace(import_reference(), retention=stats)
    db.validate()
    return db


def _sample(db, cfg, n=40000, seed=0):
    """Relative change of devices at each level (n draws), from the noise model alone."""
    nm = NoiseModel(db, dtype=torch.float64)
    keys = torch.zeros((1, LEVELS.size), dtype=torch.int64)
    d = nm.draw(keys, n, 1, cfg, torch.Generator().manual_seed(seed))
    g = torch.as_tensor(LEVELS, dtype=torch.float64).view(1, 1, -1)
    return ((d.apply(g) - g) / g)[:, 0, 0].numpy(), d


def test_off_by_default_and_paired_with_the_other_sources():
    assert NoiseConfig().retention_s is None and not NoiseConfig.off().any()
    assert NoiseConfig(tuning=False, offset=False, disturbance=False, stuck=False,
                       retention_s=60.0).any()
    db = _db()
    nm = NoiseModel(db)
    keys = torch.ones((2, 5), dtype=torch.int64)
    a = nm.draw(keys, 8, 1, NoiseConfig(), torch.Generator().manual_seed(3))
    b = nm.draw(keys, 8, 1, NoiseConfig(retention_s=3600.0), torch.Generator().manual_seed(3))
    # retention variates are drawn after every other source: those are unchanged
    assert torch.equal(a.shift, b.shift) and torch.equal(a.stuck_mask, b.stuck_mask)
    assert torch.equal(a.stuck_value, b.stuck_value) and not torch.equal(a.gain, b.gain)


def test_sampled_conductances_drift_as_the_database_says():
    db = _db(up=0.1)
    t = 1e4   # between the cells at 1e3 and 1e5 s: interpolated in log time
    rel, _ = _sample(db, NoiseConfig(tuning=False, offset=False, disturbance=False,
                                     stuck=False, retention_s=t))
    for j, g in enumerate(LEVELS):
        x = rel[:, j]
        up = x > 0.1   # the up-drift N(40 %, 5 %) is far above the rest
        assert up.mean() == pytest.approx(0.1, abs=0.01)
        assert x[up].mean() == pytest.approx(0.4, abs=0.003)
        assert x[up].std() == pytest.approx(0.05, abs=0.003)
        rest = x[~up]
        assert rest.mean() == pytest.approx(_mean(t, g), abs=4e-4)
        assert rest.std() == pytest.approx(_std(t, g), rel=0.03)
    # at the first cell nothing drifts up yet; in between, the share is interpolated too
    rel, _ = _sample(db, NoiseConfig(tuning=False, offset=False, disturbance=False,
                                     stuck=False, retention_s=10.0))
    assert rel.max() < 0.1
    ra = retention_at(db.retention, 50.0)
    assert ra.up == pytest.approx(0.1 * math.log(5) / math.log(100))
    assert ra.mean0 + ra.mean1 * 300e-6 == pytest.approx(_mean(50.0, 300e-6))


def test_retention_adds_to_the_other_sources_before_stuck_substitution():
    db = _db(up=0.0)
    cfg = NoiseConfig(stuck_hrs_rate=0.2, stuck_lrs_rate=0.2)
    base, d0 = _sample(db, cfg, n=20000)
    with_ret, d1 = _sample(db, dataclasses.replace(cfg, retention_s=1e5), n=20000)
    stuck = d1.stuck_mask[:, 0, 0].numpy()
    assert np.array_equal(stuck, d0.stuck_mask[:, 0, 0].numpy())
    assert np.array_equal(with_ret[stuck], base[stuck])           # stuck devices do not drift
    shift = (with_ret - base)[~stuck].reshape(-1)
    assert shift.mean() == pytest.approx(np.mean([_mean(1e5, g) for g in LEVELS]), abs=5e-4)


def test_bad_times_and_databases_are_refused():
    with pytest.raises(TrainingError, match="retention_s"):
        NoiseConfig(retention_s=-1.0)
    with pytest.raises(TrainingError, match="retention_s"):
        NoiseConfig(retention_s=math.nan)
    keys = torch.zeros((1, 3), dtype=torch.int64)
    with pytest.raises(TrainingError, match="outside the database's retention data"):
        NoiseModel(_db()).draw(keys, 2, 1, NoiseConfig(retention_s=1e7), None)
    with pytest.raises(TrainingError, match="no retention statistics"):
        NoiseModel(import_reference()).draw(keys, 2, 1, NoiseConfig(retention_s=60.0), None)


def test_training_with_retention_and_the_checkpoint_keeps_it(tmp_path):
    from database.datasets import load_moons
    from training.train import load_checkpoint, save_checkpoint, train, train_config

    x, y = load_moons("train")
    cfg = train_config("moons", epochs=2, noise=NoiseConfig(retention_s=3600.0))
    res = train(cfg, x, y, _db())
    assert res.steps == 8 and np.isfinite(res.loss_history).all()
    save_checkpoint(res, tmp_path / "m.pt")
    _, back, _ = load_checkpoint(tmp_path / "m.pt", "cpu")
    assert back.noise.retention_s == 3600.0
