"""Emulated instruments: state, error queues, real-instrument behaviour on bad input, faults,
and the pyvisa-sim definitions."""

from importlib import resources

import numpy as np
import pytest
import pyvisa

from instruments import InstrumentError, InstrumentTimeout
from instruments import wgfmu as W
from instruments.b1500 import B1500
from instruments.k707b import K707B
from instruments.k4200 import K4200
from instruments.limits import SafetyLimits
from instruments.wiring import Wiring
from simulator.crossbar import Crossbar
from simulator.emulators import (
    B1500Emulator,
    EmulatedWgfmuLibrary,
    K707BEmulator,
    K4200Emulator,
    LabWorld,
    Segment,
)
from simulator.visa_backend import EmulatedVisaLibrary

PMU = "TCPIP0::192.168.0.2::1225::SOCKET"


def _world(rows=4, cols=4):
    from simulator.config import CrossbarConfig
    xb = Crossbar(CrossbarConfig(rows=rows, cols=cols), seed=3)
    m, n = xb.shape
    wiring = Wiring(rows=tuple((1, i + 1) for i in range(m)),
                    cols=tuple((2, j + 1) for j in range(n)),
                    letters={"drive": "A", "sense": "B", "v3": "C", "2v3": "D", "gnd": "E"},
                    terminals={"drive": "pmu1", "sense": "pmu2", "v3": "div_v3",
                               "2v3": "div_2v3", "gnd": "gnd"},
                    dividers={"div_v3": ("pmu1", 1 / 3), "div_2v3": ("pmu1", 2 / 3)})
    return xb, LabWorld(xb, wiring)


@pytest.fixture
def lab():
    xb, world = _world()
    lib = EmulatedVisaLibrary({"GPIB0::18::INSTR": K707BEmulator(world, cards={1: "7174A",
                                                                                2: "7174A"}),
                               PMU: K4200Emulator(world),
                               "GPIB0::17::INSTR": B1500Emulator(world)})
    rm = pyvisa.ResourceManager(lib)
    return xb, world, lib, rm


def test_resource_manager_takes_the_library_instance(lab):
    _, _, lib, rm = lab
    res = rm.open_resource("GPIB0::18::INSTR")
    res.read_termination = res.write_termination = "\n"
    assert res.query("*IDN?").startswith("Keithley Instruments Inc., Model 707B")
    with pytest.raises(pyvisa.errors.VisaIOError):
        rm.open_resource("GPIB0::5::INSTR")


def test_707b_set_semantics_and_errors(lab):
    _, world, lib, rm = lab
    k = K707B.open(rm, "GPIB0::18::INSTR")
    emu = lib.instruments["GPIB0::18::INSTR"]
    k.close_channels(["1A01", "1B02"])
    k.close_channels(["2C05"])                       # close ADDS
    assert k.closed_channels() == ["1A01", "1B02", "2C05"]
    k.exclusive_close(["1A03"])
    assert emu.closed == {"1A03"}
    with pytest.raises(InstrumentError, match="1115"):  # slot 3 has no card: nothing closes
        k.close_channels(["3A01"])
    assert emu.closed == {"1A03"}
    with pytest.raises(InstrumentTimeout):          # Lua syntax error: chunk not run, no reply
        k.query("print(channel.getclos(")
    assert k.next_error()[0] == -285
    k.close()
    assert emu.closed == set()
    assert world.clock.totals["relay"] > 0


def test_b1500_flex_error_queue_and_bad_query(lab):
    _, world, lib, rm = lab
    b = B1500.open(rm, "GPIB0::17::INSTR")
    b.connect()
    b._res.write("XYZ 1")          # past the driver's guard (which refuses unknown commands)
    with pytest.raises(InstrumentError, match="100"):
        b.check_errors("XYZ 1")
    with pytest.raises(InstrumentError, match="150"):   # DV on a channel not enabled
        b.smu(2).force_voltage(0.1, 1e-3)
    b.enable([b.smu(2), b.smu(3)])
    b.force_voltages({b.smu(2): 0.4, b.smu(3): 0.8}, 1e-3)
    emu = lib.instruments["GPIB0::17::INSTR"]
    assert emu.output_levels() == {2: 0.4, 3: 0.8}
    assert world.static["smu2"] == 0.4
    with pytest.raises(InstrumentTimeout):         # TI on an empty slot: no reply
        b.smu(9).measure_current()
    b.close()
    assert all(np.isnan(v) for v in emu.output_levels().values())


