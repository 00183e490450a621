"""The quick demo end to end: every artefact exists and the report equals its sources."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # the quick demo: ~3 min, its repair read-outs on the SMUs

from database.display import duration, pct, us  # noqa: E402
from database.nonideality import load_nonideality  # noqa: E402
from protocols.transfer import load_transfer  # noqa: E402
from xbarlab.report import NETWORKS  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from threadpoolctl import threadpool_limits

    from xbarlab.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    with threadpool_limits(1, user_api="blas"):
        steps = run_demo(out, quick=True, seed=3, progress=False, echo=lambda _s: None)
    report = json.loads((out / "report" / "report.json").read_text())
    md = (out / "report" / "report.md").read_text()
    page = (out / "report" / "index.html").read_text()
    return out, steps, report, md, page


def _row(*cells):
    return "| " + " | ".join(cells) + " |"


def test_every_step_wrote_its_files(demo):
    out, steps, *_ = demo
    assert [s.name for s in steps] == ["station", "campaigns", "retention", "database", "train",
                                       "evaluate", "transfer", "repair", "report"]
    for s in steps:
        assert s.paths and s.seconds >= 0, s.name
        for p in s.paths:
            assert Path(p).is_file() and Path(p).stat().st_size > 0, p
    timing = json.loads((out / "timing.json").read_text())
    assert [s["name"] for s in timing["steps"]] == [s.name for s in steps]
    for s in timing["steps"]:  # stored relative to the output folder
        assert all((out / p).is_file() for p in s["paths"])
    # campaigns and transfers ran on instruments: the virtual clock predicts their time
    inst = {s.name: s.instrument_s for s in steps}
    assert inst["campaigns"] > 0 and inst["transfer"] > 0 and inst["train"] is None
    assert inst["repair"] > 0
    # the retention step waited its (virtual) hour between programming and the last read
    assert inst["retention"] >= 3600.0


def test_retention_step_reaches_the_database(demo):
    from database.nonideality import load_nonideality

    out, *_ = demo
    db = load_nonideality(out / "db" / "nonideality.h5")
    assert db.retention is not None and db.retention.time.max() > 3000.0
    assert "retention-xbar3.h5" in db.provenance["retention"]


def test_figures_are_pngs_and_linked(demo):
    out, _steps, _report, md, page = demo
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) >= 8
    for src in srcs:
        p = out / "report" / src
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000, src
        assert f"]({src})" in md


def test_transfers_in_report_equal_the_hdf5_files(demo):
    out, _steps, report, md, page = demo
    runs = json.loads((out / "transfer" / "transfers.json").read_text())
    assert len(runs) == 2 * 3  # two networks on each of 3 fresh chips
    acc = {n: {} for n in NETWORKS}
    for r in runs:
        t = load_transfer(out / r["path"])
        inf = t.tables["inference"]
        a = float((inf.predicted == inf.label).mean())
        assert a == pytest.approx(t.summary["accuracy"])
        assert t.summary["devices"] == t.plan.n_devices == 66
        assert np.isfinite(t.g_read).all()
        acc[r["network"]][r["chip_seed"]] = a
        assert r["chip_seed"] != 3  # fresh chips, not the characterised one
    for n in NETWORKS:
        got = {c["chip_seed"]: c["accuracy"] for c in report["chips"][n]}
        assert got == pytest.approx(acc[n])
        vals = np.array(list(acc[n].values()))
        m = report["measured"][n]
        assert m["mean"] == pytest.approx(vals.mean())
        assert m["std"] == pytest.approx(vals.std(ddof=1))
        assert m["min"] == pytest.approx(vals.min()) and m["max"] == pytest.approx(vals.max())
    for seed in acc["hardware_aware"]:
        cells = [str(seed), pct(acc["hardware_aware"][seed]), pct(acc["regular"][seed])]
        assert ("| " + " | ".join(cells) + " |") in md
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) in page
    # the computed statements follow from those numbers
    hw, reg = report["measured"]["hardware_aware"], report["measured"]["regular"]
    c = report["claims"]
    assert c["hw_higher"] == (hw["mean"] > reg["mean"])
    assert c["hw_less_spread"] == (hw["std"] < reg["std"])
    for n in NETWORKS:
        m, p = report["measured"][n], report["mc"][n]
        assert c[f"mc_within_{n}"] == (m["min"] <= p["mean"] <= m["max"])
        assert f"{pct(p['mean'])} in [{pct(m['min'])}, {pct(m['max'])}]" in md
    if c["all_hold"]:
        assert "All statements hold" in md
    else:
        assert "| NO |" in md and "All statements hold" not in md


def test_repairs_in_report_equal_the_hdf5_files_and_keep_their_budget(demo):
    from protocols.repair import load_repair
    from protocols.transfer import load_transfer

    out, _steps, report, md, _page = demo
    runs = json.loads((out / "repair" / "repairs.json").read_text())
    assert sorted(r["network"] for r in runs) == sorted(NETWORKS)  # quick: the first chip
    assert "pulse budget of 20 % of the transfer's pulses" in md
    for r, shown in zip(runs, report["repairs"], strict=True):
        s = load_repair(out / r["path"]).summary
        transfer = load_transfer(out / r["transfer"]).summary["pulses_total"]
        assert r["transfer_pulses"] == transfer
        assert s["pulses"] <= s["budget"] == int(0.2 * transfer)
        assert (shown["before"], shown["after"]) == (s["accuracy_before"], s["accuracy_after"])
        assert f"{pct(s['accuracy_before'])} -> {pct(s['accuracy_after'])}" in md
        assert f"{s['pulses']} / {s['budget']}" in md


def test_monte_carlo_numbers_equal_the_evaluation_files(demo):
    out, _steps, report, md, _page = demo
    ev = json.loads((out / "evaluate" / "summary.json").read_text())["networks"]
    mc = np.load(out / "evaluate" / "mc_accuracy.npz")
    for n in NETWORKS:
        assert mc[n].size == 2000
        assert report["mc"][n]["mean"] == pytest.approx(float(mc[n].mean()))
        assert report["mc"][n]["mean"] == pytest.approx(ev[n]["transfer_acc_mean"], abs=1e-6)
        assert report["evaluate"]["networks"][n] == ev[n]
    for q, label in ((">=95%", "95 %"), (">=80%", "80 %")):
        assert _row(f"correct in >= {label} of transfers",
                    pct(ev["hardware_aware"]["share_correct"][q]),
                    pct(ev["regular"]["share_correct"][q])) in md
    assert _row("clean (software) accuracy", pct(ev["hardware_aware"]["clean_acc"]),
                pct(ev["regular"]["clean_acc"])) in md


def test_calibration_numbers_equal_the_database(demo):
    out, _steps, report, md, _page = demo
    db = load_nonideality(out / "db" / "nonideality.h5")
    cal = report["calibration"]
    np.testing.assert_allclose(cal["levels_S"], db.tuning_levels)
    np.testing.assert_allclose(cal["sigma_rel"], db.tuning_sigma_rel)
    assert cal["disturbance_samples"] == db.disturbance_delta.size
    assert cal["stuck_lrs_rate"] == pytest.approx(db.stuck_lrs_rate)
    for lv, s in zip(db.tuning_levels, db.tuning_sigma_rel, strict=True):
        assert f"| {us(lv)} | {pct(s, 3)} |" in md
    assert f"{us(db.disturbance_delta.mean(), 2)} / " in md
    # the campaigns' summaries are the raw-run files' own
    from database.runs import list_runs
    runs = json.loads((out / "runs" / "campaigns.json").read_text())
    for r in runs:
        got = list_runs(out / r["path"])[-1].summary
        assert got.keys() == r["summary"].keys()
        for k, v in r["summary"].items():    # bring-up lists the bad lines by name
            assert got[k] == (v if isinstance(v, list) else pytest.approx(v)), (r["path"], k)
    # the DC steps: a bring-up of every crossbar used, first; I-V loops last, in the report
    protocols = [r["protocol"] for r in runs]
    assert protocols[0] == "bringup" and protocols[-1] == "iv"
    for r in runs:
        if r["protocol"] == "bringup":
            assert f"{r['summary']['ok']} of {r['summary']['lines']} lines ok" in md
    iv = runs[-1]["summary"]
    assert iv["never_switched"] == 0 and f"{iv['cycles']} DC cycles" in md


def test_timing_table_equals_timing_json(demo):
    out, _steps, report, md, _page = demo
    timing = json.loads((out / "timing.json").read_text())["steps"]
    shown = [t for t in timing if t["name"] != "report"]
    assert [t["title"] for t in report["timing"]] == [t["title"] for t in shown]
    for t in shown:
        assert _row(t["title"], duration(t["seconds"]), duration(t["instrument_s"])) in md
    total_inst = sum(t["instrument_s"] or 0.0 for t in shown)
    assert f"| {duration(total_inst)} |" in md


def test_report_leads_with_the_published_claim_measured_on_chips(demo):
    out, steps, report, md, _page = demo
    ev = json.loads((out / "evaluate" / "summary.json").read_text())["networks"]
    # the chip figure recomputed from the HDF5 files: a test point counts when it is right on
    # >= 95 % of the chips that carried the network
    right = {n: [] for n in NETWORKS}
    for r in json.loads((out / "transfer" / "transfers.json").read_text()):
        inf = load_transfer(out / r["path"]).tables["inference"]
        right[r["network"]].append((inf.predicted == inf.label).to_numpy())
    rb, c = report["robust"], report["claims"]
    for n in NETWORKS:
        per_point = sum(right[n]) / len(right[n])
        assert rb[n]["chips"] == pytest.approx(float((per_point >= 0.95 - 1e-9).mean()))
        assert rb[n]["monte_carlo"] == ev[n]["share_correct"][">=95%"]
    assert c["hw_robust_chips"] == (rb["hardware_aware"]["chips"] > rb["regular"]["chips"])
    # the summary table's first rows are the published claim, Monte-Carlo then chips
    summary = md.split("## Summary", 1)[1]
    first = [ln for ln in summary.splitlines() if ln.startswith("| ") and "statement" not in ln]
    assert first[0].startswith("| published claim, Monte-Carlo")
    assert first[1].startswith("| published claim, on the 3 programmed chips")
    assert "(not claimed)" in first[2]
    # the demo says its conclusion: the report step carries the lines the CLI prints
    lines = steps[-1].info["conclusion"]
    assert lines[0].startswith("Published claim") and "programmed chips" in lines[2]
    assert pct(rb["hardware_aware"]["chips"]) in lines[2]


def test_report_page_in_a_real_browser(demo, tmp_path):
    """Headless chromium draws the report: title, sections in order with the published claim
    first, every figure loaded; the screenshot in docs/ is the same page (make docs-images)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from live_support import REPORT_IMAGE, chromium, chromium_missing, open_report, save_full_page

    if (why := chromium_missing()):
        pytest.skip(why)
    out, *_ = demo
    driver = chromium(1100, 900)
    try:
        seen = open_report(driver, out / "report")
        png = save_full_page(driver, tmp_path / "report.png", 1100)
    finally:
        driver.quit()
    assert "demo" in seen["h1"].lower()
    assert seen["h2"][0] == "Summary"
    text = seen["summary"].lower()  # the published claim comes before what it never claimed
    assert "published claim" in text and "not claimed" in text, text[:500]
    assert text.index("published claim") < text.index("not claimed")
    assert seen["images"] >= 8 and not seen["broken"], seen["broken"]
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 50_000
    docs = Path(__file__).parents[2] / "docs"
    assert (docs / "img" / REPORT_IMAGE).read_bytes()[:8] == PNG
    assert f"img/{REPORT_IMAGE}" in (docs / "guide.md").read_text()
