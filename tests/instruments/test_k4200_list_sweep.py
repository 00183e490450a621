"""Message-exact tests of the 4200's system-mode list sweep (`K4200.list_sweep`) and of the DC
path that uses it.

Sources (dc-commands.md §1.3 keys): the page order `BC`, `DE`, `CH...`, `SS`, `VL...`, `HT`,
`DT`, `IT`, `SM`, `DM2`, `LI...`, `MD`, `ME1`, poll `SP`, read `DO`: TEK-S; `CH ch, 'Vname',
'Iname', mode, func` (mode 1 V source, func 1 VAR1; bare `CHch` = channel off): 4200RM p.9-14,
p.9-36; `VL ch, master, comp, v1, ...` (master 1 / subordinate 0, <= 4096 points): 4200RM
p.9-25, TEK-S `List sweep.py`; `HT`/`DT`: TEK-S; `IT1`: 4200RM p.9-44; `RG ch, amps`: TEK-S
`res2t.py`; `LI 'n1','n2',...` incl. timestamps `CHnT`: TEK-S; `DO 'name'` -> `X±N.NNNNE±NN,...`:
4200RM p.9-36, p.9-52; `SP` finished when 0 or 1, bit1 syntax error, bit4 busy: TEK-S, PM-K;
several commands in one message with one ACK: PM-K. Unconfirmed (said in the driver): CH
function 1 for a subordinate list channel, a list channel's readings per step.
"""

import numpy as np
import pytest
from scripted_transport import Scripted

from instruments import InstrumentError, InstrumentTimeout, SafetyLimitError, SafetyLimits
from instruments import k4200 as k4200_module
from instruments.k4200 import K4200

SAFE = [(":PMU:ABORT", "ACK"), (":PMU:OUTPUT:STATE 1, 0", "ACK"),
        (":PMU:OUTPUT:STATE 2, 0", "ACK"), ("US", "ACK"), ("DV1", "ACK"), ("DV2", "ACK"),
        ("DV3", "ACK"), ("DV4", "ACK")]


class Clock:
    """A lab clock: `wait` records the waits, `now` advances by `step` per call."""

    def __init__(self, step=0.0):
        self.t, self.step, self.waits = 0.0, step, []

    def now(self):
        self.t += self.step
        return self.t

    def wait(self, s):
        self.waits.append(s)
        self.t += s


def _setup(k=2, delay="0", it="IT1", comp="1e-05"):
    return [
        ("BC;DE;CH1, 'V1', 'I1', 1, 1;CH3, 'V3', 'I3', 1, 1;CH2;CH4", "ACK"),
        (f"SS;{it};HT 0;DT {delay};RG 1, 1e-07;RG 3, 1e-07", "ACK"),
    ]


def test_list_sweep_is_one_test_message_exact():
    t = Scripted(_setup() + [
        ("VL1, 1, 0.001, 0.1, -0.2", "ACK"),              # SMU1 the master, held levels
        ("VL3, 0, 1e-05, 0, 0", "ACK"),                   # SMU3 the meter: its 0 V list
        ("SM;DM2;LI 'I3','V3','CH3T'", "ACK"),
        ("MD;ME1", "ACK"),
        ("SP", "16"), ("SP", "1"),                        # busy, then data ready
        ("DO 'I3'", "N+1.2340E-06,C+1.0000E-05"),
        ("DO 'V3'", "N+0.0000E+00,C-3.1000E-02"),         # read: a reading in compliance
        ("DO 'CH3T'", "2.7E-03\r\n5.4E-03"),
    ])
    k = K4200(t)
    clk = Clock()
    res = k.list_sweep({k.smu(1): [0.1, -0.2], k.smu(3): [0.0, 0.0]}, [k.smu(3)],
                       {k.smu(1): 1e-3, k.smu(3): 1e-5}, nplc=0.1, i_range=None,
                       now=clk.now, wait=clk.wait)
    assert t.done()
    s3 = k.smu(3)
    np.testing.assert_allclose(res.current[s3], [1.234e-6, 1e-5])
    assert list(res.status[s3]) == ["N", "C"]
    assert np.isnan(res.volts[s3][0]) and res.volts[s3][1] == pytest.approx(-0.031)
    np.testing.assert_allclose(res.t, [2.7e-3, 5.4e-3])
    # first poll once the integrations can have passed (2 x 0.1 PLC at 50 Hz), then every
    # tenth of that (at least 1 ms)
    assert clk.waits == pytest.approx([4e-3, 1e-3])


def test_overflow_and_other_channel_statuses_are_kept():
    t = Scripted(_setup(delay="0.001", it="IT2", comp="1e-05") + [
        ("VL1, 1, 0.001, 0.1, 0.1", "ACK"), ("VL3, 0, 1e-05, 0, 0", "ACK"),
        ("SM;DM2;LI 'I3','V3','CH3T'", "ACK"), ("MD;ME1", "ACK"), ("SP", "0"),
        ("DO 'I3'", "V+1.0000E+38,T+2.0000E-06"), ("DO 'CH3T'", "0.02,0.04"),
    ])
    k = K4200(t)
    clk = Clock()
    res = k.list_sweep({k.smu(1): [0.1, 0.1], k.smu(3): [0.0, 0.0]}, [k.smu(3)],
                       {k.smu(1): 1e-3, k.smu(3): 1e-5}, nplc=1, i_range=None, delay=1e-3,
                       now=clk.now, wait=clk.wait)
    assert t.done()
    cur = res.current[k.smu(3)]
    assert np.isnan(cur[0]) and cur[1] == pytest.approx(2e-6)
    assert list(res.status[k.smu(3)]) == ["V", "T"]