def test_pmu_execute_pulses_routed_devices(lab):
    xb, world, lib, rm = lab
    k7 = K707B.open(rm, "GPIB0::18::INSTR")
    # V/3 write routing of device (1, 2)
    sel = ["1A02", "2B03"] + [f"1C{i:02d}" for i in (1, 3, 4)] + [f"2D{j:02d}" for j in (1, 2, 4)]
    k7.exclusive_close(sel)
    p = K4200.open(rm, PMU)
    p.pmu_init()
    t = [1e-7, 2e-8, 2e-7, 2e-8, 1e-7]
    z = [0] * 5
    p.send_setup(p.pmu(1).sarb(1, t, [0, 0, 1.5, 1.5, 0], [0, 1.5, 1.5, 0, 0], z, z, z)
                 + p.pmu(2).sarb(1, t, [0] * 5, [0] * 5, z, z, z)
                 + [p.pmu(1).seq_list([(1, 1)]), p.pmu(2).seq_list([(1, 1)])])
    p.pmu(1).output(True)
    p.pmu(2).output(True)
    g0 = xb.conductance()
    p.execute()
    d = xb.conductance() - g0
    others = np.abs(np.delete(d.ravel(), 6))
    assert d[1, 2] > 5e-6 and np.median(others) < 0.01 * d[1, 2] and others.max() < d[1, 2]
    # a sequence list for an undefined sequence is refused with an error text, not ACK
    with pytest.raises(InstrumentError, match="-804"):
        p.cmd(":PMU:SARB:WFM:SEQ:LIST 1,7,1")
        p.execute()
    # past the driver's guard (which refuses unknown commands): the 4200 answers its error
    assert p._res.query(":PMU:BOGUS 1") == "Unrecognized command (-992)"
    p.close()
    emu = lib.instruments[PMU]
    assert not any(emu.outputs.values())


def test_faults_one_shot_and_disconnect(lab):
    _, _, lib, rm = lab
    k = K707B.open(rm, "GPIB0::18::INSTR")
    lib.faults.add("garbled", match="*IDN?")
    assert k.idn() != K707BEmulator.idn and sorted(k.idn()) == sorted(K707BEmulator.idn)
    assert k.idn() == K707BEmulator.idn             # one-shot
    lib.faults.add("truncated", match="*IDN?")
    assert len(k.idn()) < len(K707BEmulator.idn)
    lib.faults.add("error", match="exclusiveclose")
    with pytest.raises(InstrumentError, match="999"):
        k.exclusive_close(["1A01"])
    lib.faults.add("relay_stuck", match="1A02")
    k.exclusive_close(["1A02", "2A01"])
    emu = lib.instruments["GPIB0::18::INSTR"]
    assert "1A02" in emu.closed and "1A02" not in emu.physically_closed()
    lib.faults.add("disconnect")
    with pytest.raises(InstrumentError, match="communication failed"):
        k.idn()
    assert [f[0] for f in lib.faults.fired][-1] == "disconnect"


