"""Message-exact tests of the 4200A KXCI driver (Ethernet: every setter answers ACK)."""

import numpy as np
import pytest
from scripted_transport import Scripted

from instruments import InstrumentError, SafetyLimitError, SafetyLimits
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
