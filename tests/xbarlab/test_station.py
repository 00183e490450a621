"""Station files: validation, rigs built from them, and `xbarlab station check`."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xbarlab.cli import cli
from xbarlab.errors import StationError
from xbarlab.station import load_station

STATIONS = Path(__file__).resolve().parents[2] / "xbarlab" / "stations"


@pytest.mark.parametrize("name", ["sim-pmu", "sim-wgfmu", "lab-pmu", "lab-wgfmu"])
def test_shipped_stations_load(name):
    st = load_station(STATIONS / f"{name}.yaml")
    d = st.describe()
    json.dumps(d)
    assert d["name"] == name and d["limits"]["v_set_max"] == 2.1
    assert (st.chip is not None) == name.startswith("sim")


def _write(tmp_path, text):
    p = tmp_path / "st.yaml"
    p.write_text(text)
    return p


def test_bad_files_fail_with_one_line_naming_the_field(tmp_path):
    base = (STATIONS / "sim-pmu.yaml").read_text()
    cases = {
        "limits": base.replace("v_set_max: 2.1", "v_set_max: 20"),
        "rig": base.replace("rig: pmu", "rig: smu"),
        "matrix.rows": base.replace("[1, 8]]", "[1, 13]]"),
        "instruments.k4200": base.replace(
            '  k4200: {resource: "TCPIP0::192.168.0.2::1225::SOCKET", timeout: 5}\n', ""),
        "read.volts": base.replace("volts: 0.2", "volts: 0.9"),
        "sim.latency.round_trip": base.replace("round_trip: 3.0e-3", "round_trip: -1"),
    }
    for field, text in cases.items():
        with pytest.raises(StationError) as e:
            load_station(_write(tmp_path, text))
        msg = str(e.value)
        assert field in msg and "\n" not in msg, msg
    with pytest.raises(StationError, match="not found"):
        load_station(tmp_path / "nope.yaml")


def test_sim_station_rig_runs_on_its_chip():
    st = load_station(STATIONS / "sim-pmu.yaml")
    with st.open_rig() as rig:
        assert rig.shape == (8, 8)
        g = rig.read_array()
        true = st.chip["xbar0"].conductance()
        assert np.median(np.abs(g - np.minimum(true, 500e-6)) / true) < 0.05
        t = rig.clock
        rig.pulse(0, 0, 1.0, 200e-9)
        assert rig.clock > t                              # the virtual clock advanced
    with pytest.raises(StationError, match="shape"):
        st.open_rig("dev1")


def test_station_check_command_reports_identities_modules_and_limits():
    r = CliRunner().invoke(cli, ["station", "check", str(STATIONS / "sim-pmu.yaml")])
    assert r.exit_code == 0, r.output
    for s in ("KI4200A", "Model 707B", "7174A", "SET <= +2.1 V", "8 x 8", "relays open"):
        assert s in r.output
    r = CliRunner().invoke(cli, ["station", "check", str(STATIONS / "sim-wgfmu.yaml")])
    assert r.exit_code == 0, r.output
    assert "WGFMU" in r.output and "1 x 1" in r.output


def test_shipped_station_found_by_name(tmp_path, monkeypatch):
    from xbarlab.station import SHIPPED_STATIONS, resolve_station

    monkeypatch.chdir(tmp_path)
    assert resolve_station("sim-pmu") == SHIPPED_STATIONS / "sim-pmu.yaml"
    (tmp_path / "sim-pmu").write_text("x")  # a local file of that name wins
    assert resolve_station("sim-pmu").resolve() == tmp_path / "sim-pmu"
    assert not resolve_station("nope").exists()
