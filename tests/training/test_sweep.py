"""The sweep machinery: spec validation, expansion and keys, store, resume, table, plots, CLI.

The point functions here are toys that return made-up metrics derived from the parameters; they
test the machinery (what runs, what is stored, what is skipped), never the science.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from training.sweep import (
    METRICS,
    ResultStore,
    SweepError,
    expand,
    load_spec,
    run_sweep,
    table_rows,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def toy_metrics(params: dict) -> dict:
    """Deterministic fake metrics: robustness falls with the stuck rate, HA above regular."""
    rate = params["stuck_rate"] or 0.0
    base = 1.0 - 5 * rate - 0.01 * params["seed"]
    out = {}
    for kind, bonus in (("hardware_aware", 0.0), ("regular", -0.3)):
        out[kind] = {"share_correct_95": max(0.0, base + bonus), "transfer_acc_mean": 0.9,
                     "transfer_acc_p05": 0.8, "clean_acc": 0.95, "steps": 100, "train_s": 0.01}
    return {"kinds": out}


def counting_point(params: dict, calls_dir: str) -> dict:
    """Toy point that leaves one marker file per invocation (works across processes)."""
    key = "_".join(f"{params[k]}" for k in ("dataset", "stuck_rate", "seed"))
    Path(calls_dir, f"{key}@{os.getpid()}@{time.monotonic_ns()}").touch()
    return toy_metrics(params)


class Interrupt(BaseException):
    """Stands in for Ctrl-C inside a point (a BaseException, like KeyboardInterrupt)."""


def write_spec(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


GRID = """
    name: toy
    base: {dataset: moons, transfers: 10}
    grid:
      stuck_rate: [0.0, 0.02, 0.04]
      seed: [0, 1]
