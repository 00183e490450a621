"""Instrument faults injected through the emulated instruments of the simulated stations.

For every fault class: the error is an InstrumentError naming the instrument, the command and
(when one came back) the reply; the rig ends in its safe state, checked on the emulators; the
next operation works again (faults are not sticky unless the instrument is gone). Mid-campaign:
the devices finished before the fault are in the file and readable, and re-running resumes to a
complete file with every device exactly once.
"""

from __future__ import annotations

import numpy as np
import pytest
from reliability_support import (
    PMU_STATION,
    energised_lines,
    open_station,
    single_thread_blas,  # noqa: F401 (autouse fixture)
    unsafe_parts,
)

from database.runs import RunWriter, list_runs, read_run, read_table
from instruments.errors import InstrumentError, InstrumentTimeout
from protocols.campaigns import CAMPAIGNS

K4200 = "TCPIP0::192.168.0.2::1225::SOCKET"
K707B = "GPIB0::18::INSTR"

# (fault kind, message match, instrument named, text expected in the error)
PMU_FAULTS = [
    ("timeout", ":PMU:EXECUTE", "K4200", "no reply"),
    ("timeout", "exclusiveclose", "K707B", "no reply"),
    ("no_execute", ":PMU:TEST:STATUS?", "K4200", "no reply"),
    ("truncated", ":PMU:DATA:GET", "K4200", "points of V,I,T,S"),
    ("garbled", ":PMU:DATA:GET", "K4200", "bad data"),
    ("garbled", "exclusiveclose", "K707B", "unexpected reply"),
    ("truncated", ":PMU:TEST:STATUS?", "K4200", "empty status reply"),
    ("wrong_reply", ":PMU:DATA:GET", "K4200", "points of V,I,T,S"),
    ("wrong_reply", ":PMU:SARB:SEQ:TIME 1", "K4200", "refused"),
    ("error", ":PMU:EXECUTE", "K4200", "Injected fault"),
    ("error", "exclusiveclose", "K707B", "707B error 999"),
]


@pytest.mark.parametrize("kind,match,instrument,text", PMU_FAULTS,
                         ids=[f"{k}-{m.strip(':').split(':')[-1][:12]}" for k, m, *_ in PMU_FAULTS])
def test_pmu_rig_fault_gives_clear_error_and_leaves_rig_safe(kind, match, instrument, text):
    st, rig = open_station("sim-pmu")
    try:
        rig.read(0, 0)                      # set up and route once: faults hit a running rig
        st.visa_library.faults.add(kind, match=match)
        with pytest.raises(InstrumentError) as ei:
            rig.pulse_and_read(1, 1, 1.2, 200e-9, n_reads=2)
        e = ei.value
        msg = str(e)
        assert "\n" not in msg
        assert e.instrument == instrument and f"instrument={instrument}" in msg
        assert e.command and f"command={e.command!r}" in msg
        assert text in msg
        if kind in ("truncated", "garbled", "wrong_reply", "error"):
            # the reply that was refused is shown (or the message says it was empty)
            assert (e.reply and "reply=" in msg) or "empty" in msg
        if kind in ("timeout", "no_execute"):
            assert isinstance(e, InstrumentTimeout)
        assert st.visa_library.faults.fired, "the fault never fired"
        assert unsafe_parts(st) == []
        # one-shot faults are not sticky: the rig works again after the safe state
        g = rig.pulse_and_read(1, 1, 1.2, 200e-9, n_reads=2)
        assert np.all((g > 1e-6) & (g < 1e-3))
    finally:
        rig.close()
    assert unsafe_parts(st) == []


@pytest.mark.parametrize("lost,other", [(K4200, K707B), (K707B, K4200)],
                         ids=["pmu-lost", "matrix-lost"])
def test_dropped_connection_names_the_command_and_the_other_instrument_isolates(lost, other):
    """A lost link cannot be commanded (the lost instrument keeps whatever it had), so the
    other one must de-energise the crossbar: relays open if the PMU is lost, PMU outputs off if
    the matrix is lost. The error is the original failure, not a later safe-state failure."""
    st, rig = open_station("sim-pmu")
    rig.read(0, 0)
    st.visa_library.faults.add("disconnect", resource=lost,
                               match=":PMU:EXECUTE" if lost == K4200 else "exclusiveclose")
    with pytest.raises(InstrumentError) as ei, rig:
        rig.pulse_and_read(2, 3, 1.2, 200e-9)
    msg = str(ei.value)
    assert "CONN_LOST" in msg
    assert ei.value.command.startswith(":PMU:EXECUTE" if lost == K4200
                                       else "channel.exclusiveclose")
    assert unsafe_parts(st, skip=(lost,)) == []
    assert energised_lines(st) == []


