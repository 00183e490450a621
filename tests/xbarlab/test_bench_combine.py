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


def _run(folder: Path, seeds, mc=MC, config=CONFIG, network="regular") -> Path:
    folder.mkdir()
    chips = [{"network": network, "seed": s, "path": "array", "after": 0.9} for s in seeds]
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
    ({"seeds": [1003], "mc": {"regular": MC["regular"] | {"mean": 0.6}}}, "differ"),
    ({"seeds": [1003], "config": CONFIG | {"tune": {"width": 5e-8}}}, "differ"),
    ({"seeds": [1003], "config": CONFIG | {"replicate": 2}}, "differ"),   # another export
])
def test_refuses_what_is_not_one_bench(bench, tmp_path, second, message):
    a = _run(tmp_path / "a", [1001, 1002])
    b = _run(tmp_path / "b", **second)
    with pytest.raises(SystemExit, match=message):
        bench.combine([a, b])


def test_runs_of_one_network_each_are_reported_together(bench, tmp_path, monkeypatch):
    """--networks: the hardware-aware chips of a run whose regular network was exported
    otherwise (--clip, --replicate: the regular network's settings only) join a run of the
    regular network alone."""
    seen = []
    monkeypatch.setattr(bench, "print_reports", lambda *a: seen.append(a))
    hw = {"mean": 0.9, "std": 0.04, "clean": 0.96}
    both = _run(tmp_path / "a", [1001], mc=MC | {"hardware_aware": hw},
                config=CONFIG | {"clip": 95})
    data = json.loads((both / "results.json").read_text())   # its chips of both networks
    data["digits"]["chips"].append(data["digits"]["chips"][0] | {"network": "hardware_aware"})
    (both / "results.json").write_text(json.dumps(data))
    regular = _run(tmp_path / "b", [1001, 1002], mc={"regular": MC["regular"] | {"mean": 0.8}},
                   config=CONFIG | {"clip": 95, "replicate": 2, "networks": ["regular"]})
    hw_only = tmp_path / "c"
    hw_only.mkdir()
    data["digits"]["chips"] = data["digits"]["chips"][1:]
    (hw_only / "results.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="regular Monte-Carlo prediction or settings differ"):
        bench.combine([both, regular])   # its regular chips are of the other export
    hw_more = _run(tmp_path / "d", [1002], mc={"hardware_aware": hw}, network="hardware_aware",
                   config=CONFIG | {"networks": ["hardware_aware"]})
    bench.combine([hw_only, regular, hw_more])
    (dataset, rows, mc), = seen
    assert mc == {"hardware_aware": hw, "regular": MC["regular"] | {"mean": 0.8}}
    assert sorted((x["network"], x["seed"]) for x in rows) == [
        ("hardware_aware", 1001), ("hardware_aware", 1002), ("regular", 1001),
        ("regular", 1002)]


def test_refuses_a_folder_without_results(bench, tmp_path):
    with pytest.raises(SystemExit, match="cannot read"):
        bench.combine([tmp_path])
