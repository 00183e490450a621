"""A pulse or bias beyond the station's limits is impossible through any public entry point.

Every attempt below must raise (SafetyLimitError, or ConfigError for a tuning/campaign/transfer
config whose ramps leave the envelope) and leave the emulated instruments and the crossbar
exactly as they were: nothing sent, nothing applied. The station limits are those of the
shipped sim stations: SET <= +2.1 V, RESET >= -2.5 V, |bias| <= 0.5 V, width in [20 ns, 1 ms]
(PMU) / [10 ns, 1 ms] (WGFMU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from reliability_support import (
    assert_unchanged,
    open_station,
    single_thread_blas,  # noqa: F401 (autouse fixture)
    snapshot,
)

from instruments.b1500 import B1500
from instruments.errors import SafetyLimitError
from instruments.limits import SafetyLimits
from protocols.campaigns import CAMPAIGNS
from protocols.errors import ConfigError, ProtocolError
from protocols.rig import ReadSettings
from protocols.tuning import TuneConfig, tune
from simulator.emulators import B1500Emulator
from simulator.visa_backend import EmulatedVisaLibrary

BAD_PULSES = [(2.2, 200e-9), (-2.6, 200e-9), (math.nan, 200e-9), (math.inf, 200e-9),
              (1.0, 5e-9), (1.0, 2e-3), (1.0, math.nan), (-1.0, -200e-9)]


@pytest.fixture(scope="module")
def pmu():
    st, rig = open_station("sim-pmu")
    rig.pulse_and_read(0, 0, 1.0, 200e-9)   # a rig in use: routed, outputs on, setup sent
    yield st, rig
    rig.close()


@pytest.fixture(scope="module")
def wgf():
    st, rig = open_station("sim-wgfmu")
    rig.pulse_and_read(0, 0, 1.0, 200e-9)
    yield st, rig
    rig.close()


def _applied(st) -> dict:
    """Write excursions the crossbar saw (conductances alone may relax while relays switch to
    the safe state, and a campaign may take a read, inside the bias limit, before it tunes)."""
    return st.world.pulses_applied


def _refused(st, fn, *args, exc=SafetyLimitError, strict=True, **kw):
    """`fn` raises `exc`; strict: no emulator state changed at all (nothing was even sent);
    otherwise: nothing executed or applied (a protocol may still make the rig safe)."""
    before, applied = snapshot(st), _applied(st)
    with pytest.raises(exc) as ei:
        fn(*args, **kw)
    assert "\n" not in str(ei.value)
    assert _applied(st) == applied
    if strict:
        assert_unchanged(before, snapshot(st))
    return ei.value


@pytest.mark.parametrize("volts,seconds", BAD_PULSES)
@pytest.mark.parametrize("station", ["pmu", "wgf"])
def test_rig_pulse_entry_points_refuse(request, station, volts, seconds):
    st, rig = request.getfixturevalue(station)
    _refused(st, rig.pulse, 1 if station == "pmu" else 0, 0, volts, seconds)
    _refused(st, rig.pulse_and_read, 0, 0, volts, seconds, n_reads=2)


def test_rig_refuses_a_read_voltage_above_the_bias_limit():
    st, rig = open_station("sim-pmu")
    with pytest.raises(SafetyLimitError):
        type(rig)(rig.pmu, rig.matrix, rig.wiring, limits=rig.limits,
                  read=ReadSettings(volts=0.6))
    rig.close()


def _received(st, resource):
    """The messages the emulated instrument behind `resource` receives from now on."""
    emu = st.visa_library.instruments[resource]
    got: list[str] = []
    handle = emu.handle
    emu.handle = lambda msg: (got.append(msg), handle(msg))[1]
    return got


K4200_RES = "TCPIP0::192.168.0.2::1225::SOCKET"

#: KXCI commands that set an output level, each at a level beyond the station limits (+2.1 V,
#: -2.5 V, 10 mA): the ones the guard parses, and real or plausible ones it does not know
#: (standard-pulse, sweep, system-mode, PGU, user-library), which an allow-list must refuse
RAW_4200 = [
    "DV1,0,3,0.01", "DV1,1,-3,0.001", "US;DV2,0,-2.6,1e-3", "DV1, 0, 5, 0.01",
    "DV1,0,0.1,0.05",                                   # compliance beyond 10 mA
    "DI1,6,1e-5,5", "DI1,6,-1e-5,3", "DI1,9,0.05,1",   # voltage compliance / current
    ":PMU:SARB:SEQ:STARTV 1,1,0,0,2.5,2.5,0", ":PMU:SARB:SEQ:STOPV 1,1,0,-3,-3,0,0",
    ":PMU:SARB:SEQ:STARTV 1,1,nan", ":PMU:SARB:SEQ:STARTV 1,1,1e999",
    ":PMU:SARB:SEQ:STARTV:ADD 1,1,5",
    ":PMU:PULSE:TRAIN 1, 0, 5", ":PMU:STEP:PULSE:AMPLITUDE 1, 5",
    ":PMU:SWEEP:PULSE:AMPLITUDE 1, 0, 5, 0.5", ":PMU:PULSE:VHIGH 1, 5", ":PMU:PULSE:VLOW 1, -5",
    ":PMU:PULSE:BASE 1, 5", ":PMU:DCV 1, -4", "PV 5", "DS1, 5", "VC 1, 5, 0.01",
    "VR 1, 0, 5, 0.1, 0.01", "VP 5, 5, 3, 0.01", "VL1,1, 0.01, 0, 5", "EX nvm pulse(1,5)",
    "dv1,0,5,0.01", "DV1,0,5V,0.01", "ID;DV1,0,5,0.01", "DV1,0,1,0.001;DS1, 5",
]


@pytest.mark.parametrize("command", RAW_4200)
def test_k4200_raw_level_commands_beyond_limits_never_leave(pmu, command):
    st, rig = pmu
    got = _received(st, K4200_RES)
    for send in (rig.pmu.write, rig.pmu.query, rig.pmu.cmd):
        e = _refused(st, send, command)
        assert e.instrument == "K4200" and e.command == command
    assert got == []


def test_k4200_raw_guard_passes_known_commands_within_limits(pmu):
    _, rig = pmu
    for command in ("DV1,0,1.5,0.001", "DV1", "DI1,6,1e-5,2", "US;DV2,0,-2.5,1e-3", "TV1",
                    ":PMU:SARB:SEQ:STARTV 1,1,0,2.1,-2.5", "ID", "BC", "SP", "*RST",
                    ":ERROR:LAST:CLEAR", ":PMU:OUTPUT:STATE 2, 1", "GP 1 2", "RG 1, 1e-07",
                    "RG 4,1e-9", "IT1", "IT3", ":PMU:RPM:CONFIGURE PMU1-2, 2"):
        rig.pmu.check_outgoing(command)


def test_k4200_driver_methods_send_only_what_the_guard_knows(tmp_path):
    """Every message the driver sends for its own methods and a campaign passes the guard (a
    refusal would raise here); recorded at the instrument, so each really left."""
    st, rig = open_station("sim-pmu")
    got = _received(st, K4200_RES)
    module, cls = CAMPAIGNS["disturbance"]
    with rig:
        module.run(rig, cls(devices=[(0, 0), (1, 1)]), tmp_path / "d.h5", seed=0,
                   progress=False)
        p = rig.pmu
        p.idn(), p.options(), p.last_error(), p.check_errors()
        p.smu(1).force_voltage(0.2, 1e-3)
        p.smu(1).measure_current()
        p.smu(1).off()
        p.pmu(1).rpm_switch(0)
        p.ul_get(1, 2)
        # the DC path: RPMs to their SMUs, routing, user mode, integration, ranges, levels,
        # measurements, release
        bringup = CAMPAIGNS["bringup"]
        bringup[0].run(rig, bringup[1](), tmp_path / "b.h5", progress=False)
        p.abort()
        p.make_safe()
    heads = {m.split(" ")[0].split(",")[0] for m in got}
    assert {":PMU:SARB:SEQ:STARTV", ":PMU:SARB:SEQ:TIME", ":PMU:SARB:WFM:SEQ:LIST",
            ":PMU:EXECUTE", ":PMU:DATA:GET", ":PMU:OUTPUT:STATE", ":PMU:INIT", "EX", "GP",
            "US", "DV1", "TI1", "*IDN?", "*OPT?", ":ERROR:LAST:GET"} <= heads, heads


def test_k4200_driver_methods_refuse(pmu):
    st, rig = pmu
    p = rig.pmu
    _refused(st, p.smu(1).force_voltage, 2.2, 1e-3)
    _refused(st, p.smu(1).force_voltage, 0.3, 0.5)              # compliance above 10 mA
    t = [100e-9, 20e-9, 200e-9, 20e-9, 100e-9]
    z = [0] * 5
    for levels in ([0, 0, 3.0, 3.0, 0], [0, -2.6, -2.6, 0, 0], [0, 0, math.nan, 0, 0]):
        _refused(st, lambda lv=levels: p.send_setup(p.pmu(1).sarb(1, t, lv, lv, z, z, z)))
    _refused(st, p.send_setup, [("x", ":PMU:SARB:SEQ:STARTV 1,1,0,2.2")])


@pytest.fixture
def b1500():
    emu = B1500Emulator(None)
    sent: list[str] = []
    handle = emu.handle
    emu.handle = lambda msg: (sent.append(msg), handle(msg))[1]
    lib = EmulatedVisaLibrary({"GPIB0::17::INSTR": emu})
    import pyvisa

    drv = B1500.open(pyvisa.ResourceManager(lib), "GPIB0::17::INSTR", limits=SafetyLimits())
    drv.enable([drv.smu(2), drv.smu(3)])
    yield drv, emu, sent
    drv.close()


def test_b1500_dc_bias_entry_points_refuse(b1500):
    drv, emu, sent = b1500
    n, levels = len(sent), dict(emu.levels)
    attempts = [
        lambda: drv.smu(2).force_voltage(2.2, 1e-3),
        lambda: drv.force_voltages({drv.smu(2): 0.1, drv.smu(3): -2.6}, 1e-3),   # one bad level: none is sent
        lambda: drv.smu(2).force_voltage(0.1, 0.2),                # compliance above the limit
        lambda: drv.smu(2).dv(math.inf, 1e-3),
        lambda: drv.batch(["CN 2", "DV 2,0,3.0,1e-3"]),
    ]
    for attempt in attempts:
        with pytest.raises(SafetyLimitError):
            attempt()
    assert len(sent) == n and emu.levels == levels          # not one byte went out
    drv.force_voltages({drv.smu(2): 0.2, drv.smu(3): -0.4}, 1e-3)              # inside the limits: sent
    assert emu.levels == {2: 0.2, 3: -0.4}


#: FLEX commands that set a level, beyond the limits or in a form the guard cannot check
RAW_B1500 = [
    "DV 2,0,3,1e-3", "DV2,0,-3,1e-3", "dv 2,0,3,1e-3", "DV 2,20,2.5,1e-3;ERRX?",
    "DV 2,0,0.1,0.2",               # compliance 200 mA
    "DV 2,0,1",                     # no compliance: the SMU's default is not checkable
    "DV 2,0,nan,1e-3", "DV 2,0,1E999,1e-3",
    "DI 2,0,1e-5,12", "DI 2,0,-1e-5,-3", "DI 2,0,0.05,1",
    "PV 2,0,0,5,1e-3", "WV 2,1,0,0,4,11,1e-3", "WI 2,1,0,0,1e-2,11,5", "MV 2,0,0,5,1e-3",
    "TDV 2,0,5", "RZ", "XE", "CN 2;DV 2,0,3,1e-3", "DV 2,0,0.5,1e-3;WV 2,1,0,0,4,11,1e-3",
]


@pytest.mark.parametrize("command", RAW_B1500)
def test_b1500_raw_level_commands_beyond_limits_never_leave(b1500, command):
    drv, emu, sent = b1500
    n, levels = len(sent), dict(emu.levels)
    for send in (drv.write, drv.query, lambda c: drv.batch([c])):
        with pytest.raises(SafetyLimitError) as ei:
            send(command)
        assert ei.value.instrument == "B1500" and command in ei.value.command
    assert len(sent) == n and emu.levels == levels


def test_b1500_raw_guard_passes_known_commands_within_limits(b1500):
    drv, _, _ = b1500
    for command in ("DV 2,0,-2.5,1e-3", "dv 2,20,0.5,0.001", "DV 2,0,1,1e-3,0,16",
                    "DI 2,0,1e-4,2", "*OPC?", "ERR?", "ERRX? 0", "TIV 2", "RI 2,-16",
                    "AAD 2,1", "BC", "TSR", "cn 2,3", "DZ", "CL 2", "AIT 1,2,3", "AIT 0,2,1",
                    "TV 3", "TI 2,-14", "DZ 2,3"):
        drv.check_outgoing(command)


def test_b1500_driver_methods_send_only_what_the_guard_knows(b1500):
    drv, emu, sent = b1500
    drv.idn(), drv.modules(), drv.errors()
    drv.force_voltages({drv.smu(2): 0.3, drv.smu(3): -0.3}, 1e-3)
    drv.smu(2).measure_current()
    drv.zero()
    drv.disable([drv.smu(3)])
    drv.disable()
    drv.reset()
    drv.connect()
    drv.enable([drv.smu(2)])
    smus = [drv.smu(2), drv.smu(3)]
    drv.prepare_smus(smus, nplc=1, i_range=1e-6, fixed=True)
    drv.force_voltages(dict(zip(smus, (0.1, 0.0), strict=True)), 1e-3)
    drv.smu(3).measure_voltage()
    drv.release_smus(smus)
    drv.make_safe()
    heads = {m.split(" ")[0].split(";")[0] for m in sent}
    assert {"*IDN?", "UNT?", "ERRX?", "DV", "TI", "DZ", "CL", "*RST", "FMT", "CN", "TV"} <= heads
    assert any("AIT 1,2,1" in m and "RI 3,-14" in m for m in sent)


def test_wgfmu_driver_patterns_refuse(wgf):
    st, rig = wgf
    w = rig.wgfmu
    _refused(st, w.create_pattern, "bad", 2.2)
    _refused(st, w.add_vectors, "top", [(10e-9, 1.0), (10e-9, -2.6)])   # all-or-nothing
    _refused(st, w.add_vectors, "top", [(10e-9, math.nan)])


def test_tuning_with_ramp_caps_beyond_limits_refuses_before_any_pulse(pmu):
    st, rig = pmu
    for over in ({"v_set_max": 2.5}, {"v_reset_min": -2.8}, {"width": 5e-9}):
        cfg = TuneConfig(**over)
        _refused(st, tune, rig, 2, 2, 200e-6, cfg, exc=ConfigError)


@pytest.mark.parametrize("target", [250.0, 1.0, 1e-9, 1e-6, 500e-6, 496e-6])
def test_tuning_target_the_station_cannot_verify_refuses_before_any_read(pmu, target):
    st, rig = pmu
    e = _refused(st, tune, rig, 2, 2, target, exc=ConfigError)
    assert "verify" in str(e)


@pytest.mark.parametrize("campaign,over", [
    ("disturbance", {"g_high": 1.0}), ("disturbance", {"g_low": 1e-9}),
    ("stuck", {"top_level": 400.0}), ("tuning-untuning", {"g_low": 1e-7, "off_floor": 1e-7}),
])
def test_campaign_targets_the_station_cannot_verify_refused_before_the_store(tmp_path, pmu,
                                                                             campaign, over):
    st, rig = pmu
    module, cls = CAMPAIGNS[campaign]
    cfg = cls(devices=[(3, 3)], **over)
    _refused(st, module.run, rig, cfg, tmp_path / "c.h5", seed=0, progress=False,
             exc=ConfigError)
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("campaign", sorted(CAMPAIGNS))
def test_campaign_with_out_of_range_ramps_applies_nothing(tmp_path, pmu, campaign):
    st, rig = pmu
    module, cls = CAMPAIGNS[campaign]
    cfg = cls(devices=[(3, 3)], tune=TuneConfig(v_set_max=2.6, v_set_start=1.0))
    extra = {"v_max": 3.0} if campaign == "iv-pulsed" else {}
    if extra:
        cfg = cls(devices=[(3, 3)], **extra)
    _refused(st, module.run, rig, cfg, tmp_path / "c.h5", seed=0, progress=False,
             exc=(ConfigError, ProtocolError, SafetyLimitError), strict=False)


def test_transfer_refuses_out_of_range_ramps_before_programming(tmp_path):
    from protocols import transfer
    from training.export import plan_from_weights

    st, rig = open_station("sim-pmu")
    plan = plan_from_weights([np.array([[0.5, -1.0]])], [np.array([0.2])], g_min=100e-6,
                             g_max=300e-6)
    cfg = transfer.TransferConfig(tune=TuneConfig(v_set_max=2.4))
    _refused(st, transfer.run, plan, lambda _name: rig, ["xbar0"], tmp_path / "t.h5",
             read=rig.read_settings, config=cfg, progress=False,
             exc=(ConfigError, ProtocolError), strict=False)


@pytest.mark.parametrize("protocol", ["transfer", "repair"])
def test_a_plan_the_station_cannot_verify_is_refused_whole_before_the_store(tmp_path, protocol):
    # the published 100-500 uS mapping puts targets at 500 uS, above what a 500 uS read
    # ceiling verifies with a 1 % band: refused before anything is sent and before the store
    # is opened, saying how many targets and the range, not partway through the plan
    from protocols import repair, transfer
    from training.export import plan_from_weights

    st, rig = open_station("sim-pmu")
    plan = plan_from_weights([np.array([[0.5, -1.0], [1.0, 0.25]])], [np.array([0.2, -1.0])],
                             g_min=100e-6, g_max=500e-6)
    n_bad = int(np.sum(plan.target >= rig.read_settings.ceiling_S / 1.01))
    assert 0 < n_bad < plan.n_devices   # the first devices are verifiable: no partial runs
    out = tmp_path / "t.h5"
    if protocol == "transfer":
        e = _refused(st, transfer.run, plan, lambda _name: rig, ["xbar0"], out,
                     read=rig.read_settings, progress=False, exc=ConfigError)
    else:
        x = np.zeros((4, 2))
        data = repair.RepairData(refit=(x, np.zeros(4)), repair=(x, np.zeros(4)),
                                 test=(x, np.zeros(4)))
        e = _refused(st, repair.run, plan, lambda _name: rig, ["xbar0"], out, data, budget=10,
                     read=rig.read_settings, progress=False, exc=ConfigError)
    assert f"{n_bad} of the plan's {plan.n_devices} targets" in str(e)
    assert "495.05) uS" in str(e) and "g_max below" in str(e)
    assert not out.exists()
