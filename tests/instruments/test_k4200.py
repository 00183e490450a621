"""Message-exact tests of the 4200A KXCI driver (Ethernet: every setter answers ACK)."""

import numpy as np
import pytest
from scripted_transport import Scripted

from instruments import InstrumentError, InstrumentTimeout, SafetyLimitError, SafetyLimits
from instruments.k4200 import K4200


def test_terminator_identity_and_init():
    t = Scripted([
        ("*IDN?", "KEITHLEY INSTRUMENTS,KI4200A,1234567,V1.13"),
        (":PMU:INIT 1", "ACK"),
        (":PMU:RPM:CONFIGURE PMU1-1, 0", "ACK"), (":PMU:SOURCE:RANGE 1, 10", "ACK"),
        (":PMU:MEASURE:RANGE 1, 2, 0.0001", "ACK"), (":PMU:LOAD 1, 1e+06", "ACK"),
    ])
    k = K4200(t)
    assert t.read_termination == "\0" and t.write_termination == "\0"
    assert k.idn() == "KEITHLEY INSTRUMENTS,KI4200A,1234567,V1.13"
    k.pmu_init(channels=(1,))
    assert t.done()


def test_pulse_sequence_execute_and_unchanged_setup_not_resent():
    times, v = [1e-6, 1e-8, 1.8e-7, 1e-8, 1e-6], [0, 0, 1.5, 1.5, 0]
    seq = [
        (":PMU:SARB:SEQ:TIME 1,1,1e-06,2e-08,1.8e-07,2e-08,1e-06", "ACK"),
        (":PMU:SARB:SEQ:STARTV 1,1,0,0,1.5,1.5,0", "ACK"),
        (":PMU:SARB:SEQ:STOPV 1,1,0,1.5,1.5,0,0", "ACK"),
        (":PMU:SARB:SEQ:MEAS:TYPE 1,1,0,0,0,0,0", "ACK"),
        (":PMU:SARB:SEQ:MEAS:START 1,1,0,0,0,0,0", "ACK"),
        (":PMU:SARB:SEQ:MEAS:STOP 1,1,0,0,0,0,0", "ACK"),
        (":PMU:SARB:WFM:SEQ:LIST 1,1,1", "ACK"),
        (":PMU:OUTPUT:STATE 1, 1", "ACK"),
        (":PMU:EXECUTE", "ACK"), (":PMU:TEST:STATUS?", "1"), (":PMU:TEST:STATUS?", "0"),
        # second identical pulse: only execute + poll
        (":PMU:EXECUTE", "ACK"), (":PMU:TEST:STATUS?", "0"),
    ]
    t = Scripted(seq)
    k = K4200(t)
    times[1] = times[3] = 2e-8
    pairs = k.pmu(1).sarb(1, times, v[:], [0, 1.5, 1.5, 0, 0], [0] * 5, [0] * 5, [0] * 5)
    for _ in range(2):
        k.send_setup(pairs + [k.pmu(1).seq_list([(1, 1)])])
        k.pmu(1).output(True)
        k.execute()
    assert t.done()


def test_read_fetches_spot_mean_points():
    t = Scripted([
        (":PMU:DATA:COUNT? 2", "2"),
        (":PMU:DATA:GET 2, 0, 2", "0,-2.01E-05,5.7E-06,0;0,-1.99E-05,5.7E-06,0"),
    ])
    k = K4200(t)
    assert k.pmu(2).data_count() == 2
    d = k.pmu(2).data(0, 2)
    assert d.shape == (2, 4) and np.allclose(d[:, 1], [-2.01e-5, -1.99e-5])


def test_smu_user_mode_and_user_library():
    t = Scripted([
        ("US", "ACK"), ("DV1,0,0.2,0.001", "ACK"), ("TI1", "NAI+1.234E-06"),
        ("UL", "ACK"), ("EX pmuulib kxci_rpm_switch(1,0)", "RETURN VALUE = 0"),
        ("GP 2 3", "PARAM VALUE = 1.0,2.0,3.0"),
    ])
    k = K4200(t)
    k.smu(1).force_voltage(0.2, 1e-3)
    assert k.smu(1).measure_current().value == pytest.approx(1.234e-6)
    k.pmu(1).rpm_switch(0)
    assert k.ul_get(2, 3) == [1.0, 2.0, 3.0]
    assert t.done()