def test_more_points_than_a_list_holds_are_several_tests(monkeypatch):
    monkeypatch.setattr(k4200_module, "MAX_LIST", 2)
    script = []
    for levels, stamps in (("0.1, 0.2", "1,2"), ("0.3", "1")):
        n = len(levels.split(","))
        script += _setup() + [
            (f"VL1, 1, 0.001, {levels}", "ACK"), (f"VL3, 0, 1e-05, {', '.join(['0'] * n)}",
                                                  "ACK"),
            ("SM;DM2;LI 'I3','V3','CH3T'", "ACK"), ("MD;ME1", "ACK"), ("SP", "1"),
            ("DO 'I3'", ",".join(["N+1.0000E-06"] * n)), ("DO 'CH3T'", stamps)]
    t = Scripted(script)
    k = K4200(t)
    clk = Clock(step=10.0)          # each test starts later on the lab's clock
    res = k.list_sweep({k.smu(1): [0.1, 0.2, 0.3], k.smu(3): [0.0] * 3}, [k.smu(3)],
                       {k.smu(1): 1e-3, k.smu(3): 1e-5}, nplc=0.1, i_range=None,
                       now=clk.now, wait=clk.wait)
    assert t.done() and len(res.current[k.smu(3)]) == 3
    assert res.t[0] < res.t[1] < res.t[2]


def test_levels_and_compliances_are_checked_before_any_byte():
    t = Scripted([])
    k = K4200(t, limits=SafetyLimits(v_set_max=1.0, i_compliance=1e-3))
    clk = Clock()
    with pytest.raises(SafetyLimitError):           # a level beyond +1 V, second point
        k.list_sweep({k.smu(1): [0.1, 1.5], k.smu(3): [0, 0]}, [k.smu(3)],
                     {k.smu(1): 1e-4, k.smu(3): 1e-4}, nplc=0.1, i_range=None,
                     now=clk.now, wait=clk.wait)
    with pytest.raises(SafetyLimitError):           # a compliance beyond the station's
        k.list_sweep({k.smu(1): [0.1], k.smu(3): [0]}, [k.smu(3)],
                     {k.smu(1): 5e-3, k.smu(3): 1e-4}, nplc=0.1, i_range=None,
                     now=clk.now, wait=clk.wait)
    assert t.sent == []


def test_raw_guard_knows_the_list_sweep_commands_and_checks_their_levels():
    k = K4200(Scripted([]), limits=SafetyLimits(v_set_max=1.0, i_compliance=1e-3))
    for ok in ("DE;CH1, 'V1', 'I1', 1, 1;CH2", "SS;HT 0;DT 0.001", "VL1, 1, 0.001, 0.5, -0.5",
               "SM;DM2;LI 'I3','V3','CH3T'", "MD;ME1", "DO 'CH3T'", "SP"):
        k.check_outgoing(ok)
    for bad in ("VL1, 1, 0.001, 0.5, 1.5",        # a level beyond the envelope
                "VL1, 1, 0.01, 0.5",              # a compliance beyond the station's
                "CH1, 'V1', 'I1', 2, 1",          # a current source: not what the path sends
                "ME2", "VC4, 0, 0.001", "VR1, 0, 1, 0.1, 0.001", "DM1"):
        with pytest.raises(SafetyLimitError):
            k.check_outgoing(bad)


@pytest.mark.parametrize("fault", ["syntax", "refused", "timeout", "short"])
def test_a_failed_sweep_turns_every_smu_off(fault):
    head = _setup() + [("VL1, 1, 0.001, 0.1, -0.2", "ACK")]
    if fault == "refused":          # the instrument refuses the meter's list
        script = head + [("VL3, 0, 1e-05, 0, 0", "Illegal parameter (-122)"),
                         (":ERROR:LAST:GET", "Illegal parameter (-122)")]
    else:
        script = head + [("VL3, 0, 1e-05, 0, 0", "ACK"),
                         ("SM;DM2;LI 'I3','V3','CH3T'", "ACK"), ("MD;ME1", "ACK")]
        script += {"syntax": [("SP", "2")],                       # bit1: syntax error
                   "timeout": [("SP", "16")] * 3,                  # still busy
                   "short": [("SP", "1"), ("DO 'I3'", "N+1.0000E-06")]}[fault]
    t = Scripted(script + SAFE)
    k = K4200(t, timeout=0.0015)
    clk = Clock()
    err = InstrumentTimeout if fault == "timeout" else InstrumentError
    with pytest.raises(err):
        k.list_sweep({k.smu(1): [0.1, -0.2], k.smu(3): [0.0, 0.0]}, [k.smu(3)],
                     {k.smu(1): 1e-3, k.smu(3): 1e-5}, nplc=0.1, i_range=None,
                     now=clk.now, wait=clk.wait)
    assert t.done()                 # ... ending with US and every DV off
