"""The DC path through the drivers and emulated instruments on both SMU instruments: the 4200
(sim-pmu: SMU1/2 through the RPMs, SMU3/4 on matrix rows) and the B1500 (a WGFMU crossbar
station whose SMUs sit on matrix rows). What an SMU measures is the array current the nodal
solver gives (sneak paths and line resistance included) plus read noise; compliance clips and
is reported with the instrument's status; a fixed range overflows; more sensed lines than SMUs
are measured in passes."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.bias import device_iv, device_request
from protocols.errors import ProtocolError
from protocols.rig import Channels, CrossbarRig, DcRequest
from simulator import dc
from xbarlab.station import Station, load_station
from xbarlab.station.config import station_model

#: device kinetics and slow fluctuators frozen, so the comparison sees one state (the stress
#: physics is tested apart)
FROZEN = {"device": {"g0_set": 1e-15, "g0_reset": 1e-15, "rtn_amplitude": 0.0}}

B1500_XBAR = """
name: sim-b1500
rig: wgfmu
simulated: true
crossbar: xbar0
shape: [8, 8]
instruments:
  wgfmu: {address: "GPIB0::17::INSTR", top: 101, bottom: 102}
  b1500: {resource: "GPIB0::16::INSTR", smu_v3: 2, smu_2v3: 3,
          modules: [B1530A, B1517A, B1517A, B1517A, B1517A]}
  k707b: {resource: "GPIB0::18::INSTR", cards: {1: "7174A", 2: "7174A"}}
matrix:
  terminals: {top: A, bottom: B, v3: C, 2v3: D, smu4: E, smu5: F, gnd: G}
  rows: [[1, 1], [1, 2], [1, 3], [1, 4], [1, 5], [1, 6], [1, 7], [1, 8]]
  cols: [[2, 1], [2, 2], [2, 3], [2, 4], [2, 5], [2, 6], [2, 7], [2, 8]]