def test_instrument_that_stops_responding_times_out_and_crossbar_is_isolated():
    st, rig = open_station("sim-pmu")
    rig.read(0, 0)
    st.visa_library.faults.add("no_execute", resource=K4200, rate=1.0)  # every message lost
    with pytest.raises(InstrumentTimeout) as ei, rig:
        rig.pulse(0, 0, 1.0, 200e-9)
    assert ei.value.instrument == "K4200"
    assert unsafe_parts(st, skip=(K4200,)) == []      # 707B opened every relay
    assert energised_lines(st) == []


def test_relay_that_does_not_close_reads_as_open_device_never_as_overvoltage(tmp_path):
    """A relay reported closed but physically open cannot be seen by software (the 707B says
    it is closed). The device behind it reads ~0 S, stuck screening flags it, nothing else is
    affected and the rig ends safe."""
    st, rig = open_station("sim-pmu")
    k7 = st.visa_library.instruments[K707B]
    k7.stuck = {"1A02"}                              # drive relay of word line 1
    module, cls = CAMPAIGNS["stuck"]
    cfg = cls(devices=[(0, 0), (1, 1), (2, 2)])
    with rig:
        module.run(rig, cfg, tmp_path / "s.h5", seed=0, progress=False)
    df = read_table(tmp_path / "s.h5", "devices")
    assert list(df.device) == [0, 1, 2]
    assert df.status[1] != 0 and df.g_initial[1] < 1e-6          # flagged, reads as open
    assert (df.status[[0, 2]] == 0).all()                         # neighbours unaffected
    assert unsafe_parts(st) == []


def test_wgfmu_library_error_names_the_call_and_leaves_channels_disconnected():
    st, rig = open_station("sim-wgfmu")
    lib = st.wgfmu_library
    rig.read(0, 0)
    lib.fail_next = "execute"
    with pytest.raises(InstrumentError) as ei:
        rig.pulse_and_read(0, 0, 1.1, 200e-9, n_reads=3)
    e = ei.value
    assert e.instrument == "WGFMU" and "COMMUNICATION" in str(e)
    assert e.command.startswith("WGFMU_execute") and "communication lost" in e.reply
    assert lib.connected == set() and unsafe_parts(st) == []
    assert rig.pulse_and_read(0, 0, 1.1, 200e-9, n_reads=3).shape == (3,)
    rig.close()
    assert not lib.session


# -- mid-campaign faults ---------------------------------------------------------------------

def _arm_after(monkeypatch, st, n_devices: int, **fault) -> None:
    """Arm `fault` on the station once `n_devices` devices are committed to the file."""
    orig = RunWriter.commit

    def commit(self, device, rows, state=None):
        orig(self, device, rows, state)
        if device + 1 == n_devices:
            st.visa_library.faults.add(**fault)

    monkeypatch.setattr(RunWriter, "commit", commit)


CAMPAIGN_CFG = {"tuning-untuning": {"levels": 1, "repeats": 1},
                "disturbance": {"record_history": False}, "stuck": {}, "iv-pulsed": {}}
DEVICES = [(0, 0), (0, 1), (1, 0), (1, 1)]


@pytest.mark.parametrize("campaign,fault", [
    ("tuning-untuning", {"kind": "timeout", "match": ":PMU:DATA:GET"}),
    ("disturbance", {"kind": "error", "match": "exclusiveclose"}),
    ("stuck", {"kind": "disconnect", "resource": K4200}),
    ("iv-pulsed", {"kind": "garbled", "match": ":PMU:DATA:GET"}),
])
def test_fault_mid_campaign_keeps_finished_devices_and_rerun_resumes(tmp_path, monkeypatch,
                                                                     campaign, fault):
    module, cls = CAMPAIGNS[campaign]
    cfg = cls(devices=DEVICES, **CAMPAIGN_CFG[campaign])
    ref = tmp_path / "ref.h5"
    st, rig = open_station()
    with rig:
        module.run(rig, cfg, ref, seed=3, progress=False)

    out = tmp_path / "run.h5"
    st, rig = open_station()
    with monkeypatch.context() as m:
        _arm_after(m, st, 2, **fault)
        with pytest.raises(InstrumentError) as ei, rig:
            module.run(rig, cfg, out, seed=3, progress=False)
    assert ei.value.instrument in ("K4200", "K707B") and ei.value.command
    lost = (fault["resource"],) if fault["kind"] == "disconnect" else ()
    assert unsafe_parts(st, skip=lost) == []
    info = list_runs(out)[-1]
    assert info.units_done == 2 and not info.complete
    _, tables = read_run(out)                       # readable, holds the two finished devices
    first = next(iter(tables.values()))
    assert set(first.device) == {0, 1}

    st, rig = open_station()                        # a fresh session, as a re-run would be
    with rig:
        res = module.run(rig, cfg, out, seed=3, progress=False)
    assert res.resumed_from == 2
    info, tables = read_run(out)
    _, ref_tables = read_run(ref)
    assert info.complete and info.units_done == 4
    for name, df in tables.items():
        # the same rows, device by device, that an uninterrupted run stored (the chip state is
        # restored on resume): no device lost, none duplicated
        assert len(df) == len(ref_tables[name]) > 0
        np.testing.assert_array_equal(df.device.to_numpy(), ref_tables[name].device.to_numpy())
        num = df.select_dtypes("number").columns
        np.testing.assert_allclose(df[num].to_numpy(float), ref_tables[name][num].to_numpy(float),
                                   rtol=1e-12, err_msg=name)
    assert unsafe_parts(st) == []