def test_refused_command_raises_with_error_text():
    t = Scripted([(":PMU:SARB:WFM:SEQ:LIST 1,9,1", "Failure (-804)"),
                  (":ERROR:LAST:GET", "not in SARB mode (-804)")])
    with pytest.raises(InstrumentError) as e:
        K4200(t).cmd(":PMU:SARB:WFM:SEQ:LIST 1,9,1")
    m = str(e.value)
    assert "-804" in m and ":PMU:SARB:WFM:SEQ:LIST 1,9,1" in m and "K4200" in m


def test_out_of_limits_sequence_sends_no_byte():
    t = Scripted()
    k = K4200(t, limits=SafetyLimits(v_set_max=2.0))
    with pytest.raises(SafetyLimitError):
        k.pmu(1).sarb(1, [1e-6, 2e-7], [0, 2.5], [2.5, 0], [0, 0], [0, 0], [0, 0])
    with pytest.raises(InstrumentError):   # 10 ns segment: shorter than the PMU allows
        k.pmu(1).sarb(1, [1e-8], [0], [0], [0], [0], [0])
    with pytest.raises(SafetyLimitError):
        k.smu(1).force_voltage(3.0, 1e-3)
    assert t.sent == []


def test_close_aborts_and_turns_outputs_off():
    t = Scripted([(":PMU:ABORT", "ACK"), (":PMU:OUTPUT:STATE 1, 0", "ACK"),
                  (":PMU:OUTPUT:STATE 2, 0", "ACK")])
    with pytest.raises(KeyboardInterrupt), K4200(t):
        raise KeyboardInterrupt
    assert t.done() and t.closed


# -- SMU user mode and the RPM's SMU path (the DC path) -------------------------------------
# Sources (dc-commands.md keys): DV/TI/TV and the `XYZ+N.NNNNE+NN` reply with its status letters
# (N, C this channel in compliance, T another channel, V overflow): PM-K, TEK-U, 4200RM p.9-53;
# `RG ch, amps`: TEK-S `res2t.py` (`RG 1, 100e-9`), SM-4200; `IT1`/`IT2`/`IT3`: 4200RM p.9-44;
# `:PMU:RPM:CONFIGURE PMU1-n, 2` (2 = SMU path): instruments.md §4.4 (KXCI examples, KXCI
# programming manual section 7).

def test_smu_measurements_report_the_instruments_status():
    t = Scripted([
        ("US", "ACK"), ("TI2", "CBI+1.0000E-04"), ("TV2", "CBV+6.2000E-01"),
        ("TI3", "TCI+2.0000E-05"), ("TI4", "VDI+1.0000E+38"), ("TI1", "NAI-1.2340E-06"),
    ])
    k = K4200(t)
    s = k.smu(2).measure_current()
    assert s.compliance and s.value == pytest.approx(1e-4)
    assert k.smu(2).measure_voltage().value == pytest.approx(0.62)
    other = k.smu(3).measure_current()
    assert other.status == "T" and not other.compliance       # another SMU in compliance
    over = k.smu(4).measure_current()
    assert over.overflow and not over.valid and np.isnan(over.value)
    assert k.smu(1).measure_current().value == pytest.approx(-1.234e-6)
    assert t.done()


def test_dc_preparation_levels_and_release_are_message_exact():
    t = Scripted([
        ("US", "ACK"), ("IT2", "ACK"), ("RG 1, 1e-07", "ACK"), ("RG 3, 1e-06", "ACK"),
        ("DV1,0,0,0.0001", "ACK"), ("DV3,0,0.25,0.01", "ACK"),
        ("DV1", "ACK"), ("DV3", "ACK"),
        (":PMU:RPM:CONFIGURE PMU1-1, 2", "ACK"),
    ])
    k = K4200(t)
    assert k.prepare_smus([k.smu(1)], nplc=0.5, i_range=None, fixed=False) == 1.0  # IT2
    k.smu(3).lowest_range(1e-6)
    k.force_voltages({k.smu(1): 0.0, k.smu(3): 0.25}, {k.smu(1): 1e-4, k.smu(3): 1e-2})
    k.release_smus([k.smu(1), k.smu(3)])
    from instruments.k4200 import RPM_SMU
    k.pmu(1).rpm(RPM_SMU)
    assert t.done()