def test_world_grounded_read_and_short_detection():
    xb, world = _world()
    emu = K707BEmulator(world, cards={1: "7174A", 2: "7174A"})
    emu.handle('channel.exclusiveclose("1A01,2B01,1E02,1E03,1E04,2E02,2E03,2E04")')
    world.static.update(pmu1=0.0, pmu2=0.0)
    res = world.run([Segment(10e-6, {"pmu1": 0.2, "pmu2": 0.0}, {"pmu1": 0.2, "pmu2": 0.0},
                             [("pmu2", 2e-6, 9e-6)])])
    (_, _, i), = res["pmu2"]
    assert i < 0 and abs(-i / 0.2 - xb.conductance()[0, 0]) / xb.conductance()[0, 0] < 0.05
    emu.handle('channel.close("1C01")')             # row 0 now on drive AND V/3 tap
    from simulator.errors import SimulatorError
    with pytest.raises(SimulatorError, match="short"):
        world.line_levels({"pmu1": 1.0})


def test_wgfmu_library_state_machine_and_error_codes():
    xb = Crossbar(seed=5)
    from simulator.config import CrossbarConfig
    xb = Crossbar(CrossbarConfig(rows=1, cols=1), seed=5)
    world = LabWorld(xb, Wiring(fixed={("row", 0): "wgfmu101", ("col", 0): "wgfmu102"}))
    lib = EmulatedWgfmuLibrary(world)
    assert lib.connect(101) == W.CONTEXT_ERROR               # no session yet
    assert lib.createPattern("p", 0.0) == 0                  # patterns are host-side
    assert lib.createPattern("p", 0.0) == W.PATTERN_ALREADY_EXISTS_ERROR
    assert lib.addVector("q", 1e-8, 0) == W.PATTERN_NOT_FOUND_ERROR
    assert lib.addVector("p", 5e-9, 0.2) == W.PARAMETER_OUT_OF_RANGE_ERROR  # below 10 ns
    assert lib.addVector("p", 72e-9, 0.2) == 0 and lib.patterns["p"]["vec"][-1][0] == \
        pytest.approx(70e-9)                                 # rounded to the 10 ns grid
    assert lib.addVector("p", 10e-6, 0.2) == 0
    assert lib.setMeasureEvent("p", "m", 9e-6, 2, 1e-6, 1e-6, 12000) == \
        W.PARAMETER_OUT_OF_RANGE_ERROR                       # ends after the pattern
    assert lib.setMeasureEvent("p", "m", 2e-6, 2, 2e-6, 1e-6, 12000) == 0
    assert lib.addSequence(103, "p", 1) == W.CHANNEL_NOT_FOUND_ERROR
    assert lib.openSession("GPIB0::17::INSTR") == 0
    assert lib.getMeasureValueSize(101)[0] == W.RESULT_NOT_READY_ERROR
    assert lib.addSequence(101, "p", 1) == 0
    assert lib.execute() == W.CONTEXT_ERROR                  # channel still in SMU mode
    lib.setOperationMode(101, W.OPERATION_MODE_FASTIV)
    lib.setMeasureMode(101, W.MEASURE_MODE_VOLTAGE)
    lib.connect(101)
    lib.connect(102)
    assert lib.execute() == 0
    rc, n, _ = lib.getMeasureValueSize(101)
    assert rc == 0 and n == 2
    rc, t, v = lib.getMeasureValues(101, 0, 2)
    assert v == pytest.approx([0.2, 0.2]) and t[0] == pytest.approx(2.5e-6)
    lib.setMeasureCurrentRange(101, W.MEASURE_CURRENT_RANGE_1UA)   # setup changed
    assert lib.getMeasureValues(101, 0, 2)[0] == W.RESULT_OUT_OF_DATE_ERROR
    assert lib.getErrorSize()[1] > 0 and "CONTEXT" in lib.getError()[1]


