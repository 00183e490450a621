"""`xbarlab.calibrate`: replay campaigns, compare databases, fit, chip-model files, CLI."""

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from database.nonideality import save_nonideality
from simulator.config import CrossbarConfig, DeviceParams
from simulator.errors import SimulatorError
from xbarlab import calibrate as cal

# small replays: 4 x 4 crossbars (k up to 15), fast station, short settle; the start point of
# the fit is explicit so the test does not depend on the shipped defaults
SMALL = CrossbarConfig(rows=4, cols=4, device=DeviceParams(
    v0_reset=0.15, sigma_vth=0.05, volatile_cap=0.01, sigma_volatile=0.0, rtn_count=8, rtn_amplitude=0.01, rtn_sigma=1.0,
    rtn_tau_min=1e4,
    rtn_tau_max=1e7, rtn_stress_time=4e4))
FAST = cal.Setup(round_trip=3e-3, settle_s=60.0, levels=2, tuning_devices=10, tuning_repeats=3,
                 disturbance_crossbars=4)


def _truth() -> CrossbarConfig:
    dev = SMALL.device.model_copy(update={"volatile_cap": 0.02, "rtn_amplitude": 0.02})
    return SMALL.model_copy(update={"device": DeviceParams.model_validate(dev.model_dump())})


@pytest.fixture(scope="module")
def truth_db(tmp_path_factory):
    """A database measured on a simulated chip with known, non-default parameters (its own
    seed, so the fit below sees other devices than the ones that made the target)."""
    d = tmp_path_factory.mktemp("truth")
    setup = FAST.model_copy(update={"seed": 7})
    return cal.simulate_db(_truth(), setup, d, cal.tuning_levels(None, setup))


def test_calibration_recovers_known_parameters(truth_db):
    truth = _truth().device
    setup = FAST.model_copy(update={"params": ("volatile_cap", "rtn_amplitude"),
                                    "max_evals": 6})
    res = cal.calibrate(truth_db, setup, start=SMALL)
    # stated tolerances: +-30 % on each, from a start at half of each true value
    assert SMALL.device.volatile_cap == truth.volatile_cap / 2
    assert SMALL.device.rtn_amplitude == truth.rtn_amplitude / 2
    assert res.params["volatile_cap"] == pytest.approx(truth.volatile_cap, rel=0.3)
    assert res.params["rtn_amplitude"] == pytest.approx(truth.rtn_amplitude, rel=0.3)
    assert res.cost < res.start_cost and res.evals <= 6
    assert res.config.device.volatile_cap == res.params["volatile_cap"]
    # stuck rates are taken from the target as they are
    assert res.config.stuck_hrs_rate == truth_db.stuck_hrs_rate


def test_identical_databases_have_zero_residuals_and_meet_every_goal(truth_db):
    lv = cal.tuning_levels(truth_db, FAST)
    r = cal.residuals(truth_db, truth_db, lv)
    assert r.size > 10 and np.allclose(r, 0, atol=0.02 / cal.TOL_KS)
    fid = cal.fidelity(truth_db, truth_db, lv)
    assert all(row["ks"] == 0 for row in fid["disturbance"] if row["n_target"])
    assert fid["tuning"]["sigma_goal"] and fid["stuck"]["goal"]
    text = cal.format_fidelity(fid)
    assert "KS" in text and "0.000" in text


def test_fidelity_flags_a_wider_disturbance(truth_db, tmp_path):
    wide = SMALL.model_copy(update={"device": SMALL.device.model_copy(
        update={"rtn_amplitude": 0.15})})
    small = FAST.model_copy(update={"seed": 7, "tuning_devices": 2, "tuning_repeats": 1})
    sim = cal.simulate_db(wide, small, tmp_path, cal.tuning_levels(None, FAST))
    fid = cal.fidelity(sim, truth_db, cal.tuning_levels(truth_db, FAST))
    k1 = fid["disturbance"][0]
    assert k1["sim"]["sd"] > 1.5 * k1["target"]["sd"] and k1["ks"] > 0.1


def test_chip_model_round_trip_and_bad_files(tmp_path):
    cfg = CrossbarConfig(stuck_hrs_rate=0.02, device=DeviceParams(rtn_amplitude=0.02))
    p = cal.save_chip_model(tmp_path / "m.yaml", cfg, {"fitted": {"x": 1.0}})
    assert cal.load_chip_model(p) == cfg
    assert yaml.safe_load(p.read_text())["fit"]["fitted"]["x"] == 1.0
    (tmp_path / "bad.yaml").write_text("format: something-else\n")
    with pytest.raises(SimulatorError, match="not a chip model"):
        cal.load_chip_model(tmp_path / "bad.yaml")
    (tmp_path / "field.yaml").write_text(f"format: {cal.MODEL_FORMAT}\n"
                                         "crossbar: {device: {v0_reset: -1}}\n")
    with pytest.raises(SimulatorError, match="crossbar.device.v0_reset"):
        cal.load_chip_model(tmp_path / "field.yaml")
    with pytest.raises(SimulatorError, match="not found"):
        cal.load_chip_model(tmp_path / "none.yaml")


def test_cli_calibrate_writes_model_and_table_and_stations_use_it(tmp_path, truth_db):
    from xbarlab.cli import cli
    from xbarlab.station import load_station

    db = save_nonideality(truth_db, tmp_path / "target.h5")
    start = cal.save_chip_model(tmp_path / "start.yaml", SMALL)
    out = tmp_path / "model.yaml"
    args = ["sim", "calibrate", "--db", str(db), "-o", str(out), "--start", str(start),
            "--params", "rtn_amplitude", "--max-evals", "1", "--tuning-devices", "2",
            "--disturbance-crossbars", "1", "--round-trip", "3e-3", "--settle", "5"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    table = (tmp_path / "model.fidelity.txt").read_text()
    assert "KS" in table and "Tuning sigma" in table
    model = cal.load_chip_model(out)
    assert model.rows == 4 and model.stuck_hrs_rate == truth_db.stuck_hrs_rate
    fit = yaml.safe_load(out.read_text())["fit"]
    assert fit["setup"]["round_trip"] == 3e-3 and fit["evaluations"] == 1
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "exists" in str(again.exception or again.output)
    bad = CliRunner().invoke(cli, [*args, "--force", "--params", "nope"])
    assert bad.exit_code != 0

    # a station built from a model: many stuck devices when the model says so
    m = cal.save_chip_model(tmp_path / "stuck.yaml", CrossbarConfig(stuck_hrs_rate=0.5))
    st_file = tmp_path / "st.yaml"
    raw = yaml.safe_load(open("xbarlab/stations/sim-pmu.yaml").read())
    raw["sim"]["model"] = "stuck.yaml"
    st_file.write_text(yaml.safe_dump(raw))
    st = load_station(st_file)
    assert (st.chip["xbar0"].stuck == 1).mean() > 0.3
    assert m.exists()
    raw["sim"]["model"] = "missing.yaml"
    st_file.write_text(yaml.safe_dump(raw))
    from xbarlab.errors import StationError
    with pytest.raises(StationError, match="sim.model"):
        load_station(st_file)
