"""bench/repair.py --combine: one report over the chips of runs made in chunks."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    from threadpoolctl import threadpool_limits

    spec = importlib.util.spec_from_file_location("bench_repair", ROOT / "bench" / "repair.py")
    mod = importlib.util.module_from_spec(spec)
    with threadpool_limits(limits=None):   # the bench limits BLAS to one thread on import
        spec.loader.exec_module(mod)
    return mod


MC = {"regular": {"mean": 0.7, "std": 0.1, "clean": 0.97}}
CONFIG = {"repair": {}, "reverify": {}, "tune": {}, "device": {}, "quick": False}


def _run(folder: Path, seeds, mc=MC, config=CONFIG) -> Path:
    folder.mkdir()
    chips = [{"network": "regular", "seed": s, "path": "array", "after": 0.9} for s in seeds]
    (folder / "results.json").write_text(json.dumps(
        {"digits": {"chips": chips, "monte_carlo": mc, "config": config}}))
    return folder


def test_chunks_are_reported_together(bench, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(bench, "print_reports", lambda *a: seen.append(a))
    bench.combine([_run(tmp_path / "a", [1001, 1002]), _run(tmp_path / "b", [1003])])
    (dataset, rows, mc), = seen
    assert dataset == "digits" and mc == MC
    assert sorted(x["seed"] for x in rows) == [1001, 1002, 1003]


@pytest.mark.parametrize("second, message", [
    ({"seeds": [1002]}, "also in"),                                         # a chip twice
    ({"seeds": [1003], "mc": {"regular": MC["regular"] | {"mean": 0.6}}}, "differs"),
    ({"seeds": [1003], "config": CONFIG | {"tune": {"width": 5e-8}}}, "differs"),
])
def test_refuses_what_is_not_one_bench(bench, tmp_path, second, message):
    a = _run(tmp_path / "a", [1001, 1002])
    b = _run(tmp_path / "b", **second)
    with pytest.raises(SystemExit, match=message):
        bench.combine([a, b])


def test_refuses_a_folder_without_results(bench, tmp_path):
    with pytest.raises(SystemExit, match="cannot read"):
        bench.combine([tmp_path])
