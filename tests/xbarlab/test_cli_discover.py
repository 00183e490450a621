"""What a new user can find from the command line: the shipped stations, the campaigns in
`run --help`, every campaign's config with its units and ranges, and a next step after a
command."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from protocols.campaigns import CAMPAIGNS
from xbarlab.cli import cli
from xbarlab.commands.campaigns import _load_config
from xbarlab.station.station import SHIPPED_STATIONS


def _invoke(args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_station_list_names_every_shipped_station():
    out = _invoke(["station", "list"])
    for p in SHIPPED_STATIONS.glob("*.yaml"):
        line = next(ln for ln in out.splitlines() if ln.startswith(p.stem + " "))
        assert "rig " in line and len(line.split(None, 1)[1]) > 20
    assert "next: " in out


def test_run_help_describes_every_campaign():
    out = _invoke(["run", "--help"])
    for name, (module, _cls) in CAMPAIGNS.items():
        first = module.__doc__.strip().splitlines()[0][:25]
        assert name in out and first.split()[0] in out, (name, out)


@pytest.mark.parametrize("name", sorted(CAMPAIGNS))
def test_print_config_loads_back_to_the_defaults(name, tmp_path):
    cls = CAMPAIGNS[name][1]
    text = _invoke(["run", name, "--print-config"])   # no --station/-o needed
    assert yaml.safe_load(text) is not None
    assert cls.model_validate(yaml.safe_load(text)) == cls()
    assert "[S]" in text or "[V]" in text
    assert "# " in text and ">" in text               # comments with ranges
    # the printed file is accepted by `run --config` as it is
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert _load_config(cls, str(cfg), {}) == cls()


def test_campaign_ends_with_next_steps(tmp_path):
    out = _invoke(["run", "stuck", "--station", "sim-pmu", "-o", str(tmp_path / "s.h5"),
                   "--device", "1,1", "--no-progress"])
    assert f"next: `xbarlab plot {Path(tmp_path / 's.h5')}`" in out
