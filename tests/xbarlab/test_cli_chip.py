"""`xbarlab infer` and `xbarlab repair` on the shipped simulated PMU station."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_cli_language import offences

from database.display import pct
from protocols.inference import load_inference
from protocols.repair import load_repair
from protocols.transfer import load_transfer
from training.export import plan_from_weights
from xbarlab.cli import cli, main

STATION = Path(__file__).resolve().parents[2] / "xbarlab" / "stations" / "sim-pmu.yaml"


@pytest.fixture(scope="module")
def transferred(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chip")
    rng = np.random.default_rng(0)
    plan = plan_from_weights([rng.normal(size=(3, 2)) * 4, rng.normal(size=(1, 3)) * 4],
                             [rng.normal(size=3), rng.normal(size=1)], g_min=100e-6,
                             g_max=400e-6, meta={"dataset": "moons"})
    path = plan.save(tmp / "plan.json")
    out = tmp / "t.h5"
    res = CliRunner().invoke(cli, ["transfer", "--plan", str(path), "--station", str(STATION),
                                   "-o", str(out), "--algorithm", "fast", "--no-progress"])
    assert res.exit_code == 0, res.output
    return tmp, out


def test_infer_from_a_transfer_measures_the_programmed_chip(transferred):
    tmp, t = transferred
    out = tmp / "i.h5"
    res = CliRunner().invoke(cli, ["infer", "--from", str(t), "--station", str(STATION),
                                   "-o", str(out), "--no-progress", "--explain"])
    assert res.exit_code == 0, res.output
    s = load_inference(out).summary
    assert f"test accuracy on the crossbars (column currents): {pct(s['accuracy'])}" in res.output
    assert "instrument time per inference: " in res.output and "line resistance" in res.output
    assert "next: `xbarlab repair --from" in res.output
    assert offences(res.output) == [], res.output   # display units, every number named
    # measured by the station's own SMUs through the emulated 4200 and 707B, as on a real
    # station: no simulated stand-in, its four SMUs time-multiplexed (the 3x6 tile 1 row + 3
    # columns a pass: 3 row groups, 2 column groups)
    assert "note:" not in res.output and "direct simulated rig" not in res.output
    assert (s["row_groups"], s["col_groups"]) == (3, 2) and "column groups per tile" in res.output
    assert s["per_inference_by_category_s"]["command"] > 0
    # the chip it measured is the one the transfer programmed: the read-back agrees with the
    # transfer's own read-back to within the read noise, not with a fresh chip
    rb = load_inference(out).tables["readback"].sort_values("device")
    g_t = load_transfer(t).g_read
    assert np.median(np.abs(rb.g.to_numpy() - g_t) / g_t) < 0.02


def test_repair_from_a_transfer_stays_in_its_budget_then_infer_from_the_repair(transferred):
    tmp, t = transferred
    out = tmp / "r.h5"
    res = CliRunner().invoke(cli, ["repair", "--from", str(t), "--station", str(STATION),
                                   "-o", str(out), "--budget", "10%", "--max-rounds", "3",
                                   "--calibrate", "affine", "--no-progress"])
    assert res.exit_code == 0, res.output
    r = load_repair(out)
    pulses_t = int(load_transfer(t).summary["pulses_total"])
    assert r.summary["budget"] == int(0.1 * pulses_t)
    assert r.summary["pulses"] <= r.summary["budget"]
    assert f"test accuracy on the crossbars after: {pct(r.summary['accuracy_after'])}" \
        in res.output
    assert "pulses relative to the transfer's" in res.output
    assert "next: `xbarlab infer --from" in res.output
    assert offences(res.output) == [], res.output
    cal = r.summary["calibration"]     # fitted, stored, shown
    assert "calibration, layer 0 (z' = gain z + offset, per output): x" in res.output
    res = CliRunner().invoke(cli, ["infer", "--from", str(out), "--station", str(STATION),
                                   "-o", str(tmp / "after.h5"), "--no-progress"])
    assert res.exit_code == 0, res.output
    # infer on the repaired chip applies the repair's calibration to what it measures
    from database.runs import list_runs

    used = list_runs(tmp / "after.h5")[-1].config["calibration"]
    assert used == {"gain": [cal[k]["gain"] for k in sorted(cal)],
                    "offset": [cal[k]["offset"] for k in sorted(cal)]}
    assert "periphery calibration" in res.output


def test_bad_budgets_and_sources_are_one_line_errors(transferred, tmp_path, capsys):
    _tmp, t = transferred
    for budget in ("lots", "-3", "2.5"):
        with pytest.raises(SystemExit) as e:
            main(["repair", "--from", str(t), "--station", str(STATION), "-o",
                  str(tmp_path / "x.h5"), "--budget", budget])
        assert e.value.code == 2
    plan = tmp_path / "p.json"
    load_transfer(t).plan.save(plan)
    with pytest.raises(SystemExit) as e:
        main(["repair", "--plan", str(plan), "--station", str(STATION), "-o",
              str(tmp_path / "y.h5"), "--budget", "20%"])
    assert e.value.code == 2
    assert "relative budget needs the transfer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["infer", "--from", str(t), "--plan", str(plan), "--station", str(STATION),
              "-o", str(tmp_path / "z.h5")])
    assert e.value.code == 2
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_a_reverified_transfer_counts_its_reverify_pulses_in_the_repair_budget(transferred):
    from xbarlab.chip_loop import prior_of, programmed

    tmp, _ = transferred
    out = tmp / "rv.h5"
    res = CliRunner().invoke(cli, ["transfer", "--plan", str(tmp / "plan.json"), "--station",
                                   str(STATION), "-o", str(out), "--no-progress",
                                   "--reverify", "2", "--reverify-threshold", "0.03"])
    assert res.exit_code == 0, res.output
    tr = load_transfer(out)
    s, rv = tr.summary, tr.tables["reverify"]
    assert s["reverify_pulses"] == rv.pulses.sum() > 0 and "re-verifying" in res.output
    assert s["pulses_total"] == tr.tables["devices"].pulses.sum() + rv.pulses.sum()
    prior = prior_of(programmed(out))
    # a repair budget of 20 % is of the transfer's pulses, its re-verify included
    assert prior.transfer_pulses == s["pulses_total"]
    assert prior.tunings[0].size == tr.plan.n_devices + len(rv)


def test_infer_interrupted_inside_a_list_sweep_resumes_to_the_uninterrupted_result(
        transferred, monkeypatch):
    """Interrupted inside one of the 4200's list sweeps (the instrument call in flight), the
    run keeps what it committed and the rerun ends with the same file contents as a run never
    interrupted (the SIGKILL tests of tests/reliability cover the kill itself)."""
    from instruments.k4200 import K4200

    tmp, t = transferred
    args = ["infer", "--from", str(t), "--station", str(STATION), "--no-progress"]
    ref, out = tmp / "i_ref.h5", tmp / "i_cut.h5"
    assert CliRunner().invoke(cli, args + ["-o", str(ref)]).exit_code == 0
    sweep, calls = K4200.list_sweep, []

    def cut(self, *a, **kw):
        calls.append(1)
        if len(calls) == 13:            # inside the third batch (six passes each)
            raise KeyboardInterrupt
        return sweep(self, *a, **kw)

    monkeypatch.setattr(K4200, "list_sweep", cut)
    assert CliRunner().invoke(cli, args + ["-o", str(out)]).exit_code != 0
    monkeypatch.setattr(K4200, "list_sweep", sweep)
    res = CliRunner().invoke(cli, args + ["-o", str(out)])
    assert res.exit_code == 0 and "resumed" in res.output, res.output
    a, b = load_inference(ref).tables, load_inference(out).tables
    for name in a:
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy(), err_msg=name)
