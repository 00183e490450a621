import numpy as np
import pytest

from database.datasets import load_moons
from database.errors import SchemaError
from database.nonideality import load_nonideality
from database.reference import import_reference


@pytest.fixture(scope="module")
def db():
    return import_reference()


def test_disturbance_matches_published_statistics(db):
    assert db.disturbance_delta.size == 17692
    keys = np.unique(db.disturbance_keys)
    assert keys.min() == 1 and keys.max() == 54
    assert db.disturbance_for(1).size == 1259 and db.disturbance_for(54).size == 1
    assert db.disturbance_for(0).size == 0  # k = 0 never disturbed
    assert np.abs(db.disturbance_delta).max() <= 40e-6
    # stored per-key stats (pre-cut) are indexed by key
    assert db.disturbance_key_sigma[1] == pytest.approx(8.22243339501961e-06)
    assert np.isnan(db.disturbance_key_sigma[55]) and np.isnan(db.disturbance_key_sigma[0])
    # sample std of key 1 is about 6.7 uS (smaller than the stored pre-cut sigma)
    assert db.disturbance_for(1).std() == pytest.approx(6.68e-6, rel=0.02)


def test_tuning_constants_in_si(db):
    assert db.sigma_rel(100e-6) == pytest.approx(0.006286)
    assert db.sigma_rel(500e-6) == pytest.approx(0.00379)
    assert db.offset_mean_rel == pytest.approx(-0.00589)
    assert db.offset_std_rel == pytest.approx(0.00339)
    assert (db.g_min, db.g_max) == (100e-6, 500e-6)


def test_stuck_model_and_samples(db):
    assert db.stuck_hrs_rate == db.stuck_lrs_rate == 0.005
    assert db.stuck_hrs_range == (10e-6, 100e-6)
    assert db.stuck_lrs_mean == 573e-6 and db.stuck_lrs_std == 99e-6
    assert np.all(db.stuck_hrs_samples < 100e-6) and db.stuck_hrs_samples.size == 62
    assert np.all(db.stuck_lrs_samples > 500e-6) and db.stuck_lrs_samples.size == 208
    assert "source" in db.provenance


def test_cli_import_reference_roundtrip(tmp_path):
    from click.testing import CliRunner

    from xbarlab.cli import cli

    out = tmp_path / "ref.h5"
    r = CliRunner().invoke(cli, ["db", "import-reference", "-o", str(out)])
    assert r.exit_code == 0, r.output
    back = load_nonideality(out)
    ref = import_reference()
    np.testing.assert_array_equal(back.disturbance_delta, ref.disturbance_delta)
    np.testing.assert_array_equal(back.disturbance_key_sigma, ref.disturbance_key_sigma)
    assert back.sigma_fit_slope == ref.sigma_fit_slope
    r = CliRunner().invoke(cli, ["db", "import-reference", "-o", str(out)])
    assert r.exit_code != 0  # refuses to overwrite without --force
    r = CliRunner().invoke(cli, ["db", "import-reference", "-o", str(out), "--force"])
    assert r.exit_code == 0, r.output


def test_moons_shapes_and_class_balance():
    x, y = load_moons("train")
    assert x.shape == (875, 2) and y.shape == (875,) and x.dtype == np.float32
    assert y.mean() == pytest.approx(0.5006, abs=1e-3)
    xt, yt = load_moons("test")
    assert xt.shape == (200, 2) and yt.mean() == pytest.approx(0.445)
    assert load_moons("validation")[0].shape == (125, 2)
    assert 0.0 <= x.min() and x.max() <= 1.0
    with pytest.raises(SchemaError):
        load_moons("nope")


@pytest.mark.parametrize("name", ["moons", "digits"])
def test_repair_data_roles_never_contain_a_test_point(name):
    # the published half-moons test set lies inside its training and validation sets: a repair
    # that fitted or judged on those points would be graded on what it was fitted to
    from database.datasets import chip_in_the_loop_sets

    sets = chip_in_the_loop_sets(name)
    test = {row.tobytes() for row in sets["test"][0]}
    refit = {row.tobytes() for row in sets["refit"][0]}
    repair = {row.tobytes() for row in sets["repair"][0]}
    assert not (refit & test) and not (repair & test) and not (refit & repair)
    assert len(sets["refit"][0]) > 3 * len(sets["repair"][0]) // 2 > 0


def test_fresh_half_moons_points_follow_the_published_recipe():
    # the recipe reproduces the 1,000 published points; the shipped repair points are its draw
    # with another random state, held out of every training
    from database.datasets import MOONS_REPAIR, chip_in_the_loop_sets, load_moons, moons_points

    pytest.importorskip("sklearn")
    x, y = moons_points(1000, 42)
    published = {tuple(np.round(r, 6)) for s in ("train", "test", "validation")
                 for r in load_moons(s)[0].astype(float)}
    assert {tuple(np.round(r, 6)) for r in x.astype(float)} == published
    fx, fy = moons_points(*MOONS_REPAIR)
    sx, sy = load_moons("repair")
    assert np.array_equal(sx, fx) and np.array_equal(sy, fy) and len(sy) == MOONS_REPAIR[0]
    repair = {r.tobytes() for r in chip_in_the_loop_sets("moons")["repair"][0]}
    assert {r.tobytes() for r in sx} <= repair and not ({r.tobytes() for r in sx} & {
        r.tobytes() for s in ("train", "test", "validation") for r in load_moons(s)[0]})
