"""No network that may be repaired has been trained on its repair set.

The repair judges every correction and its stopping rule on the repair set
(`database.datasets.chip_in_the_loop_sets`); a network trained on those points scores (close to)
100 % on them and the repair sees nothing left to fix. Each place that trains a network a
repair may later run on (the demo, bench/repair.py, `xbarlab train`) is run up to its call of
the trainer, and the rows it would train on are compared with the repair set.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from database.datasets import chip_in_the_loop_sets  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class _Trained(Exception):
    """Raised by the stand-in trainer once it has seen its training data."""


def _capture(monkeypatch, name: str) -> list[np.ndarray]:
    """Replace training.train.<name> by one that records its x and stops the caller."""
    import training.train

    seen: list[np.ndarray] = []

    def fake(cfg, x, y, db=None, **kw):
        seen.append(np.asarray(x))
        raise _Trained

    monkeypatch.setattr(training.train, name, fake)
    return seen


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.ascontiguousarray(x, dtype=np.float32)}


def _assert_held_out(trained_on: list[np.ndarray], dataset: str) -> None:
    assert trained_on, "the trainer was never called"
    repair = _rows(chip_in_the_loop_sets(dataset)["repair"][0])
    for x in trained_on:
        leaked = len(_rows(x) & repair)
        assert leaked == 0, f"{leaked} of {len(repair)} repair-set points trained on"


def test_demo_trains_on_the_published_moons_set_and_never_on_the_repair_set(monkeypatch,
                                                                            tmp_path):
    import database.nonideality
    from database.datasets import load_moons
    from xbarlab.demo import QUICK, step_train

    seen = _capture(monkeypatch, "train_with_bar")
    monkeypatch.setattr(database.nonideality, "load_nonideality", lambda path: None)
    with pytest.raises(_Trained):
        step_train(tmp_path, QUICK, 0, progress=False)
    _assert_held_out(seen, "moons")
    # the published claim is judged on networks trained as in the paper: its 875 points
    assert np.array_equal(seen[0], load_moons("train")[0])


@pytest.mark.parametrize("dataset", ["moons", "digits"])
def test_bench_repair_trains_without_the_repair_set(dataset, monkeypatch, tmp_path):
    if dataset == "digits":
        pytest.importorskip("sklearn")
    from threadpoolctl import threadpool_limits

    spec = importlib.util.spec_from_file_location("bench_repair", ROOT / "bench" / "repair.py")
    bench = importlib.util.module_from_spec(spec)
    with threadpool_limits(limits=None):   # the bench limits BLAS to one thread on import
        spec.loader.exec_module(bench)
    seen = _capture(monkeypatch, "train")
    with pytest.raises(_Trained):
        bench.train_or_load(tmp_path, dataset, quick=True)
    _assert_held_out(seen, dataset)


@pytest.mark.parametrize("dataset", ["moons", "digits"])
def test_cli_train_never_sees_the_repair_set(dataset, monkeypatch, tmp_path):
    if dataset == "digits":
        pytest.importorskip("sklearn")
    from click.testing import CliRunner

    from xbarlab.cli import cli

    seen = _capture(monkeypatch, "train_with_bar")
    r = CliRunner().invoke(cli, ["train", "--dataset", dataset, "--out",
                                 str(tmp_path / "n.pt")])
    assert isinstance(r.exception, _Trained), r.output
    _assert_held_out(seen, dataset)
