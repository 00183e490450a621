import numpy as np
import pytest

from instruments import SafetyLimitError, SafetyLimits
from protocols.rig import CrossbarRig


class _RecordingRig(CrossbarRig):
    name = "recording"

    def __init__(self):
        super().__init__((2, 3), SafetyLimits())
        self.sent = []
        self.safe_calls = 0

    @property
    def clock(self):
        return 0.0

    def _read_repeated(self, row, col, n):
        self.sent.append(("read", row, col, n))
        return np.full(n, 1e-4)

    def _pulse(self, row, col, volts, seconds):
        self.sent.append(("pulse", row, col, volts, seconds))

    def _safe_state(self):
        self.safe_calls += 1


def test_limits_refuse_out_of_envelope_before_the_rig_sees_it():
    rig = _RecordingRig()
    for v, w in [(2.2, 200e-9), (-2.6, 200e-9), (1.0, 1e-12), (1.0, 2e-3), (float("nan"), 1e-7)]:
        with pytest.raises(SafetyLimitError):
            rig.pulse(0, 0, v, w)
        with pytest.raises(SafetyLimitError):
            rig.pulse_and_read(0, 0, v, w)
    assert rig.sent == []
    rig.pulse(1, 2, 2.1, 200e-9)
    assert rig.sent == [("pulse", 1, 2, 2.1, 200e-9)]


def test_out_of_array_device_and_bad_counts_rejected():
    rig = _RecordingRig()
    with pytest.raises(IndexError):
        rig.read(2, 0)
    with pytest.raises(ValueError):
        rig.read_repeated(0, 0, 0)
    assert rig.read_array().shape == (2, 3)


def test_exception_in_with_block_leaves_rig_safe():
    rig = _RecordingRig()
    with pytest.raises(RuntimeError), rig:
        raise RuntimeError("mid-pulse failure")
    assert rig.safe_calls >= 1


def test_limits_validation():
    with pytest.raises(ValueError):
        SafetyLimits(width_min=1e-3, width_max=1e-6)
    with pytest.raises(ValueError):
        SafetyLimits(v_set_max=-1)
    lim = SafetyLimits(v_read_max=0.3)
    with pytest.raises(SafetyLimitError):
        lim.check_bias(0.31)
    with pytest.raises(SafetyLimitError):
        lim.check_compliance(1.0)