def test_lost_safe_state_command_is_noticed_and_the_others_are_made_safe():
    """The 707B's "open all" is lost: safe_state raises naming the 707B, records the rig as not
    safe, and the PMU is made safe all the same; once the 707B answers, the rig is safe."""
    st, rig = open_station("sim-pmu")
    rig.pulse_and_read(1, 1, 1.2, 200e-9)
    st.visa_library.faults.add("no_execute", resource=K707B, match='channel.open("allslots")')
    with pytest.raises(InstrumentError) as ei:
        rig.safe_state()
    assert ei.value.instrument == "K707B"
    assert rig.safe.state == "unsafe" and "K707B" in rig.safe.detail
    pmu = st.visa_library.instruments[K4200]
    assert not any(pmu.outputs.values())               # the other instrument went safe
    assert st.visa_library.instruments[K707B].closed   # and the relays really are closed
    rig.safe_state()
    assert rig.safe.state == "safe" and unsafe_parts(st) == []
    rig.close()


@pytest.mark.parametrize("ignored,confirmed", [(1, True), (2, False)])
def test_707b_that_ignores_open_all_is_retried_once_then_reported(ignored, confirmed):
    """A 707B that answers "open all" with its relays still listed (it ignored the command):
    one retry; if the relays are still listed, "relays not confirmed open"."""
    st, rig = open_station("sim-pmu")
    rig.pulse_and_read(1, 1, 1.2, 200e-9)
    k7 = st.visa_library.instruments[K707B]
    handle, left = k7.handle, [ignored]

    def ignore_open(msg):
        if 'channel.open("allslots")' in msg and left[0] > 0:
            left[0] -= 1
            return ";".join(sorted(k7.closed))
        return handle(msg)

    k7.handle = ignore_open
    if confirmed:
        rig.safe_state()
        assert rig.safe.state == "safe" and unsafe_parts(st) == []
    else:
        with pytest.raises(InstrumentError, match="relays not confirmed open"):
            rig.safe_state()
        assert rig.safe.state == "unsafe" and k7.closed
    k7.handle = handle
    rig.close()
    assert unsafe_parts(st) == []


@pytest.mark.parametrize("failure", ["compliance", "error-VL", "error-ME1", "timeout-SP",
                                     "error-DO", "timeout-DO", "timeout-DV"])
def test_analog_read_out_failure_leaves_smus_off_and_relays_open(failure, tmp_path):
    """The analog read-out on the PMU station's SMUs (`column_currents` as a DC pass): a line at
    the current compliance or an instrument fault mid-pass ends with every SMU off, every
    relay open, checked on the emulators while the rig is still open. The pass is one list
    sweep: a refused list or run, a status poll or a data transfer that gets no reply or an
    error, and the SMUs' release that times out."""
    from protocols.errors import ComplianceError
    from xbarlab.station import load_station

    if failure == "compliance":       # 3 rows at 0.2 V on 100-500 uS devices: > 10 uA
        p = tmp_path / "sim-pmu.yaml"
        p.write_text(PMU_STATION.read_text().replace("i_compliance: 10.0e-3",
                                                     "i_compliance: 1.0e-5"))
        st = load_station(p)
    else:
        st = load_station(PMU_STATION)
    rig = st.open_rig()
    try:
        rig.read(0, 0)
        if failure != "compliance":
            kind, match = failure.split("-")
            st.visa_library.faults.add(kind, match=match)
        with pytest.raises(ComplianceError if failure == "compliance" else InstrumentError):
            rig.column_currents([0, 1, 2], np.full((2, 3), 0.2), [4])
        if failure != "compliance":
            assert st.visa_library.faults.fired, "the fault never fired"
        assert unsafe_parts(st) == []
        assert rig.safe.state == "safe"
    finally:
        rig.close()