def test_dc_levels_and_compliances_are_checked_before_any_byte():
    t = Scripted([])
    k = K4200(t, limits=SafetyLimits(v_set_max=1.0, i_compliance=1e-3))
    with pytest.raises(SafetyLimitError):   # second level beyond +1 V: nothing sent
        k.force_voltages({k.smu(1): 0.5, k.smu(2): 1.5}, 1e-4)
    with pytest.raises(SafetyLimitError):   # compliance beyond the station's
        k.force_voltages({k.smu(1): 0.5}, 5e-3)
    with pytest.raises(InstrumentError, match="no fixed current range"):
        k.prepare_smus([k.smu(1)], nplc=1, i_range=1e-6, fixed=True)
    with pytest.raises(InstrumentError, match="0.1, 1 or 10"):
        k.integration(2)
    assert t.sent == []


def test_make_safe_turns_every_installed_smu_off_and_forgets_what_it_sent():
    script = [(":PMU:ABORT", "ACK"), (":PMU:OUTPUT:STATE 1, 0", "ACK"),
              (":PMU:OUTPUT:STATE 2, 0", "ACK"), ("US", "ACK"), ("DV1", "ACK"), ("DV2", "ACK")]
    t = Scripted([(":PMU:OUTPUT:STATE 1, 1", "ACK")] + script
                 + [(":PMU:OUTPUT:STATE 1, 1", "ACK")])
    k = K4200(t, smus=2)
    k.pmu(1).output(True)
    k.make_safe()                 # every SMU off, not only those this driver turned on
    k.pmu(1).output(True)         # nothing cached survives the safe state: sent again
    assert t.done()


def test_a_failed_command_drops_the_cached_setup():
    seq = (":PMU:SARB:WFM:SEQ:LIST 1,1,1", "ACK")
    t = Scripted([seq, (":PMU:EXECUTE", None), seq])  # the execute times out
    k = K4200(t, timeout=0.01)
    pair = k.pmu(1).seq_list([(1, 1)])
    assert k.send_setup([pair]) == 1
    assert k.send_setup([pair]) == 0                  # unchanged: not sent again
    with pytest.raises(InstrumentTimeout):
        k.execute()
    assert k.send_setup([pair]) == 1                  # after a failure: sent again
    assert t.done()


def test_snapshot_reads_identity_and_options():
    # *IDN? and *OPT? (dc-commands.md §1.1): what the run stores as the snapshot
    t = Scripted([("*IDN?", "KEITHLEY INSTRUMENTS,KI4200A,1234567,V1.13"),
                  ("*OPT?", "SMU1,SMU2,PMU1,RPM1,RPM2")])
    snap = K4200(t).snapshot()
    assert snap["idn"] == "KEITHLEY INSTRUMENTS,KI4200A,1234567,V1.13"
    assert snap["options"] == ["SMU1", "SMU2", "PMU1", "RPM1", "RPM2"] and t.done()


def test_sarb_capacity_refused_before_anything_is_sent():
    """Sequence numbers 1..512 and at most 2048 segments per channel in all its sequences (the
    4225-PMU figures as recalled, to confirm on hardware); INIT clears what a channel holds."""
    from instruments.k4200 import MAX_SEGMENTS, MAX_SEQUENCES
    z = [0.0] * 128
    t = [1e-6] * 128
    init = [(":PMU:INIT 1", "ACK"), (":PMU:RPM:CONFIGURE PMU1-1, 0", "ACK"),
            (":PMU:SOURCE:RANGE 1, 10", "ACK"), (":PMU:MEASURE:RANGE 1, 2, 0.0001", "ACK"),
            (":PMU:LOAD 1, 1e+06", "ACK")]
    full = MAX_SEGMENTS // 128
    k = K4200(Scripted([]))
    with pytest.raises(InstrumentError, match="1..512"):
        k.pmu(1).sarb(MAX_SEQUENCES + 1, t[:1], z[:1], z[:1], [0], [0], [0])
    cmds = [k.pmu(1).sarb(s, t, z, z, [0] * 128, z, z) for s in range(1, full + 2)]
    script = init + [(c, "ACK") for pairs in cmds[:full] for _, c in pairs]
    script += init + [(c, "ACK") for _, c in cmds[full]]
    k = K4200(Scripted(script))
    k.pmu_init(channels=(1,))
    for pairs in cmds[:full]:
        k.send_setup(pairs)                 # 16 x 128 = 2048 segments: full
    with pytest.raises(InstrumentError, match="2176 SARB segments"):
        k.send_setup(cmds[full])            # nothing of it sent (the script would fail)
    k.send_setup(cmds[0][:1])               # a held sequence's own TIME: no new segment
    k.pmu_init(channels=(1,))
    k.send_setup(cmds[full])                # INIT cleared the channel
    assert k._res.done()
