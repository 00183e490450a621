"""Call-exact tests of the WGFMU driver over a recording library backend."""

import pytest

from instruments import InstrumentError, SafetyLimitError, SafetyLimits
from instruments import wgfmu as W
from instruments.wgfmu import Wgfmu


class RecordingLib:
    """Answers 0 to everything and records the calls; `fail` maps a call name to an error."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail or {}
        self.errors = []

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args):
            self.calls.append((name, *args))
            if name in self.fail:
                self.errors.append(self.fail[name][1])
                return self.fail[name][0]
            if name == "getMeasureValueSize":
                return 0, 2, 2
            if name == "getMeasureValues":
                return 0, [5e-6, 15e-6], [-2e-5, -2.1e-5]
            return 0
        return call

    def getErrorSize(self):
        return 0, sum(len(e) for e in self.errors)

    def getError(self):
        return 0, self.errors.pop(0) if self.errors else ""


def test_connect_sequence():
    lib = RecordingLib()
    w = Wgfmu(lib)
    w.open("GPIB0::17::INSTR")
    w.channel(101).setup()
    w.channel(102).setup(measure_current_range=W.MEASURE_CURRENT_RANGE_100UA)
    w.channel(101).connect()
    w.channel(102).connect()
    assert lib.calls == [
        ("openSession", "GPIB0::17::INSTR"), ("setTimeout", 10.0), ("initialize",),
        ("setOperationMode", 101, 2001), ("setForceVoltageRange", 101, 3001),
        ("setOperationMode", 102, 2001), ("setForceVoltageRange", 102, 3001),
        ("setMeasureMode", 102, 4001), ("setMeasureCurrentRange", 102, 6003),
        ("connect", 101), ("connect", 102),
    ]


def test_pulse_and_read_calls_and_results():
    lib = RecordingLib()
    w = Wgfmu(lib)
    w.clear()
    w.create_pattern("top", 0.0)
    w.add_vectors("top", [(10e-9, 1.5), (180e-9, 1.5), (10e-9, 0.0)])
    w.set_measure_event("bot", "read", 2e-6, 1, 8e-6, 8e-6)
    w.channel(101).add_sequence("top", 1)
    w.execute()
    w.wait()
    t, v = w.channel(102).measured()
    assert list(v) == [-2e-5, -2.1e-5] and list(t) == [5e-6, 15e-6]
    assert lib.calls[:8] == [
        ("clear",), ("createPattern", "top", 0.0), ("addVector", "top", 10e-9, 1.5),
        ("addVector", "top", 180e-9, 1.5), ("addVector", "top", 10e-9, 0.0),
        ("setMeasureEvent", "bot", "read", 2e-6, 1, 8e-6, 8e-6, 12000),
        ("addSequence", 101, "top", 1.0), ("execute",),
    ]
    assert lib.calls[-2:] == [("getMeasureValueSize", 102), ("getMeasureValues", 102, 0, 2)]


def test_library_error_raises_with_its_text():
    lib = RecordingLib(fail={"createPattern": (-12, "Pattern top already exists.")})
    with pytest.raises(InstrumentError) as e:
        Wgfmu(lib).create_pattern("top", 0.0)
    m = str(e.value)
    assert "PATTERN_ALREADY_EXISTS" in m and "WGFMU_createPattern('top', 0.0)" in m
    assert "already exists" in m


def test_out_of_limits_vectors_reach_no_library_call():
    lib = RecordingLib()
    w = Wgfmu(lib, limits=SafetyLimits(v_set_max=2.0, v_reset_max=2.0))
    with pytest.raises(SafetyLimitError):
        w.add_vectors("top", [(10e-9, 1.0), (180e-9, -2.4), (10e-9, 0.0)])
    with pytest.raises(SafetyLimitError):
        w.create_pattern("top", 3.0)
    assert lib.calls == []


def test_close_leaves_channels_initialized_and_session_closed():
    lib = RecordingLib()
    with pytest.raises(KeyboardInterrupt), Wgfmu(lib) as w:
        w.open("GPIB0::17::INSTR")
        lib.calls.clear()
        raise KeyboardInterrupt
    assert lib.calls == [("abort",), ("initialize",), ("closeSession",)]


def test_ctypes_backend_fails_clearly_without_the_library(monkeypatch):
    from instruments.wgfmu_ctypes import CtypesWgfmuLibrary

    monkeypatch.delenv("XBARLAB_WGFMU_LIBRARY", raising=False)
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    with pytest.raises(InstrumentError, match="wgfmu.dll"):
        CtypesWgfmuLibrary()


def test_rsu_smu_pass_through_is_the_smu_operation_mode():
    # WGFMU_OPERATION_MODE_SMU = 2003 (wgfmu.h, instruments.md §3.3): the RSU passes the SMU on
    # its SMU input through; no force range is set in that mode
    lib = RecordingLib()
    w = Wgfmu(lib)
    ch = w.channel(102)
    assert w.channel(102) is ch                   # one object per channel
    ch.setup(mode=W.OPERATION_MODE_SMU, force_range=None)
    ch.connect()
    w.update()                                    # WGFMU_update: the setup reaches the channel
    ch.disconnect()
    assert lib.calls == [("setOperationMode", 102, 2003), ("connect", 102), ("update",),
                         ("disconnect", 102)]