def test_pyvisa_sim_definitions_serve_the_drivers():
    base = resources.files("simulator") / "yaml"
    rm = pyvisa.ResourceManager(f"{base / 'b1500.yaml'}@sim")
    # limits wider than the sim's specs, so the sim (not the driver's guard) refuses 3 V
    b = B1500.open(rm, "GPIB0::17::INSTR", limits=SafetyLimits(v_set_max=5.0))
    b.connect()
    assert b.idn().startswith("Agilent") and b.modules()[0][0] == "B1530A"
    b.smu(2).force_voltage(0.5, 1e-3)
    with pytest.raises(InstrumentError, match="B1500 error 100"):  # out of specs -> queue
        b.batch(["DV 2,0,3,0.001"])                          # 3 V: beyond specs
    assert b.smu(2).measure_current().value == pytest.approx(5e-12)
    rm7 = pyvisa.ResourceManager(f"{base / 'k707b.yaml'}@sim")
    k = K707B.open(rm7, "GPIB0::18::INSTR")
    k.exclusive_close(["2B01", "1A01"])
    assert k.closed_channels() == []                        # canned nil: no state in pyvisa-sim
    rm42 = pyvisa.ResourceManager(f"{base / 'k4200.yaml'}@sim")
    p = K4200.open(rm42, PMU)
    assert p.idn().startswith("KEITHLEY INSTRUMENTS,KI4200A,")
    assert p.query("ID") == "KI4200A V4.6.0"
    p.cmd(":PMU:INIT 1")
    assert p._res.query(":PMU:NOPE") == "Unrecognized command (-992)"  # past the guard


def test_every_message_and_instrument_call_is_charged_to_the_clock(lab):
    """physics.md §6: one gpib_cmd per message exchange (a KXCI setter waits for its ACK, a TSP
    chunk for its reply), one relay_switch per changed 707B selection, one round_trip per
    execution; WGFMU pattern building is host-side and free, calls that reach the instrument
    are not."""
    _, world, lib, rm = lab
    lat, clk = world.latency, world.clock
    k = K4200.open(rm, PMU)
    m = K707B.open(rm, "GPIB0::18::INSTR")
    before = clk.totals.get("command", 0.0)
    n0 = k.round_trips + m.round_trips
    k.pmu_init(channels=(1,))
    m.exclusive_close(["1A01", "2B01"])
    n = k.round_trips + m.round_trips - n0
    assert n == 6
    assert clk.totals["command"] - before == pytest.approx(n * lat.gpib_cmd)
    assert clk.totals["relay"] == pytest.approx(lat.relay_switch)

    wl = EmulatedWgfmuLibrary(world)
    w = W.Wgfmu(wl)
    w.open("GPIB0::17::INSTR")                    # session + initialize
    t = dict(clk.totals)
    ch = w.channel(101)
    ch.setup()
    w.create_pattern("p", 0.0)
    w.add_vectors("p", [(1e-6, 0.0)])
    assert clk.totals == t                         # host-side until execute
    ch.connect()
    ch.connect()                                   # already connected: nothing sent
    assert clk.totals["command"] - t["command"] == pytest.approx(lat.gpib_cmd)
    assert wl.exchanges == 2                       # initialize, connect


def test_pmu_emulator_holds_at_most_2048_segments_per_channel(lab):
    """The emulated 4225-PMU refuses a sequence that would take a channel past 2048 segments
    in all its sequences (the driver's limit; both to confirm on hardware); INIT clears them."""
    _, _, lib, _ = lab
    emu = lib.instruments[PMU]
    assert emu.handle(":PMU:INIT 1") == "ACK"
    times = ",".join(["1e-06"] * 128)
    for seq in range(1, 17):
        assert emu.handle(f":PMU:SARB:SEQ:TIME 1,{seq},{times}") == "ACK"
    assert emu.handle(f":PMU:SARB:SEQ:TIME 1,3,{times}") == "ACK"     # redefined: same count
    assert emu.handle(f":PMU:SARB:SEQ:TIME 2,1,{times}") == "ACK"     # the other channel
    assert "-122" in emu.handle(":PMU:SARB:SEQ:TIME 1,17,1e-06")
    assert "-122" in emu.handle(":PMU:SARB:SEQ:TIME 1,513,1e-06")
    assert emu.handle(":PMU:INIT 1") == "ACK"
    assert emu.handle(f":PMU:SARB:SEQ:TIME 1,17,{times}") == "ACK"
