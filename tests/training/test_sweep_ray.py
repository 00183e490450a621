"""The Ray backend on a local 2-CPU Ray instance, with toy point functions (machinery only)."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from training.sweep import ResultStore, load_spec, run_sweep  # noqa: E402

pytestmark = pytest.mark.ray

SPEC = """
    name: ray-toy
    base: {dataset: moons, transfers: 10}
    grid:
      stuck_rate: [0.0, 0.02]
      seed: [0, 1]
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def make_point_fn(calls_dir: str, fail_seed: int | None = None):
    """A toy point function defined in a closure, so Ray ships it by value to its workers."""

    def point(params: dict) -> dict:
        tag = f"{params['stuck_rate']}_{params['seed']}"
        Path(calls_dir, f"{tag}@{os.getpid()}@{time.monotonic_ns()}").touch()
        if params["seed"] == fail_seed:
            raise RuntimeError("toy failure")
        metrics = {"share_correct_95": 1.0 - params["stuck_rate"], "transfer_acc_mean": 0.9,
                   "transfer_acc_p05": 0.8, "clean_acc": 0.95, "steps": 1, "train_s": 0.0}
        return {"kinds": {"hardware_aware": metrics, "regular": dict(metrics)}}

    return point


def test_ray_auto_without_a_cluster_is_one_line(monkeypatch):
    from training.sweep import SweepError
    from training.sweep.ray_cluster import connect

    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(SweepError, match="cannot connect to Ray at 'auto'") as ei:
        connect("auto")
    assert "\n" not in str(ei.value)


def test_ray_runs_points_as_tasks_and_resumes(local_ray, tmp_path):
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(textwrap.dedent(SPEC))
    spec = load_spec(spec_path)
    out = tmp_path / "out"
    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()

    # first run: seed 1 fails on the workers; the others are stored by the driver
    summary = run_sweep(spec, out, use_ray=True, plots=False,
                        point_fn=make_point_fn(str(calls_dir), fail_seed=1))
    assert summary.ran == 2 and len(summary.failed) == 2
    assert all("toy failure" in err for _, err in summary.failed)
    first = sorted(p.name for p in calls_dir.iterdir())
    assert len(first) == 4
    assert str(os.getpid()) not in {c.split("@")[1] for c in first}  # ran on Ray workers

    # restart: only the two failed points run again
    summary = run_sweep(spec, out, use_ray=True, plots=False,
                        point_fn=make_point_fn(str(calls_dir)))
    assert (summary.already_done, summary.ran, summary.failed) == (2, 2, [])
    new = sorted(p.name for p in calls_dir.iterdir() if p.name not in first)
    assert {c.split("@")[0] for c in new} == {"0.0_1", "0.02_1"}
    assert len(ResultStore(out).done_keys()) == 4
    assert summary.table is not None and summary.table.exists()
