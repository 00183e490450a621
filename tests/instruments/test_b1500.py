"""Message-exact tests of the B1500 FLEX driver."""

import numpy as np
import pytest
from scripted_transport import Scripted

from instruments import InstrumentError, InstrumentTimeout, SafetyLimitError, SafetyLimits
from instruments.b1500 import B1500
from instruments.smu import parse_spot

OK = '0,"No Error."'


def test_connect_identity_and_modules():
    t = Scripted([
        ("FMT 1,0", None), ("ERRX?", OK),
        ("*IDN?", "Agilent Technologies,B1500A,0,A.04.03.2010.0130"),
        ("UNT?", "B1530A,0;B1517A,0;B1517A,0;0,0;0,0;0,0;0,0;0,0;0,0;0,0"),
    ])
    b = B1500(t)
    assert t.read_termination == "\r\n" and t.write_termination == "\r\n"
    b.connect()
    assert b.idn().startswith("Agilent Technologies,B1500A")
    mods = b.modules()
    assert mods[0] == ("B1530A", "0") and mods[3] == ("0", "0") and len(mods) == 10
    assert t.done()


def test_bias_levels_are_one_batch_and_one_error_check():
    t = Scripted([
        ("CN 2,3", None), ("ERRX?", OK),
        ("DV 2,0,0.333333,0.001;DV 3,0,0.666667,0.001", None), ("ERRX?", '+0,"No Error."'),
        ("DZ", None), ("ERRX?", OK),
    ])
    b = B1500(t)
    b.enable([b.smu(3), b.smu(2)])
    b.force_voltages({b.smu(2): 1 / 3, b.smu(3): 2 / 3}, 1e-3)
    b.zero()
    assert t.done()


def test_spot_current_read():
    t = Scripted([("TI 2", "NAI+000.005E-09")])
    assert B1500(t).smu(2).measure_current().value == pytest.approx(5e-12)
    over = parse_spot("VAI+199.999E+99", "I")  # over range: a status, not a number
    assert over.overflow and not over.valid and over.value != over.value


def test_instrument_error_names_command_and_reply_and_drains_queue():
    t = Scripted([
        ("DV 9,0,0.1,0.001", None),
        ("ERRX?", '305,"Excess current in HPSMU.; SLOT1"'),
        ("ERRX?", '0,"No Error."'),
    ])
    with pytest.raises(InstrumentError) as e:
        B1500(t).smu(9).force_voltage(0.1, 1e-3)
    msg = str(e.value)
    assert "305" in msg and "DV 9,0,0.1,0.001" in msg and "Excess current" in msg
    assert t.done()


def test_out_of_limits_sends_no_byte():
    t = Scripted()
    b = B1500(t, limits=SafetyLimits(v_set_max=1.0, i_compliance=1e-3))
    with pytest.raises(SafetyLimitError):
        b.force_voltages({b.smu(2): 0.5, b.smu(3): 1.5}, 1e-4)     # second level beyond +1 V
    with pytest.raises(SafetyLimitError):
        b.smu(2).force_voltage(0.5, 5e-3)                 # compliance beyond station limit
    assert t.sent == []


def test_timeout_names_instrument_and_command():
    t = Scripted([("*IDN?", None)])
    with pytest.raises(InstrumentTimeout) as e:
        B1500(t, name="b1500@lab").idn()
    assert "b1500@lab" in str(e.value) and "*IDN?" in str(e.value)


def test_close_and_context_manager_leave_outputs_zero_and_disconnected():
    t = Scripted([("DZ;CL", None), ("*OPC?", "1")])
    with B1500(t):
        pass
    assert t.done() and t.closed
    t2 = Scripted([("DZ;CL", None), ("*OPC?", "1")])
    with pytest.raises(KeyboardInterrupt), B1500(t2):
        raise KeyboardInterrupt
    assert t2.done() and t2.closed


def test_safe_state_is_confirmed_not_assumed():
    """The outputs-off message is followed by *OPC?: a B1500 that does not answer (message
    lost, connection gone) makes make_safe raise instead of passing for safe."""
    t = Scripted([("DZ;CL", None), ("*OPC?", None)])
    with pytest.raises(InstrumentTimeout) as e:
        B1500(t).make_safe()
    assert e.value.command == "*OPC?"


