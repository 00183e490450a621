"""Seed batching in sweeps: points differing only by seed train as one batched model, each keeps
its own key and stored result, equal to the unbatched path; resume trains only missing seeds."""

from __future__ import annotations

import json
import textwrap

import pytest

from training.sweep import ResultStore, expand, group_points, load_spec, run_group, run_sweep

pytest.importorskip("torch")

# 3 seeds x 2 stuck rates: two groups of three; tiny training so the test stays fast
SPEC = """
name: batch
base: {dataset: moons, mapping: physical, epochs: 12, transfers: 40, tile_size: 4}
grid:
  stuck_rate: [0.0, 0.04]
  seed: [0, 1, 2]
"""


def spec_at(tmp_path, text=SPEC):
    p = tmp_path / "sweep.yaml"
    p.write_text(textwrap.dedent(text))
    return load_spec(p)


def stored(out) -> dict[str, dict]:
    return {r["key"]: r for r in ResultStore(out).records()}


def assert_same_metrics(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        for kind, m in a[key]["kinds"].items():
            for name, v in m.items():
                if name.endswith("_s"):  # wall times
                    continue
                assert v == pytest.approx(b[key]["kinds"][kind][name], abs=1e-6), (key, kind,
                                                                                    name)


def test_group_points_splits_on_everything_but_seed(tmp_path):
    pts = expand(spec_at(tmp_path))
    groups = group_points(pts)
    assert [len(g) for g in groups] == [3, 3]
    for g in groups:
        assert len({p.params["stuck_rate"] for p in g}) == 1
        assert [p.params["seed"] for p in g] == [0, 1, 2]


class CountingGroup:
    """run_group that records the seeds of every call (same process: workers=1)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, group: list[dict]) -> list[dict]:
        self.calls.append([p["seed"] for p in group])
        return run_group(group)

    def point(self, params: dict) -> dict:
        """A lone point (a group of one) goes through the point function."""
        self.calls.append([params["seed"]])
        return run_group([params])[0]


def test_batched_results_equal_unbatched_and_resume_trains_only_missing_seeds(tmp_path):
    spec = spec_at(tmp_path)
    plain = run_sweep(spec, tmp_path / "plain", batch_seeds=False, plots=False)
    assert plain.ran == 6
    counter = CountingGroup()
    batched = run_sweep(spec, tmp_path / "batched", group_fn=counter, plots=False)
    assert batched.ran == 6
    assert sorted(counter.calls) == [[0, 1, 2], [0, 1, 2]]  # two batched models, not six
    a, b = stored(tmp_path / "plain"), stored(tmp_path / "batched")
    assert_same_metrics(a, b)  # same keys, same metrics
    assert all(r["group"]["size"] == 3 for r in b.values())
    assert all("group" not in r for r in a.values())

    # resume: keep seed 1 of the first group and seeds 0 and 2 of the second, drop the rest
    pts = expand(spec)
    keep = {pts[1].key, pts[3].key, pts[5].key}
    out = tmp_path / "partial"
    out.mkdir()
    lines = (tmp_path / "batched" / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(
        "".join(ln + "\n" for ln in lines if json.loads(ln)["key"] in keep))
    counter = CountingGroup()
    summary = run_sweep(spec, out, point_fn=counter.point, group_fn=counter, plots=False)
    assert (summary.already_done, summary.ran) == (3, 3)
    # only the missing seeds were trained (a gap in the seeds is fine: 0 and 2)
    assert sorted(counter.calls) == [[0, 2], [1]]
    assert_same_metrics(stored(out), a)
    # nothing left: a third run trains nothing
    counter = CountingGroup()
    summary = run_sweep(spec, out, point_fn=counter.point, group_fn=counter, plots=False)
    assert summary.ran == 0 and counter.calls == []


def test_batching_can_be_turned_off_in_the_file(tmp_path):
    spec = spec_at(tmp_path, SPEC + "batch_seeds: false\n")
    counter = CountingGroup()
    seen = []

    def point(params):
        seen.append(params["seed"])
        return run_group([params])[0]

    summary = run_sweep(spec, tmp_path / "o", point_fn=point, group_fn=counter, plots=False)
    assert summary.ran == 6 and counter.calls == [] and sorted(seen) == [0, 0, 1, 1, 2, 2]


def test_group_with_failure_stores_one_failure_per_member(tmp_path):
    spec = spec_at(tmp_path)

    def broken(group):
        raise RuntimeError("diverged")

    summary = run_sweep(spec, tmp_path / "o", point_fn=lambda p: {}, group_fn=broken,
                        plots=False)
    assert summary.ran == 0 and len(summary.failed) == 6
    summary = run_sweep(spec, tmp_path / "o", group_fn=run_group, point_fn=lambda p: {},
                        plots=False)
    assert summary.ran == 6  # failed groups are retried on the next run


def test_run_group_rejects_points_that_differ_in_more_than_seed(tmp_path):
    from training.sweep import SweepError

    a, b = (p.params for p in expand(spec_at(tmp_path))[2:4])
    with pytest.raises(SweepError, match="not only in seed"):
        run_group([a, b])


def test_ray_submits_a_seed_group_as_one_task(tmp_path):
    ray = pytest.importorskip("ray")
    import os
    from pathlib import Path

    def toy_metrics(params: dict) -> dict:  # defined here: Ray workers cannot import tests
        m = {"share_correct_95": 1.0 - 0.01 * params["seed"], "transfer_acc_mean": 0.9,
             "transfer_acc_p05": 0.8, "clean_acc": 0.95, "steps": 1, "train_s": 0.0}
        return {"kinds": {"hardware_aware": dict(m), "regular": dict(m)}}

    calls_dir = tmp_path / "calls"
    calls_dir.mkdir()
    marker_dir = str(calls_dir)

    def group(points: list[dict]) -> list[dict]:  # a closure: Ray ships it by value
        seeds = "-".join(str(p["seed"]) for p in points)
        Path(marker_dir, f"{seeds}@{os.getpid()}").touch()
        return [toy_metrics(p) for p in points]

    spec = spec_at(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_sweep(spec, tmp_path / "o", point_fn=toy_metrics, group_fn=group,
                            use_ray=True, plots=False)
    finally:
        ray.shutdown()
    assert summary.ran == 6
    assert sorted(p.name.split("@")[0] for p in calls_dir.iterdir()) == ["0-1-2", "0-1-2"]
    recs = stored(tmp_path / "o")
    assert {k: r["kinds"] for k, r in recs.items()} == {
        p.key: toy_metrics(p.params)["kinds"] for p in expand(spec)}
