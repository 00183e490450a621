"""Bad numbers believed by training: a non-ideality DB or a checkpoint holding NaN, an unknown
config key or wrong tensor shapes is refused with one line (exit 2 in the CLI) before anything
is written."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from database.errors import SchemaError  # noqa: E402
from database.nonideality import load_nonideality, save_nonideality  # noqa: E402
from database.reference import import_reference  # noqa: E402
from training.errors import TrainingError  # noqa: E402
from training.train import TrainConfig, load_checkpoint, save_checkpoint, train  # noqa: E402


def run_cli(args, capsys) -> tuple[int, str]:
    from xbarlab.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error"), err
    assert "Traceback" not in err
    return lines[0]


# -- the non-ideality database -------------------------------------------------------------------

def _set_attr(group: str, name: str, value):
    def edit(f):
        (f[group] if group else f).attrs[name] = value
    return edit


def _set_data(name: str, index: int, value):
    def edit(f):
        data = f[name][()]
        data = data.astype(float) if np.issubdtype(data.dtype, np.integer) and \
            not np.isfinite(value) else data
        data[index] = value
        del f[name]
        f.create_dataset(name, data=data)
    return edit


#: (field named in the error, edit making the file impossible)
BAD_NUMBERS = {
    "stuck_lrs_mean-nan": ("stuck_lrs_mean", _set_attr("stuck", "stuck_lrs_mean", np.nan)),
    "stuck_lrs_std-nan": ("stuck_lrs_std", _set_attr("stuck", "stuck_lrs_std", np.nan)),
    "stuck_lrs_std-negative": ("stuck_lrs_std", _set_attr("stuck", "stuck_lrs_std", -1e-6)),
    "stuck_lrs_mean-negative": ("stuck_lrs_mean", _set_attr("stuck", "stuck_lrs_mean", -5e-4)),
    "stuck_hrs_range-nan": ("stuck_hrs_range", _set_attr("stuck", "hrs_range",
                                                          np.array([10e-6, np.nan]))),
    "stuck_hrs_range-reversed": ("stuck_hrs_range", _set_attr("stuck", "hrs_range",
                                                               np.array([100e-6, 10e-6]))),
    "g_max-inf": ("g_max", _set_attr("", "g_max", np.inf)),
    "offset_std_rel-negative": ("offset_std_rel", _set_attr("tuning", "offset_std_rel", -0.01)),
    "offset_mean_rel-below-minus-one": ("offset_mean_rel",
                                        _set_attr("tuning", "offset_mean_rel", -1.5)),
    "tuning_sigma_rel-negative": ("tuning_sigma_rel", _set_data("tuning/sigma_rel", 0, -0.1)),
    "tuning_levels-zero": ("tuning_levels", _set_data("tuning/levels", 0, 0.0)),
    "key_sigma-inf": ("disturbance_key_sigma", _set_data("disturbance/key_sigma", 5, np.inf)),
    "stuck_lrs_samples-5S": ("stuck_lrs_samples", _set_data("stuck/lrs_samples", 0, 5.0)),
    "disturbance_keys-huge": ("disturbance_keys", _set_data("disturbance/keys", 0, 2**40)),
}


@pytest.fixture(scope="module")
def good_db(tmp_path_factory):
    p = tmp_path_factory.mktemp("db") / "good.h5"
    save_nonideality(import_reference(), p)
    return p


def _bad_db(good_db, tmp_path, edit):
    p = tmp_path / "bad.h5"
    p.write_bytes(good_db.read_bytes())
    with h5py.File(p, "r+") as f:
        edit(f)
        # as a file written before attribute checksums existed: its numbers are still checked
        if "meta_crc32" in f.attrs:
            del f.attrs["meta_crc32"]
    return p


@pytest.mark.parametrize("case", sorted(BAD_NUMBERS))
def test_db_loader_refuses_impossible_numbers_naming_the_field(case, good_db, tmp_path):
    field, edit = BAD_NUMBERS[case]
    with pytest.raises(SchemaError) as ei:
        load_nonideality(_bad_db(good_db, tmp_path, edit))
    msg = str(ei.value)
    assert field in msg and "\n" not in msg, msg


def test_reference_db_and_its_saved_copy_are_valid(good_db):
    import_reference().validate()
    load_nonideality(good_db)


def test_train_refuses_nan_stuck_lrs_and_writes_no_model(good_db, tmp_path, capsys):
    db = _bad_db(good_db, tmp_path, BAD_NUMBERS["stuck_lrs_mean-nan"][1])
    model = tmp_path / "m.pt"
    code, err = run_cli(["train", "--db", db, "--out", model, "--epochs", "1",
                         "--device", "cpu"], capsys)
    assert code == 2 and "stuck_lrs_mean" in one_error_line(err)
    assert not model.exists()


def test_evaluate_refuses_nan_stuck_lrs_std(good_db, tmp_path, capsys, checkpoint):
    db = _bad_db(good_db, tmp_path, BAD_NUMBERS["stuck_lrs_std-nan"][1])
    code, err = run_cli(["evaluate", "--model", checkpoint, "--db", db, "--transfers", "5",
                         "--out", tmp_path / "ev", "--device", "cpu"], capsys)
    assert code == 2 and "stuck_lrs_std" in one_error_line(err)
    assert not (tmp_path / "ev").exists()


# -- checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from database.datasets import load_moons

    x, y = load_moons("train")
    res = train(TrainConfig(epochs=1, mapping="physical"), x, y, import_reference())
    return save_checkpoint(res, tmp_path_factory.mktemp("ckpt") / "good.pt")


def _edited(checkpoint, tmp_path, edit):
    payload = torch.load(checkpoint, weights_only=True)
    edit(payload)
    p = tmp_path / "bad.pt"
    torch.save(payload, p)
    return p


def _nan_weight(payload):
    payload["state_dict"]["layers.0.weight"][0, 3, 1] = float("nan")


BAD_CHECKPOINTS = {
    "nan-weight": (_nan_weight, "layers.0.weight"),
    "inf-bias": (lambda p: p["state_dict"]["layers.1.bias"].fill_(float("inf")), "layers.1.bias"),
    "unknown-config-key": (lambda p: p["config"].update(hidden_units=12), "hidden_units"),
    "wrong-shape": (lambda p: p["state_dict"].update({"layers.0.weight": torch.zeros(1, 8, 3)}),
                    "layers.0.weight"),
    "missing-tensor": (lambda p: p["state_dict"].pop("layers.1.bias"), "layers.1.bias"),
    "unexpected-tensor": (lambda p: p["state_dict"].update(extra=torch.zeros(2)), "extra"),
    "bad-config-value": (lambda p: p["config"].update(sizes=[2, -8, 1]), "sizes"),
    "config-not-a-mapping": (lambda p: p.update(config=[1, 2]), "config"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_load_checkpoint_refuses_bad_checkpoints_with_one_line(case, checkpoint, tmp_path):
    edit, needle = BAD_CHECKPOINTS[case]
    with pytest.raises(TrainingError) as ei:
        load_checkpoint(_edited(checkpoint, tmp_path, edit), "cpu")
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg, msg


def test_good_checkpoint_loads(checkpoint):
    model, cfg, _meta = load_checkpoint(checkpoint, "cpu")
    assert cfg.sizes == model.sizes == (2, 8, 1)


@pytest.mark.parametrize("case", ["nan-weight", "unknown-config-key", "wrong-shape"])
def test_evaluate_refuses_a_bad_checkpoint(case, checkpoint, tmp_path, capsys):
    bad = _edited(checkpoint, tmp_path, BAD_CHECKPOINTS[case][0])
    code, err = run_cli(["evaluate", "--model", bad, "--transfers", "5", "--out",
                         tmp_path / "ev", "--device", "cpu"], capsys)
    assert code == 2 and BAD_CHECKPOINTS[case][1] in one_error_line(err)
    assert not (tmp_path / "ev").exists()


def test_transfer_refuses_a_nan_checkpoint_before_writing_a_plan(checkpoint, tmp_path, capsys):
    from pathlib import Path

    bad = _edited(checkpoint, tmp_path, _nan_weight)
    station = Path(__file__).resolve().parents[2] / "xbarlab" / "stations" / "sim-pmu.yaml"
    plan, out = tmp_path / "plan.json", tmp_path / "t.h5"
    code, err = run_cli(["transfer", "--model", bad, "--station", station, "-o", out,
                         "--save-plan", plan, "--no-progress"], capsys)
    assert code == 2 and "layers.0.weight" in one_error_line(err)
    assert not plan.exists() and not out.exists()


def test_a_plan_file_with_nan_targets_is_refused(checkpoint, tmp_path):
    import json

    from protocols.errors import ProtocolError
    from protocols.plan import ConductancePlan
    from training.export import conductance_plan

    model, _cfg, _meta = load_checkpoint(checkpoint, "cpu")
    plan = conductance_plan(model, import_reference())
    d = plan.to_dict()
    d["target"][2] = float("nan")
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ProtocolError, match="target"):
        ConductancePlan.load(p)
