"""Station files: validation, rigs built from them, and `xbarlab station check`."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xbarlab.cli import cli
from xbarlab.errors import StationError
from xbarlab.station import load_station

ROOT = Path(__file__).resolve().parents[2]
STATIONS = ROOT / "xbarlab" / "stations"


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
            '  k4200: {resource: "TCPIP0::192.168.0.2::1225::SOCKET", timeout: 5, smus: 4}\n', ""),
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


# -- run binding: what a run on the station really used ----------------------------------------

def test_binding_records_the_crossbar_chip_and_settings_really_used(tmp_path):
    st = load_station(STATIONS / "sim-pmu.yaml")
    d0, d1 = st.describe(), st.describe("xbar1")
    assert d0["crossbars"] == ["xbar0"] and d1["crossbars"] == ["xbar1"]
    assert {k: v for k, v in d0.items() if k != "crossbars"} == \
        {k: v for k, v in d1.items() if k != "crossbars"}
    assert d0["rig"] == "pmu" and d0["shape"] == [8, 8] and d0["pulse"]["edge"] == 20e-9
    assert d0["read"]["volts"] == 0.2 and d0["limits"]["v_reset_max"] == 2.5
    assert d0["sim"]["seed"] == 0 and d0["sim"]["latency"]["round_trip"] == 3e-3
    assert d0["sim"]["latency"]["read_time"] > 0      # the whole latency model, defaults too
    with pytest.raises(StationError, match="shape"):
        st.describe(["xbar0", "dev0"])
    # a chip file: the seed in the file (not the station's) and the file's content hash
    st.chip["xbar0"].G[0, 0] *= 1.5
    st.chip.save(tmp_path / "chip.npz")
    raw = (STATIONS / "sim-pmu.yaml").read_text().replace("seed: 0",
                                                          "seed: 7\n  chip_file: chip.npz")
    (tmp_path / "st.yaml").write_text(raw)
    d = load_station(tmp_path / "st.yaml").describe()
    assert d["sim"]["seed"] == 0 and d["sim"]["chip_file"] == "chip.npz"
    assert len(d["sim"]["chip_sha256"]) == 64
    # a real station: the labels the operator gives, no sim section
    lab = load_station(STATIONS / "lab-pmu.yaml")
    assert lab.describe()["crossbars"] == ["xbar0"] and "sim" not in lab.describe()
    assert lab.describe(["die3-a", "die3-b"])["crossbars"] == ["die3-a", "die3-b"]


def test_fresh_run_on_another_crossbar_records_that_crossbar(tmp_path):
    from database.runs import list_runs
    from xbarlab.cli import main

    out = tmp_path / "s.h5"
    with pytest.raises(SystemExit) as e:
        main(["run", "stuck", "--station", str(STATIONS / "sim-pmu.yaml"), "-o", str(out),
              "--crossbar", "xbar1", "--device", "0,0", "--no-progress"])
    assert e.value.code == 0
    assert list_runs(out)[-1].station["crossbars"] == ["xbar1"]


# -- the station's parts -----------------------------------------------------------------------

def test_a_role_on_a_terminal_no_instrument_offers_is_refused(tmp_path):
    raw = (STATIONS / "sim-pmu.yaml").read_text()
    raw = raw.replace("rig: pmu", "rig: wgfmu").replace(", scheme: write-routing}", "}").replace(
        '  k4200: {resource: "TCPIP0::192.168.0.2::1225::SOCKET", timeout: 5, smus: 4}\n',
        '  b1500: {resource: "GPIB0::17::INSTR", smu_v3: 2, smu_2v3: 4}\n'
        '  wgfmu: {address: "GPIB0::17::INSTR"}\n').replace(
        "terminals: {drive: A, sense: B, v3: C, 2v3: D, gnd: E, smu3: F, smu4: G}",
        "terminals: {top: A, bottom: B, v3: C, 2v3: D}")
    ok = raw.replace("smu_2v3: 4", "smu_2v3: 3")
    load_station(_write(tmp_path, ok))                # SMUs in slots 2 and 3: fine
    with pytest.raises(StationError, match="smu4") as e:
        load_station(_write(tmp_path, raw))           # slot 4 holds no SMU
    assert "2v3" in str(e.value) and "\n" not in str(e.value)


def test_a_new_instrument_is_one_module_and_its_registration(tmp_path):
    # an instrument kind the station code has never heard of, registered from its own module:
    # its section validates, it is emulated on a simulated station and bound into every run
    (tmp_path / "k9999part.py").write_text(textwrap.dedent('''
        from xbarlab.station.registry import InstrumentCfg, InstrumentKind, register

        class K9999Cfg(InstrumentCfg):
            channels: int = 2

        EMULATED = []

        def _emulate(cfg, lab):
            EMULATED.append((cfg.resource, lab.world.crossbar.shape))

        register(InstrumentKind("k9999", K9999Cfg,
                                lambda cfg: {f"k9999.{i}" for i in range(cfg.channels)},
                                lambda cfg, res, lim: None, _emulate, lambda *a: []))
    '''))
    (tmp_path / "st.yaml").write_text((STATIONS / "sim-pmu.yaml").read_text().replace(
        "instruments:\n", 'instruments:\n  k9999: {resource: "GPIB0::3::INSTR", channels: 3}\n'))
    code = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import xbarlab.station.registry as registry
        registry.PARTS += ("k9999part",)
        from xbarlab.station import load_station
        import k9999part
        st = load_station({str(tmp_path / "st.yaml")!r})
        assert st.describe()["instruments"]["k9999"] == {{
            "resource": "GPIB0::3::INSTR", "timeout": 5.0, "channels": 3}}
        with st.open_rig() as rig:
            rig.read(0, 0)
        assert k9999part.EMULATED == [("GPIB0::3::INSTR", (8, 8))]
    ''')
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_two_instruments_offering_one_terminal_are_refused(monkeypatch):
    from dataclasses import replace

    from xbarlab.station import registry
    from xbarlab.station.config import check_consistency

    st = load_station(STATIONS / "sim-pmu.yaml")
    # as if the 707B kind also offered PMU channel 2's terminal
    k707b = replace(registry.INSTRUMENTS["k707b"], terminals=lambda cfg: {"pmu2"})
    monkeypatch.setitem(registry.INSTRUMENTS, "k707b", k707b)
    with pytest.raises(StationError, match="pmu2"):
        check_consistency(st.cfg)