sim: {seed: 3}
"""


def _station(which: str, tmp_path, crossbars=None) -> Station:
    if which in ("4200", "sim-wgfmu"):
        st = load_station("sim-pmu" if which == "4200" else which)
    else:
        p = tmp_path / "sim-b1500.yaml"
        p.write_text(B1500_XBAR)
        st = load_station(p)
    if crossbars:
        sim = st.cfg.sim.model_copy(update={"crossbars": crossbars})
        st = Station(station_model().model_validate(
            st.cfg.model_dump() | {"sim": sim.model_dump()}), st.path)
    return st


def _mixed(xb, seed=5):
    """A mixed array: devices spread over 20..600 uS."""
    d = xb.state_dict()
    d["G"] = np.random.default_rng(seed).uniform(20e-6, 600e-6, xb.shape)
    d["Gv"] = np.zeros(xb.shape)
    xb.load_state_dict(d)


def _expected(xb, req: DcRequest, col: int) -> float:
    """Noise-free current into the array at the sensed bit line, from the nodal solver."""
    groups: dict[float, list] = {}
    for (kind, i), v in req.levels.items():
        groups.setdefault(float(v[0]), []).append((kind, i))
    forced = set(req.levels)
    if req.others == "ground":
        rest = [("row", i) for i in range(xb.shape[0])] + [("col", j) for j in range(xb.shape[1])]
        groups.setdefault(0.0, []).extend(x for x in rest if x not in forced)
    sources = []
    for v, lines in groups.items():
        lines = [x for x in lines if x != ("col", col)]
        if lines:
            sources.append(dc.Source(np.array([i for k, i in lines if k == "row"], int),
                                     np.array([i for k, i in lines if k == "col"], int), v))
    sources.append(dc.Source(np.zeros(0, int), np.array([col]), 0.0))
    return float(dc.operating_point(xb, sources).current[-1])


@pytest.mark.parametrize("which", ["4200", "B1500"])
@pytest.mark.parametrize("scheme", ["grounded", "v2", "v3"])
def test_smu_current_is_the_nodal_array_current(which, scheme, tmp_path):
    st = _station(which, tmp_path, {"xbar0": FROZEN})
    with st.open_rig() as rig:
        xb = st.world.crossbar
        _mixed(xb)
        p = xb.config.device
        for row, col in [(2, 5), (7, 0)]:
            req = device_request(rig.shape, row, col, [0.3], scheme=scheme, compliance=10e-3)
            want = _expected(xb, req, col)
            got = rig.dc(req).current[0, 0]
            sigma = p.read_noise_rel * abs(want) + p.read_noise_abs
            assert got == pytest.approx(want, abs=5 * sigma + 1e-8), (scheme, row, col)
            # sneak currents: V/2 and V/3 add the half-selected devices of the bit line
            dev = xb.G[row, col] * 0.3
            if scheme == "grounded":
                assert abs(-want - dev) < 0.05 * dev
            else:
                assert -want > 1.5 * dev


@pytest.mark.parametrize("which", ["4200", "B1500"])
def test_compliance_clips_and_is_reported_with_the_status(which, tmp_path):
    st = _station(which, tmp_path, {"xbar0": FROZEN})
    with st.open_rig() as rig:
        xb = st.world.crossbar
        _mixed(xb)
        g = xb.G[3, 4]
        limit = round(g * 0.3, 6)                  # 0.05 V stays below it, 0.6 V would not
        res = device_iv(rig, 3, 4, [0.05, 0.6], compliance=limit)
        assert not res.compliance[0] and res.current[0] == pytest.approx(g * 0.05, rel=0.05)
        assert res.compliance[1] and res.current[1] == pytest.approx(limit, rel=0.01)


def test_b1500_fixed_range_overflows_as_the_instrument_reports(tmp_path):
    st = _station("B1500", tmp_path, {"xbar0": FROZEN})
    with st.open_rig() as rig:
        _mixed(st.world.crossbar)
        small = device_request(rig.shape, 1, 1, [0.3], compliance=1e-3, i_range=1e-6,
                               fixed_range=True)
        res = rig.dc(small)
        assert res.overflow[0, 0] and np.isnan(res.current[0, 0])
        auto = device_request(rig.shape, 1, 1, [0.3], compliance=1e-3, i_range=1e-6)
        res = rig.dc(auto)                                       # limited auto ranges up
        assert not res.overflow[0, 0] and res.current[0, 0] < -1e-6


def test_4200_refuses_a_fixed_range_it_has_no_confirmed_command_for():
    st = load_station("sim-pmu")
    with st.open_rig() as rig:
        req = device_request(rig.shape, 1, 1, [0.1], compliance=1e-3, i_range=1e-6,
                             fixed_range=True)
        with pytest.raises(Exception, match="no fixed current range"):
            rig.dc(req)


def test_more_sensed_lines_than_smus_are_time_multiplexed(tmp_path):
    st = _station("4200", tmp_path, {"xbar0": FROZEN})
    with st.open_rig() as rig:
        xb = st.world.crossbar
        _mixed(xb)
        # every row at 0.2 V, every column sensed at 0 V: 8 sensed lines, 4 SMUs
        levels = {("row", i): [0.2] for i in range(8)} | {("col", j): [0.0] for j in range(8)}
        res = rig.dc(DcRequest(levels, [("col", j) for j in range(8)], 10e-3))
        assert res.passes > 1 and res.notes
        want = -xb.solver.grounded_column_currents(xb.conductance(), 0.2).sum(axis=0)
        assert np.allclose(res.current[0], want, rtol=0.01)


def test_a_request_needing_more_smus_than_the_rig_has_is_refused_before_anything_is_sent():
    st = load_station("sim-pmu")
    with st.open_rig() as rig:
        levels = {("row", i): [0.1 * i] for i in range(6)}      # six distinct levels
        with pytest.raises(ProtocolError, match="needs 6 SMUs"):
            rig.dc(DcRequest(levels, [("row", 0)], 1e-3, others="float"))


def test_single_crosspoint_reaches_the_device_through_the_rsus(tmp_path):
    st = _station("sim-wgfmu", tmp_path, {"dev0": FROZEN})      # the station's crosspoint
    with st.open_rig() as rig:
        assert rig.dc_capacity.fixed
        xb = st.world.crossbar
        res = device_iv(rig, 0, 0, [0.1], compliance=1e-3)
        g = xb.conductance()[0, 0]
        assert res.current[0] == pytest.approx(g * 0.1, rel=0.05)
    # after the rig is closed nothing is left biased, the RSUs pass nothing through
    assert not st.world.links


def test_rsus_pass_the_smus_after_pulses_too(tmp_path):
    # the WGFMU applies a channel's operation mode at update/execute (instruments.md §3.2): after
    # a pulse left the channels in FASTIV, the DC path must send its SMU mode to the instrument,
    # or the RSUs keep the WGFMU on the device and the SMU measures nothing
    st = _station("sim-wgfmu", tmp_path, {"dev0": FROZEN})
    with st.open_rig() as rig:
        xb = st.world.crossbar
        rig.read(0, 0)                                        # channels now in FASTIV
        res = device_iv(rig, 0, 0, [0.1], compliance=1e-3)
        assert res.current[0] == pytest.approx(xb.conductance()[0, 0] * 0.1, rel=0.05)
        rig.read(0, 0)                                        # and back to waveforms
        res = device_iv(rig, 0, 0, [0.1], compliance=1e-3)
        assert res.current[0] == pytest.approx(xb.conductance()[0, 0] * 0.1, rel=0.05)


# -- the analog read-out on the SMUs: rows driven, column currents measured -------------------

@pytest.mark.parametrize("which", ["4200", "B1500"])
def test_station_column_currents_are_the_nodal_solution(which, tmp_path):
    """Three word lines driven, one bit line measured at 0 V, the rest grounded: through the
    drivers and the emulated SMUs and 707B, each current is the nodal solver's (line resistance,
    sneak paths, sinh I-V) within the read noise, counted positive out of the array."""
    st = _station(which, tmp_path, {"xbar0": FROZEN})
    with st.open_rig() as rig:
        assert rig.channels == Channels(3, 3, lines=4)   # four SMUs shared by rows and columns
        xb = st.world.crossbar
        _mixed(xb)
        rows = np.array([1, 4, 6])
        v = np.array([[0.2, -0.1, 0.05], [-0.15, 0.2, 0.2], [0.0, 0.0, 0.1]])
        row_v = np.zeros((3, 8))
        row_v[:, rows] = v
        _, want = xb.solver.readout_currents(xb.conductance(), row_v)
        p = xb.config.device
        for col in (0, 5):
            got = rig.column_currents(rows, v, [col])[:, 0]
            sigma = p.read_noise_rel * np.abs(want[:, col]) + p.read_noise_abs
            assert np.all(np.abs(got - want[:, col]) <= 5 * sigma + 1e-8), (got, want[:, col])
            # by hand: the devices of the column at their row levels, less a little IR drop
            hand = v @ xb.conductance()[rows, col]
            assert np.all(np.abs(got - hand) < 0.1 * np.abs(hand) + 1e-7)
        assert rig.time_breakdown()["relay"] > 0          # routed through the matrix


def test_station_read_out_over_more_lines_than_smus_is_refused_at_the_seam(tmp_path):
    st = _station("4200", tmp_path)
    with st.open_rig() as rig:
        with pytest.raises(ValueError, match="4 SMUs for both: time-multiplex"):
            rig.column_currents([0, 1], np.full((1, 2), 0.1), [0, 1, 2])
        with pytest.raises(ValueError, match="3 sources: time-multiplex"):
            rig.column_currents([0, 1, 2, 3], np.full((1, 4), 0.1), [0])
        with pytest.raises(ValueError, match="3 meters: time-multiplex"):
            rig.column_currents([0], np.full((1, 1), 0.1), [0, 1, 2, 3])


def test_station_read_out_level_beyond_the_read_limit_never_reaches_an_instrument(tmp_path):
    from instruments.errors import SafetyLimitError

    st = _station("4200", tmp_path, {"xbar0": FROZEN})
    with st.open_rig() as rig:
        sent = dict(st.visa_library.instruments)
        emu = [e for e in sent.values() if hasattr(e, "smu")][0]
        t0, g0 = rig.clock, st.world.crossbar.conductance().copy()
        with pytest.raises(SafetyLimitError):        # v_read_max 0.5 V (DC levels reach 2.1 V)
            rig.column_currents([0, 1], np.array([[0.1, 0.2], [0.1, -0.6]]), [0])
        assert rig.clock == t0 and not emu.smu            # nothing sent, no SMU on
        np.testing.assert_array_equal(st.world.crossbar.conductance(), g0)


def test_station_read_out_stresses_the_devices_as_the_array_tester_does(tmp_path):
    """Each pattern of the analog read-out is a DC level held for the SMU's settling and
    integration: on the station (the emulated 4200's list sweep) that stress ages the slow
    fluctuators of every device of a driven row; the simulator's array tester applies the same
    stress, so both read-outs disturb a chip alike (it neglected it: the bench's read-out on it
    then moved the chip far less than the station's)."""
    from simulator.config import LatencyConfig
    from simulator.direct_rig import SimulatedRig

    st, twin = load_station("sim-pmu"), load_station("sim-pmu").chip    # two identical chips
    v = np.random.default_rng(2).uniform(-0.2, 0.2, (40, 3))
    aged = []
    for chip, open_rig in ((st.chip, lambda: st.open_rig("xbar0")),
                           (twin, lambda: SimulatedRig(twin["xbar0"], lab=twin.lab,
                                                       latency=LatencyConfig(
                                                           **st.cfg.sim.latency)))):
        xb = chip["xbar0"]
        before = xb.state_dict()["rtn_next"].copy()
        with open_rig() as rig:
            rig.column_currents([0, 1, 2], v, [0])
        aged.append(np.median(before - xb.state_dict()["rtn_next"], axis=-1))
    station, array = aged
    assert np.all(station[:3] > 0) and np.all(station[3:] == 0)    # the driven rows only
    np.testing.assert_allclose(array, station, rtol=0.02)


def test_station_read_out_drives_each_device_with_the_fewest_patterns(tmp_path, monkeypatch):
    """A 3x8 tile on the 4200's four SMUs: every call drives its rows with every pattern and
    grounds the columns it does not meter, so a device is driven once per column group. The
    read-out takes 1 row + 3 columns per call (each device driven 3 times per pattern; 3 rows +
    1 column drove it 8 times) and its superposed currents are the all-rows nodal solution."""
    from protocols.inference import TileMap, measure_tile

    calls = []
    real = CrossbarRig.column_currents

    def spy(self, rows, volts, cols):
        calls.append(list(rows))
        return real(self, rows, volts, cols)

    monkeypatch.setattr(CrossbarRig, "column_currents", spy)
    tm = TileMap(0, 0, np.array([0, 1, -1]), np.repeat(np.arange(4), 2), np.tile([0, 1], 4))
    st = _station("4200", tmp_path, {"xbar0": FROZEN})
    v = np.random.default_rng(3).uniform(-0.2, 0.2, (5, 3))
    with st.open_rig() as rig:
        xb = st.world.crossbar
        _mixed(xb)
        got = measure_tile(rig, tm, v)
    driven = np.zeros((3, 8), int)
    for rows in calls:
        driven[rows, :] += 1          # every device of a driven row, metered or not
    assert driven.max() == 3 and len(calls) == 9
    row_v = np.zeros((5, 8))
    row_v[:, :3] = v
    _, want = xb.solver.readout_currents(xb.conductance(), row_v)
    p = xb.config.device
    sigma = 3 * (p.read_noise_rel * np.abs(want) + p.read_noise_abs)   # three reads added
    assert np.all(np.abs(got - want) <= 5 * sigma + 1e-3 * np.abs(want))


def test_inference_on_the_station_multiplexes_its_smus_and_says_so(tmp_path, caplog):
    """`protocols.inference` on sim-pmu's own SMUs: a 3x6 tile is read 1 row + 3 columns per
    call (3 row groups, 2 column groups), a 4x2 tile 2 rows + 2 columns (2 row groups); each
    group is one DC pass (one matrix routing); it is logged and recorded, and every current is
    the nodal solution."""
    from protocols.inference import run
    from training.export import plan_from_weights

    rng = np.random.default_rng(0)
    plan = plan_from_weights([rng.normal(size=(3, 2)), rng.normal(size=(1, 3))],
                             [rng.normal(size=3), rng.normal(size=1)], g_min=100e-6,
                             g_max=400e-6)
    assert [tuple(s) for s in plan.tile_shape] == [(3, 6), (4, 2)]
    st = _station("4200", tmp_path, {f"xbar{t}": FROZEN for t in range(4)})
    names = ["xbar0", "xbar1"]
    for t, name in enumerate(names):
        _mixed(st.chip[name], seed=t)
    x = rng.uniform(-1, 1, (4, 2))
    with caplog.at_level("INFO", logger="xbarlab.inference"):
        res = run(plan, st.tile_opener(), names, tmp_path / "i.h5", (x, np.zeros(4, int)),
                  progress=False)
    s = res.summary
    assert (s["row_groups"], s["col_groups"]) == (3, 2)
    assert "6 columns measured in 2 groups" in caplog.text
    assert "3 rows driven in 3 groups" in caplog.text
    assert "4 rows driven in 2 groups" in caplog.text
    tim = res.tables["timing"]
    analog = tim[tim.kind == 0]
    # one routing per pass: 3 x 2 passes on tile 0, 2 on tile 1 (15 ms each)
    assert analog.relay.sum() == pytest.approx((6 + 2) * 15e-3)
    assert s["per_inference_by_category_s"]["command"] > 0     # sent to the instruments
    drive, cur = res.tables["drive"], res.tables["currents"]
    for t, name in enumerate(names):
        xb = st.chip[name]
        d, c = drive[drive.tile == t], cur[cur.tile == t]
        row_v = np.zeros((4, 8))
        row_v[d.point, d.row] = d.volts
        _, want = xb.solver.readout_currents(xb.conductance(), row_v)
        got = np.zeros((4, 8))
        got[c.point, c.col] = c.current
        used = np.unique(c.col)
        p = xb.config.device
        sigma = p.read_noise_rel * np.abs(want[:, used]) + p.read_noise_abs
        assert np.all(np.abs(got[:, used] - want[:, used]) <= 5 * sigma + 1e-8)


# -- the 4200's list sweep: one system-mode test per DC pass ----------------------------------

def _k4200_emulator(st):
    return next(e for e in st.visa_library.instruments.values() if hasattr(e, "tests"))


@pytest.mark.parametrize("path", ["batched", "per point"])
def test_4200_read_out_is_one_list_sweep_whose_time_follows_its_points(path, tmp_path,
                                                                       monkeypatch):
    """Each read-out call is one system-mode test with the same messages whatever its number
    of patterns k; k patterns cost k x (settling + 0.1 PLC) of measurement. The emulator's
    batched nodal solve and its point-by-point operating points (forced here) both give the
    nodal solution."""
    from simulator.emulators import world as world_module

    if path == "per point":
        monkeypatch.setattr(world_module, "SWEEP_CHANGE", -1.0)
    st = _station("4200", tmp_path, {"xbar0": FROZEN})
    with st.open_rig() as rig:
        xb, emu, lat = st.world.crossbar, _k4200_emulator(st), st.world.latency
        _mixed(xb)
        p = xb.config.device
        rows = np.array([0, 3, 7])
        rng = np.random.default_rng(2)
        trips, dc_time = [], []
        for k in (2, 6):
            v = rng.uniform(-0.2, 0.2, (k, 3))
            row_v = np.zeros((k, 8))
            row_v[:, rows] = v
            _, want = xb.solver.readout_currents(xb.conductance(), row_v)
            tests, n0, t0 = emu.tests, rig.pmu.round_trips, rig.time_breakdown().get("dc", 0.0)
            got = rig.column_currents(rows, v, [2])[:, 0]
            assert emu.tests == tests + 1
            trips.append(rig.pmu.round_trips - n0)
            dc_time.append(rig.time_breakdown().get("dc", 0.0) - t0)
            sigma = p.read_noise_rel * np.abs(want[:, 2]) + p.read_noise_abs
            assert np.all(np.abs(got - want[:, 2]) <= 5 * sigma + 1e-8), (got, want[:, 2])
        assert trips[0] == trips[1]
        per_point = lat.smu_settle + 0.1 / lat.line_frequency
        assert dc_time == pytest.approx([2 * per_point, 6 * per_point])


def test_4200_list_sweep_applies_each_points_dc_stress(tmp_path):
    """The list sweep holds each point's levels on the devices: read levels leave a device
    as it was, a sweep at 1.2 V with 10 ms per point moves it (as the spot path's hold does)."""
    st = _station("4200", tmp_path)
    with st.open_rig() as rig:
        xb, emu = st.world.crossbar, _k4200_emulator(st)
        g0 = xb.conductance()[2, 3]
        device_iv(rig, 2, 3, [0.05] * 4, compliance=1e-3, hold=10e-3)
        assert xb.conductance()[2, 3] == pytest.approx(g0, rel=1e-3)
        device_iv(rig, 2, 3, [1.2] * 4, compliance=1e-3, hold=10e-3)
        assert emu.tests == 2
        assert xb.conductance()[2, 3] > 1.2 * g0