# -- the DC path (dc-commands.md §2) ---------------------------------------------------------
# Sources: CN/CL/DZ with channel lists, DV with its compliance, TI/TV replies `NAI+000.005E-09`
# and their status letters (N, C this channel, T another channel, V overflow with
# 199.999E+99): QC-MB, PM-B + tests, QC-T; `RI ch,code` (0 auto, +code limited auto, -code
# fixed): QC-C IMeasRange, QC-MB; `AAD ch,1` (high-resolution ADC): QC-MB; `AIT 1,2,N` (N PLC):
# QC-MB, QC-T (`AIT 0,2,3`); current range codes: dc-commands.md §2.3 (PM-B, QC-C).

def test_dc_preparation_levels_measurement_and_release_are_message_exact():
    t = Scripted([
        ("CN 2,3;AAD 2,1;AAD 3,1;RI 2,14;RI 3,14;AIT 1,2,2", None), ("ERRX?", OK),
        ("DV 2,0,0.5,0.01;DV 3,0,0,0.0001", None), ("ERRX?", OK),
        ("TI 3", "CCI-000.100E-03"), ("TV 3", "CCV+000.042E+00"),
        ("TI 2", "TBI+001.250E-03"),
        ("DZ 2,3;CL 2,3", None), ("ERRX?", OK),
    ])
    b = B1500(t)
    a, c = b.smu(2), b.smu(3)
    assert b.prepare_smus([a, c], nplc=1.5, i_range=1e-6, fixed=False) == 2.0
    b.force_voltages({a: 0.5, c: 0.0}, {a: 1e-2, c: 1e-4})
    sense = c.measure_current()
    assert sense.compliance and sense.value == pytest.approx(-1e-4)
    assert c.measure_voltage().value == pytest.approx(0.042)
    held = a.measure_current()
    assert held.status == "T" and held.value == pytest.approx(1.25e-3)
    b.release_smus([a, c])
    assert t.done()


def test_fixed_range_overflow_and_auto_range_codes():
    t = Scripted([
        ("CN 2;AAD 2,1;RI 2,-14;AIT 1,2,1", None), ("ERRX?", OK),
        ("TI 2", "VBI+199.999E+99"),
        ("CN 2;AAD 2,1;RI 2,0;AIT 1,2,10", None), ("ERRX?", OK),
        ("RI 2,16", None), ("ERRX?", OK), ("AAD 2,0", None), ("ERRX?", OK),
        ("AIT 0,2,3", None), ("ERRX?", OK),
    ])
    b = B1500(t)
    b.prepare_smus([b.smu(2)], nplc=1.0, i_range=1e-6, fixed=True)
    over = b.smu(2).measure_current()
    assert over.overflow and np.isnan(over.value)
    b.prepare_smus([b.smu(2)], nplc=10, i_range=None, fixed=False)
    b.smu(2).measure_range(16)           # 100 uA, limited auto
    b.smu(2).adc(0)
    b.integration(0, 3)
    assert t.done()


def test_dc_levels_and_ranges_are_checked_before_any_byte():
    t = Scripted([])
    b = B1500(t, limits=SafetyLimits(v_set_max=1.0, i_compliance=1e-3))
    with pytest.raises(SafetyLimitError):
        b.force_voltages({b.smu(2): 0.5, b.smu(3): 1.5}, 1e-4)
    with pytest.raises(SafetyLimitError):
        b.force_voltages({b.smu(2): 0.5}, {b.smu(2): 5e-3})
    with pytest.raises(InstrumentError, match="range code"):
        b.smu(2).measure_range(7)
    with pytest.raises(InstrumentError, match="whole cycles"):
        b.integration(1, 0.5)
    assert t.sent == []


def test_snapshot_reads_identity_and_installed_modules():
    # *IDN? and UNT? (instruments.md §2, dc-commands.md §2.1): what the run stores as the snapshot
    t = Scripted([("*IDN?", "Agilent Technologies,B1500A,0,A.04.03.2010.0130"),
                  ("UNT?", "B1530A,0;B1517A,0;B1517A,1;0,0;0,0;0,0;0,0;0,0;0,0;0,0")])
    snap = B1500(t).snapshot()
    assert snap["idn"] == "Agilent Technologies,B1500A,0,A.04.03.2010.0130"
    assert snap["modules"] == ["slot 1 B1530A rev 0", "slot 2 B1517A rev 0",
                               "slot 3 B1517A rev 1"]
    assert t.done()
