"""`xbarlab transfer --plan` on the shipped simulated PMU station (no torch involved)."""

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from protocols.transfer import load_transfer
from training.export import plan_from_weights
from xbarlab.cli import cli

STATION = Path(__file__).resolve().parents[2] / "xbarlab" / "stations" / "sim-pmu.yaml"


def _plan(tmp_path):
    rng = np.random.default_rng(0)
    plan = plan_from_weights([rng.normal(size=(3, 2)), rng.normal(size=(1, 3))],
                             [rng.normal(size=3), rng.normal(size=1)], g_min=100e-6,
                             g_max=400e-6, meta={"dataset": "moons"})
    return plan, plan.save(tmp_path / "plan.json")


def test_transfer_a_plan_onto_the_sim_station(tmp_path):
    plan, path = _plan(tmp_path)
    out = tmp_path / "t.h5"
    res = CliRunner().invoke(cli, ["transfer", "--plan", str(path), "--station", str(STATION),
                                   "-o", str(out), "--algorithm", "fast", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "onto xbar0, xbar1" in res.output and "test accuracy" in res.output
    t = load_transfer(out)
    assert t.plan.n_devices == plan.n_devices == 26 and t.summary["points"] == 200
    assert t.tables["devices"].tile.tolist() == plan.tile.tolist()
    assert f"{100 * t.summary['accuracy']:.1f} % on the crossbar" in res.output


def test_transfer_needs_one_network_and_enough_crossbars(tmp_path):
    _plan_obj, path = _plan(tmp_path)
    r = CliRunner().invoke(cli, ["transfer", "--station", str(STATION), "-o",
                                 str(tmp_path / "x.h5")])
    assert r.exit_code != 0 and "exactly one of --model and --plan" in r.output
    r = CliRunner().invoke(cli, ["transfer", "--plan", str(path), "--station", str(STATION),
                                 "--crossbar", "xbar0", "-o", str(tmp_path / "y.h5")])
    assert r.exit_code != 0 and "2 tiles" in str(r.exception)
