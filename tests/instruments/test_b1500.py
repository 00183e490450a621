"""Message-exact tests of the B1500 FLEX driver."""

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
