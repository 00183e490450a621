"""The terminal speaks one language: conductances in uS, accuracies and shares in %, every
summary number named. Small commands run on the simulated station through the CLI and their
output is scanned for raw SI numbers and fraction-formatted percentages."""

import re
from pathlib import Path

import pytest
import yaml

from database.display import Metric, duration, metric_for, summary_lines
from xbarlab.cli import main

STATIONS = Path(__file__).resolve().parents[2] / "xbarlab" / "stations"
PMU = str(STATIONS / "sim-pmu.yaml")

#: a number in scientific notation (4.2e-05: a raw SI conductance, current or time)
RAW_SI = re.compile(r"(?<![\w.])-?\d+(\.\d+)?[eE][-+]?\d+\b")
#: a share written as a fraction: "accuracy: 0.875", "yield 1", "failure rate: 0.02"
FRACTION = re.compile(r"\b(accuracy|yield|rate|share|error)\b[^:\n]*:\s*-?\d*\.?\d+\s*$",
                      re.I | re.M)

#: a bare number below 1 without a unit (a fraction in a table cell: "clean accuracy  0.875")
BARE = re.compile(r"(?<![\w.+-])-?0\.\d+(?![\d.]|\s*(%|uS|uA|V\b|s\b|ms|us|ns|min|h\b))")


def offences(text: str) -> list[str]:
    return ([m.group(0) for m in RAW_SI.finditer(text)]
            + [m.group(0) for m in FRACTION.finditer(text)]
            + [m.group(0) for m in BARE.finditer(text)])


def test_the_scan_catches_the_old_output():
    # what the campaigns and `db show` printed before: the scan must fail on it
    assert offences("  delta_p1_S: -2.676e-05\n")
    assert offences("  accuracy: 0.875\n")
    assert offences("  yield: 1\n")
    assert offences("│ clean accuracy │ 0.875 │ 0.990 │")
    assert not offences("  yield (working devices): 100.0 %\n  lowest conductance read: 4.2 uS\n")


def test_summary_lines_name_and_convert():
    lines = summary_lines({"delta_p1_S": -2.676e-05, "accuracy": 0.875, "yield": 0.5,
                           "instrument_time_s": 250.0, "devices": 5000},
                          {"delta_p1_S": Metric("1st percentile of the change", "S", nd=2,
                                                signed=True)})
    assert lines == ["1st percentile of the change: -26.76 uS", "accuracy: 87.5 %",
                     "yield: 50.0 %", "instrument time: 4.2 min", "devices: 5,000"]
    assert metric_for("readback_error_mean_rel").unit == "fraction"
    assert duration(2e-7) == "200 ns" and duration(12.34) == "12.3 s"
    assert duration(6.8e-18) == "0 s"   # the rounding left in a sum of times, not e-notation
    # a breakdown (time per category) is shown part by part, zero parts left out
    assert Metric("per inference", "s").show({"relay": 0.0, "dc_settle": 2e-3,
                                              "other": None}) == "dc_settle 2 ms"


def test_evaluate_table_in_percent():
    from rich.console import Console

    from xbarlab.commands.train import _table

    s = {"share_correct": {">=100%": 0.5, ">=95%": 0.795}, "clean_acc": 0.875,
         "transfer_acc_mean": 0.84, "transfer_acc_median": 0.85, "transfer_acc_p05": 0.7,
         "transfer_acc_min": 0.61}
    con = Console(record=True, width=100)
    con.print(_table("t", {"hardware_aware": s, "regular": s}))
    text = con.export_text()
    assert offences(text) == [], text
    assert "79.5 %" in text and "87.5 %" in text and "hardware-aware" in text
    assert ">= 95 % of transfers" in text


def _cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture(autouse=True)
def _single_thread_blas():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def test_cli_summaries_speak_display_units(tmp_path, capsys):
    cfg = tmp_path / "tu.yaml"
    cfg.write_text(yaml.safe_dump({"levels": 2, "repeats": 2, "record_history": False}))
    ivp = tmp_path / "ivp.yaml"
    ivp.write_text(yaml.safe_dump({"v_step": 0.4}))
    iv = tmp_path / "iv.yaml"
    iv.write_text(yaml.safe_dump({"cycles": 1, "v_step": 0.2}))
    runs = {
        "tu.h5": ["run", "tuning-untuning", "--config", str(cfg), "--device", "0,0"],
        "d.h5": ["run", "disturbance", "--device", "0,0", "--device", "0,1"],
        "s.h5": ["run", "stuck", "--device", "3,3", "--device", "2,2"],
        "ivp.h5": ["run", "iv-pulsed", "--config", str(ivp), "--device", "1,1"],
        "iv.h5": ["run", "iv", "--config", str(iv), "--device", "0,0"],
        "b.h5": ["run", "bringup", "--device", "1,1"],
        "f.h5": ["run", "forming", "--device", "1,1"],
    }
    seen = []
    for name, args in runs.items():
        out = tmp_path / name
        code, text = _cli([*args, "--station", PMU, "-o", str(out), "--no-progress"], capsys)
        assert code == 0, text
        seen.append(text)
        code, text = _cli(["db", "show", str(out)], capsys)
        assert code == 0, text
        seen.append(text)
    db = tmp_path / "ni.h5"
    code, text = _cli(["db", "build", *(str(tmp_path / n) for n in ("tu.h5", "d.h5", "s.h5")),
                       "-o", str(db)], capsys)
    assert code == 0, text
    seen.append(text)
    code, text = _cli(["tune", "--station", PMU, "--device", "2,3", "--target", "250e-6"],
                      capsys)
    seen.append(text)
    text = "\n".join(seen)
    assert offences(text) == [], text
    # every summary number is named and carries its display unit
    assert "yield (working devices): " in text and " %" in text
    assert "1st percentile of the change: " in text and " uS" in text
    assert "lowest conductance read: " in text
    assert "median SET voltage: +" in text and " V\n" in text
    assert "open lines: none" in text and "median line conductance" in text
    assert "devices already formed: 1" in text
    # db show lists each table's columns with units
    assert re.search(r"columns [^\n]*\[S\]", text)