"""


def calls(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# -- spec ----------------------------------------------------------------------------------------


def test_grid_expands_to_cartesian_product_with_stable_keys(tmp_path):
    spec = load_spec(write_spec(tmp_path, GRID))
    pts = expand(spec)
    assert len(pts) == 6
    assert {(p.params["stuck_rate"], p.params["seed"]) for p in pts} == {
        (r, s) for r in (0.0, 0.02, 0.04) for s in (0, 1)}
    # a total stuck rate splits evenly into x (HRS) and y (LRS)
    p = next(p for p in pts if p.params["stuck_rate"] == 0.04)
    assert p.params["stuck_hrs_rate"] == p.params["stuck_lrs_rate"] == 0.02
    # keys are stable across loads and unique per point
    again = expand(load_spec(write_spec(tmp_path, GRID, "again.yaml")))
    assert [p.key for p in pts] == [p.key for p in again]
    assert len({p.key for p in pts}) == 6


def test_same_point_written_differently_has_same_key(tmp_path):
    a = expand(load_spec(write_spec(tmp_path, """
        base: {stuck_rate: 0.02, seed: 3}
    """, "a.yaml")))
    b = expand(load_spec(write_spec(tmp_path, """
        points:
          - {stuck_hrs_rate: 0.01, stuck_lrs_rate: 0.01, seed: 3, transfers: 1000}
    """, "b.yaml")))
    assert len(a) == len(b) == 1 and a[0].key == b[0].key
    c = expand(load_spec(write_spec(tmp_path, "base: {stuck_rate: 0.02, seed: 4}\n", "c.yaml")))
    assert c[0].key != a[0].key


def test_points_cross_grid_and_override_base(tmp_path):
    spec = load_spec(write_spec(tmp_path, """
        base: {stuck_hrs_rate: 0.001, stuck_lrs_rate: 0.001, epochs: 50}
        points:
          - {dataset: moons, epochs: 300}
          - {dataset: digits, hidden: [32]}
        grid:
          stuck_rate: [0.0, 0.05]
    """))
    pts = expand(spec)
    assert len(pts) == 4
    got = {(p.params["dataset"], p.params["stuck_rate"], p.params["epochs"]) for p in pts}
    assert got == {("moons", 0.0, 300), ("moons", 0.05, 300), ("digits", 0.0, 50),
                   ("digits", 0.05, 50)}
    assert all(p.params["stuck_hrs_rate"] == p.params["stuck_rate"] / 2 for p in pts)
    assert [p.params["hidden"] for p in pts if p.params["dataset"] == "digits"] == [[32], [32]]


@pytest.mark.parametrize("text, needle", [
    ("grid: {stuck_rat: [0.1]}\n", "unknown parameter 'stuck_rat'"),
    ("grid: {stuck_rate: [1.5]}\n", "stuck_rate"),
    ("grid: {dataset: [mnist]}\n", "dataset"),
    ("grid: {seed: []}\n", "grid axis 'seed' has no values"),
    ("base: {stuck_rate: 0.1, stuck_hrs_rate: 0.1}\n", "either stuck_rate"),
    ("points: [{tile_size: 0}]\n", "tile_size"),
    ("points: [{seed: 1}]\ngrid: {seed: [1, 2]}\n", "also a grid axis"),
    ("kinds: []\n", "kinds"),
    ("- just a list\n", "a sweep file is a mapping"),
    ("grid: {seed: [1, 2\n", "not valid YAML"),
    ("base: {db: missing.h5}\n", "missing.h5"),
])
def test_bad_sweep_files_fail_with_one_line_naming_the_field(tmp_path, text, needle):
    with pytest.raises(SweepError) as ei:
        expand(load_spec(write_spec(tmp_path, text)))
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg


def test_unset_settings_resolve_to_the_dataset_defaults_and_into_the_key(tmp_path):
    from training.defaults import DATASETS

    pts = expand(load_spec(write_spec(tmp_path, "points: [{dataset: moons}, {dataset: digits}]\n")))
    for p in pts:
        d = DATASETS[p.params["dataset"]]
        assert (p.params["hidden"], p.params["activation"], p.params["lr"], p.params["epochs"],
                p.params["batch_size"]) == (list(d.hidden), d.activation, d.lr, d.epochs,
                                            d.batch_size)
        assert (p.params["tile_size"], p.params["share_bias"], p.params["mapping"]) == \
            (8, True, "physical")
    digits = pts[1].params
    assert (digits["activation"], digits["lr"], digits["hidden"]) == ("relu", 0.01, [32])
    # the defaults written out are the same point; another value is another point
    same = expand(load_spec(write_spec(tmp_path, """
        points: [{dataset: digits, activation: relu, lr: 0.01, hidden: [32], epochs: 300}]
    """, "same.yaml")))
    other = expand(load_spec(write_spec(tmp_path, """
        points: [{dataset: digits, activation: sigmoid}]
    """, "other.yaml")))
    assert same[0].key == pts[1].key and other[0].key != pts[1].key


def test_run_point_trains_what_the_point_says(tmp_path, monkeypatch):
    """The resolved settings reach the training configuration (no training run here)."""
    pytest.importorskip("torch")
    import training.train
    from training.sweep import run_point

    seen = []

    class Stop(Exception):
        pass

    def capture(cfg, *args, **kw):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(training.train, "train", capture)
    (p,) = expand(load_spec(write_spec(tmp_path, "base: {dataset: moons, tile_size: 4, "
                                                 "activation: tanh, epochs: 7}\n")))
    with pytest.raises(Stop):
        run_point({**p.params, "kinds": ["hardware_aware"]})
    cfg = seen[0]
    assert (cfg.sizes, cfg.activation, cfg.lr, cfg.epochs, cfg.tile_rows, cfg.mapping) == \
        ((2, 8, 1), "tanh", 0.1, 7, 4, "physical")


def test_db_path_resolved_against_sweep_file_and_content_keyed(tmp_path):
    (tmp_path / "sub").mkdir()
    db = tmp_path / "sub" / "ni.h5"
    db.write_bytes(b"first")
    spec_path = write_spec(tmp_path / "sub", "base: {db: ni.h5}\n")
    (p1,) = expand(load_spec(spec_path))
    assert p1.params["db"] == str(db)
    db.write_bytes(b"rebuilt")  # a different database: the old results must not be reused
    (p2,) = expand(load_spec(spec_path))
    assert p2.key != p1.key


def test_points_are_keyed_by_their_data(tmp_path, monkeypatch):
    """Results trained or evaluated on other data (a changed split) are never reused."""
    import database.datasets as datasets

    spec = load_spec(write_spec(tmp_path, "base: {dataset: moons}\n"))
    (p1,) = expand(spec)
    sets = datasets.load_dataset("moons")
    x, y = sets["train"]
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name: {**sets, "train": (x[:-1], y[:-1])})
    (p2,) = expand(spec)
    assert p2.key != p1.key and p2.params == p1.params


def test_shipped_example_sweeps_are_valid():
    for path in sorted((REPO / "xbarlab" / "sweeps").glob("*.yaml")):
        pts = expand(load_spec(path))
        assert pts, path


def test_spec_and_store_import_without_torch_pandas_or_ray():
    code = ("import sys, training.sweep, xbarlab.commands.sweep; "
            "print(sorted(m for m in ('torch', 'pandas', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- store ---------------------------------------------------------------------------------------


def test_store_ignores_torn_last_line_and_keeps_appending(tmp_path):
    store = ResultStore(tmp_path)
    store.append({"key": "a", "kinds": {}})
    with open(store.path, "ab") as f:
        f.write(b'{"key": "b", "kin')  # the writer died mid-line
    assert store.done_keys() == {"a"}
    store.append({"key": "c", "kinds": {}})
    assert store.done_keys() == {"a", "c"}


# -- running and resuming --------------------------------------------------------------------


def test_sweep_writes_tidy_table_and_plots(tmp_path):
    import pandas as pd

    spec = load_spec(write_spec(tmp_path, GRID))
    summary = run_sweep(spec, tmp_path / "out", point_fn=toy_metrics)
    assert (summary.total, summary.already_done, summary.ran) == (6, 0, 6)
    df = pd.read_csv(summary.table)
    assert len(df) == 12  # 6 points x 2 network kinds
    for col in ("key", "dataset", "stuck_rate", "stuck_hrs_rate", "stuck_lrs_rate", "tile_size",
                "tuning_sigma_scale", "disturbance_scale", "mapping", "seed", "epochs",
                "transfers", "kind", "point_wall_s", *METRICS):
        assert col in df.columns, col
    row = df[(df.kind == "regular") & (df.stuck_rate == 0.04) & (df.seed == 1)].iloc[0]
    assert row.share_correct_95 == pytest.approx(1.0 - 0.2 - 0.01 - 0.3)
    assert [p.name for p in summary.plots] == ["robustness_vs_stuck_rate.png",
                                               "transfer_acc_mean_vs_stuck_rate.png"]
    assert summary.plots[0].stat().st_size > 5000


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    """Interrupt after two points, re-run: the two stored points are never computed again."""
    spec = load_spec(write_spec(tmp_path, GRID))
    out = tmp_path / "out"
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    n = {"calls": 0}

    def stops_on_third(params):
        n["calls"] += 1
        if n["calls"] == 3:
            raise Interrupt
        return counting_point(params, str(calls_dir))

    with pytest.raises(Interrupt):
        run_sweep(spec, out, point_fn=stops_on_third, plots=False)
    first = calls(calls_dir)
    assert len(first) == 2
    assert len(ResultStore(out).done_keys()) == 2
    done_before = {r["key"]: r["finished_at"] for r in ResultStore(out).records()}

    summary = run_sweep(spec, out, point_fn=functools.partial(counting_point,
                                                              calls_dir=str(calls_dir)))
    assert (summary.already_done, summary.ran) == (2, 4)
    second = [c for c in calls(calls_dir) if c not in first]
    assert len(second) == 4
    # no parameter set was computed twice, and the stored records were not rewritten
    assert len({c.split("@")[0] for c in first + second}) == 6
    recs = ResultStore(out).records()
    assert {r["key"]: r["finished_at"] for r in recs if r["key"] in done_before} == done_before

    # a third run has nothing left to do
    summary = run_sweep(spec, out, point_fn=functools.partial(counting_point,
                                                              calls_dir=str(calls_dir)))
    assert (summary.already_done, summary.ran) == (6, 0)
    assert len(calls(calls_dir)) == 6


def test_killed_sweep_process_resumes_without_recomputing(tmp_path):
    """SIGKILL a sweep in a separate process mid-run, then finish it here."""
    spec_path = write_spec(tmp_path, GRID)
    out = tmp_path / "out"
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(REPO)!r}, {str(HERE)!r}]
        from test_sweep import counting_point
        from training.sweep import load_spec, run_sweep

        def slow(params):
            time.sleep(0.3)
            return counting_point(params, {str(calls_dir)!r})

        run_sweep(load_spec({str(spec_path)!r}), {str(out)!r}, point_fn=slow, plots=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path)
    store = ResultStore(out)
    try:
        deadline = time.monotonic() + 60
        while len(store.done_keys()) < 2:
            assert proc.poll() is None, "driver ended before it could be killed"
            assert time.monotonic() < deadline, "driver made no progress"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    stored = store.done_keys()
    assert 2 <= len(stored) < 6
    before = calls(calls_dir)

    summary = run_sweep(load_spec(spec_path), out,
                        point_fn=functools.partial(counting_point, calls_dir=str(calls_dir)),
                        plots=False)
    assert summary.already_done == len(stored)
    assert summary.ran == 6 - len(stored)
    new = [c for c in calls(calls_dir) if c not in before]
    assert len(new) == 6 - len(stored)
    # the points finished before the kill were not recomputed
    stored_ids = {"_".join(str(r["params"][k]) for k in ("dataset", "stuck_rate", "seed"))
                  for r in ResultStore(out).records() if r["key"] in stored}
    assert not stored_ids & {c.split("@")[0] for c in new}


def test_point_function_is_told_which_kinds_to_train(tmp_path):
    seen = []

    def only_ha(params):
        seen.append(params["kinds"])
        return {"kinds": {"hardware_aware": toy_metrics(params)["kinds"]["hardware_aware"]}}

    spec = load_spec(write_spec(tmp_path, "kinds: [hardware_aware]\n"))
    summary = run_sweep(spec, tmp_path / "out", point_fn=only_ha, plots=False)
    assert seen == [["hardware_aware"]] and summary.ran == 1
    (rec,) = ResultStore(tmp_path / "out").records()
    assert "kinds" not in rec["params"] and list(rec["kinds"]) == ["hardware_aware"]


def test_process_pool_workers_run_every_point_once(tmp_path):
    spec = load_spec(write_spec(tmp_path, GRID))
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    summary = run_sweep(spec, tmp_path / "out", workers=2, plots=False,
                        point_fn=functools.partial(counting_point, calls_dir=str(calls_dir)))
    assert summary.ran == 6
    made = calls(calls_dir)
    assert len({c.split("@")[0] for c in made}) == 6 and len(made) == 6
    # the points ran in worker processes, not in this one
    assert str(os.getpid()) not in {c.split("@")[1] for c in made}


def slow_on_seed_1(params: dict) -> dict:
    if params["seed"] == 1:
        time.sleep(120)
    return toy_metrics(params)


def test_stopping_a_pool_sweep_stops_its_running_workers(tmp_path):
    """The consumer stops after the first outcome: the workers busy with 2-minute points are
    stopped at once, not waited for."""
    import multiprocessing

    from training.sweep.local import iter_local

    units = expand(load_spec(write_spec(tmp_path, GRID)))
    t0 = time.monotonic()
    outcomes = iter_local(units, slow_on_seed_1, workers=2)
    first = next(outcomes)
    assert first.error is None and first.point.params["seed"] == 0
    outcomes.close()
    deadline = time.monotonic() + 20
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    assert time.monotonic() - t0 < 60


def failing_on_seed_1(params: dict) -> dict:
    if params["seed"] == 1:
        raise RuntimeError("diverged")
    return toy_metrics(params)


def test_failed_points_are_reported_not_stored_and_retried(tmp_path):
    spec = load_spec(write_spec(tmp_path, GRID))
    out = tmp_path / "out"
    summary = run_sweep(spec, out, point_fn=failing_on_seed_1, plots=False)
    assert summary.ran == 3 and len(summary.failed) == 3
    assert all("RuntimeError: diverged" in err for _, err in summary.failed)
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(fails) == 3 and "diverged" in fails[0]["trace"]
    summary = run_sweep(spec, out, point_fn=toy_metrics, plots=False)
    assert (summary.already_done, summary.ran, summary.failed) == (3, 3, [])


def test_point_result_missing_metrics_is_a_failure(tmp_path):
    spec = load_spec(write_spec(tmp_path, "base: {seed: 0}\n"))
    summary = run_sweep(spec, tmp_path / "out", plots=False,
                        point_fn=lambda p: {"kinds": {"hardware_aware": {"clean_acc": 1.0}}})
    assert summary.ran == 0 and "lacks" in summary.failed[0][1]


def test_table_rows_fill_unset_params_from_point_function():
    rec = {"key": "k", "params": {"stuck_rate": None, "hidden": [64, 32]},
           "kinds": {"regular": {"clean_acc": 1.0}},
           "extra": {"params_used": {"stuck_rate": 0.01}}}
    (row,) = table_rows([rec])
    assert row["stuck_rate"] == 0.01 and row["hidden"] == "64-32" and row["kind"] == "regular"


def test_ray_backend_without_ray_installed_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    spec = load_spec(write_spec(tmp_path, GRID))
    with pytest.raises(SweepError, match=r"needs Ray.*xbarlab\[ray\]"):
        run_sweep(spec, tmp_path / "out", point_fn=toy_metrics, use_ray=True, ray_address="auto")


# -- CLI ------------------------------------------------------------------------------------


def test_cli_rejects_bad_file_with_exit_2(tmp_path):
    bad = write_spec(tmp_path, "grid: {stuck_rat: [0.1]}\n")
    out = subprocess.run([sys.executable, "-m", "xbarlab", "sweep", str(bad), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert "stuck_rat" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_runs_a_sweep_with_an_injected_point_function(tmp_path):
    from click.testing import CliRunner

    from xbarlab.cli import cli

    spec = write_spec(tmp_path, GRID)
    res = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(tmp_path / "o"),
                                   "--point-fn", "test_sweep:toy_metrics"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "results.csv").exists()
    assert "6 of 6 points" in res.output


# -- the real point function (short trainings; skipped without torch) -----------------------


def test_run_point_trains_and_evaluates_both_networks():
    pytest.importorskip("torch")
    from training.sweep import run_point

    def point(**kw):
        spec = {"base": {"epochs": 15, "transfers": 100, "seed": 3, **kw}}
        from training.sweep import SweepSpec

        (p,) = expand(SweepSpec.model_validate(spec))
        return run_point({**p.params, "kinds": ["hardware_aware", "regular"]})

    clean = point(stuck_rate=0.0, tile_size=4)
    for kind in ("hardware_aware", "regular"):
        m = clean["kinds"][kind]
        assert set(METRICS) <= set(m)
        assert 0.0 <= m["share_correct_95"] <= 1.0 and m["steps"] == 15 * 4
        assert m["transfer_acc_p05"] <= m["transfer_acc_mean"] + 1e-9
    assert clean["params_used"]["stuck_rate"] == 0.0
    # the point's stuck rate reaches the noise model: 40 % stuck devices wreck the transfers
    wrecked = point(stuck_rate=0.4, tile_size=4)
    for kind in ("hardware_aware", "regular"):
        assert (wrecked["kinds"][kind]["transfer_acc_mean"]
                < clean["kinds"][kind]["transfer_acc_mean"] - 0.1)
    # same seed, same numbers
    again = point(stuck_rate=0.4, tile_size=4)
    assert again["kinds"]["regular"]["share_correct_95"] == \
        wrecked["kinds"]["regular"]["share_correct_95"]


def test_run_point_digits_uses_the_digits_network():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from training.sweep import SweepSpec, run_point

    (p,) = expand(SweepSpec.model_validate(
        {"base": {"dataset": "digits", "epochs": 3, "transfers": 20, "hidden": [16]}}))
    res = run_point({**p.params, "kinds": ["hardware_aware"]})
    m = res["kinds"]["hardware_aware"]
    assert list(res["kinds"]) == ["hardware_aware"]
    assert m["clean_acc"] > 0.3  # well above chance (0.1) after 3 epochs
    assert m["steps"] == 3 * 4  # 1,011 training images (the validation set held out) / 256
