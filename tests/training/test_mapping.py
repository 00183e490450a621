import dataclasses

import pytest

torch = pytest.importorskip("torch")

from training.layers import HardwareAwareMLP  # noqa: E402
from training.noise import NoiseConfig  # noqa: E402


@pytest.fixture(scope="module")
def db():
    from database.reference import import_reference

    return import_reference()


SOURCES = ("tuning", "offset", "disturbance", "stuck")


def model(db, mapping, k=2, **kw):
    return HardwareAwareMLP((2, 8, 1), k=k, seeds=list(range(k))).attach_noise(
        db, mapping=mapping, **kw)


def flat(m):
    return torch.cat([p.detach().flatten(1) for p in m.tensors()], 1)


@pytest.mark.parametrize("mapping", ["physical", "reference"])
def test_roundtrip_without_noise(db, mapping):
    m = model(db, mapping)
    with torch.no_grad():
        m.layers[0].bias.copy_(torch.tensor([[-0.3, -0.1, -0.2, -0.5, -1, -2, -0.1, -0.4]] * 2))
    theta = flat(m)
    w, stuck = m.mapping.apply(theta, m.draw(3, torch.Generator().manual_seed(0),
                                             NoiseConfig.off()))
    assert w.shape == (3, 2, 33) and not stuck.any()
    torch.testing.assert_close(w, theta.expand_as(w), rtol=1e-5, atol=1e-6)
    gp, gm = m.mapping.to_conductance(theta)
    lo = 100e-6 if mapping == "physical" else -400e-6
    hi = 500e-6 if mapping == "physical" else 400e-6
    assert gp.min() >= lo - 1e-10 and gp.max() <= hi + 1e-10
    assert torch.all((gp == lo) | (gm == lo))  # unused device of each pair at the bottom


def _spread(m, cfg, n=400):
    theta = flat(m)
    w, _ = m.mapping.apply(theta, m.draw(n, torch.Generator().manual_seed(1), cfg))
    return (w - theta).abs().amax(0)  # (K, P)


@pytest.mark.parametrize("mapping", ["physical", "reference"])
@pytest.mark.parametrize("source", SOURCES)
def test_each_source_alone(db, mapping, source):
    m = model(db, mapping)
    only = dataclasses.replace(NoiseConfig.off(), **{source: True})
    on = _spread(m, only)
    assert on.max() > 1e-4, f"{source} has no effect when on"
    off = dataclasses.replace(NoiseConfig(), **{source: False})
    # the full model minus this source differs from the full model (the source matters)
    full = _spread(m, NoiseConfig())
    assert not torch.allclose(_spread(m, off), full)
    assert _spread(m, NoiseConfig.off()).max() < 1e-6


def test_reference_output_bias_noise_free_physical_not(db):
    ref, phy = model(db, "reference"), model(db, "physical")
    assert _spread(ref, NoiseConfig())[:, -1].max() == 0
    assert _spread(phy, NoiseConfig())[:, -1].max() > 0


def test_disturbance_zero_for_last_device_and_grows_with_k(db):
    m = model(db, "physical", k=1, cfg=NoiseConfig.off())
    keys = m.mapping.keys  # (2, P)
    d = m.draw(4000, torch.Generator().manual_seed(2),
               dataclasses.replace(NoiseConfig.off(), disturbance=True))
    mag = d.shift.abs().mean(0)[0]  # (2, P)
    assert torch.all(mag[keys == 0] == 0)
    low = mag[(keys >= 1) & (keys <= 3)].mean()
    high = mag[(keys >= 15) & (keys <= 23)].mean()
    assert 0 < low < high


def test_reference_four_sigma_rule_on_weights_only(db):
    m = model(db, "reference", k=1)
    keys = m.mapping.keys
    # key 54 has stored sigma 0: any non-zero draw there must become +60 uS on a 2-D weight
    m.mapping.keys = torch.where(keys > 0, torch.full_like(keys, 54), keys)
    d = m.draw(50, torch.Generator().manual_seed(3),
               dataclasses.replace(NoiseConfig.off(), disturbance=True))
    four = m.mapping.four_sigma
    sh = d.shift[:, 0]
    sel = sh[:, four & (m.mapping.keys > 0)]
    assert sel.numel() > 0 and torch.allclose(sel, torch.full_like(sel, 60e-6))
    bias_cols = ~four[0] & (m.mapping.keys[0] > 0)
    assert torch.all(sh[:, 0, bias_cols].abs() < 41e-6)


@pytest.mark.parametrize("mapping", ["physical", "reference"])
@pytest.mark.parametrize("shared", [False, True])
def test_fast_path_equals_device_by_device(db, mapping, shared):
    """apply (coefficients folded once per block) = the literal conductance computation."""
    m = model(db, mapping, k=2, cfg=dataclasses.replace(NoiseConfig(), stuck_hrs_rate=0.1,
                                                        stuck_lrs_rate=0.1))
    with torch.no_grad():  # network 1: an all-negative hidden bias (reference: single column)
        m.layers[0].bias[1].copy_(-torch.rand(8) - 0.1)
    theta = flat(m)
    for cfg in (m.noise_cfg, NoiseConfig.off(),
                dataclasses.replace(NoiseConfig.off(), stuck=True, disturbance=True)):
        d = m.draw(20, torch.Generator().manual_seed(4), cfg, shared=shared)
        w1, s1 = m.mapping.apply(theta, d)
        w2, s2 = m.mapping.apply_direct(theta, d)
        torch.testing.assert_close(w1, w2, rtol=1e-4, atol=1e-6)
        assert torch.equal(s1, s2)
    assert s1.any()
