"""`xbarlab demo --steps ...` on a folder without the earlier steps' outputs: one line naming the
missing step, exit 2, nothing written."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def run_cli(args, capsys) -> tuple[int, str]:
    from xbarlab.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.mark.parametrize("steps, missing", [
    ("report", "station"),
    ("train", "database"),
    ("evaluate,transfer", "database"),  # the earliest step missing
    ("transfer", "station"),
    ("repair", "station"),
    ("campaigns", "station"),
])
def test_step_without_earlier_outputs_is_one_line(steps, missing, tmp_path, capsys):
    out = tmp_path / "demo"
    code, err = run_cli(["demo", "--quick", "--out", out, "--steps", steps, "--no-progress"],
                        capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"step '{missing}'" in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_report_names_the_first_step_whose_outputs_are_missing(tmp_path, capsys):
    """Outputs of station present, campaigns missing: the report names campaigns."""
    out = tmp_path / "demo"
    assert run_cli(["demo", "--quick", "--out", out, "--steps", "station", "--no-progress"],
                   capsys)[0] == 0
    code, err = run_cli(["demo", "--quick", "--out", out, "--steps", "report",
                         "--no-progress"], capsys)
    assert code == 2 and "step 'campaigns'" in err and "runs/campaigns.json" in err, err
    assert not (out / "report").exists()
