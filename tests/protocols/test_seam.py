"""The rig seam's own promises: waiting, and the state a commit saves and a resume restores."""

import time

import numpy as np
import pytest
from conftest import ToyRig, sim_rig

from protocols.campaigns import tuning_untuning as tu
from protocols.campaigns._loop import pack_state, unpack_state
from protocols.rig import RealLab


def test_wait_on_a_simulated_rig_advances_the_virtual_clock_as_wait():
    rig = sim_rig(2, 2)
    clk = rig.crossbar.clock
    t0, w0 = rig.clock, time.monotonic()
    rig.wait(3600.0)
    assert rig.clock == pytest.approx(t0 + 3600.0)
    assert clk.totals["wait"] == pytest.approx(3600.0)
    assert time.monotonic() - w0 < 5.0                 # an hour of lab time, no real hour
    rig.wait(0.0)
    assert clk.totals["wait"] == pytest.approx(3600.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            rig.wait(bad)


def test_wait_on_a_real_lab_sleeps_and_its_clock_is_elapsed_time():
    lab = RealLab()
    rig = ToyRig()
    rig.lab = lab
    w0 = time.monotonic()
    rig.wait(0.05)
    assert time.monotonic() - w0 >= 0.05
    assert lab.now() >= 0.05
    assert not rig.restorable and rig.save_state() is None


def test_saved_state_restores_a_simulated_rig_bit_identically():
    rig = sim_rig(3, 3, seed=4)
    assert rig.restorable
    rig.pulse(1, 1, 1.4, 200e-9)
    blob = pack_state(rig.save_state())
    ahead = [rig.pulse_and_read(r, c, 1.3, 200e-9, n_reads=3) for r, c in ((0, 0), (1, 2))]
    t_ahead = rig.clock
    rig.restore_state(unpack_state(blob))
    again = [rig.pulse_and_read(r, c, 1.3, 200e-9, n_reads=3) for r, c in ((0, 0), (1, 2))]
    np.testing.assert_array_equal(np.array(again), np.array(ahead))
    assert rig.clock == t_ahead


def test_settle_time_goes_through_the_seam(tmp_path):
    # tuning-untuning's settle_s is instrument time that passes: on a simulated rig the clock
    # is charged with it (and nothing sleeps)
    rig = sim_rig(1, 1, seed=2, stuck_hrs_rate=0.0, stuck_lrs_rate=0.0)
    cfg = tu.TuningUntuningConfig(levels=1, repeats=2, settle_s=50.0, record_history=False)
    w0 = time.monotonic()
    tu.run(rig, cfg, tmp_path / "s.h5", seed=0, progress=False)
    assert rig.crossbar.clock.totals["wait"] == pytest.approx(100.0)
    assert time.monotonic() - w0 < 50.0


def test_a_rig_without_a_dc_path_says_so_before_anything_happens():
    from protocols.errors import NotAvailableError

    rig = ToyRig((2, 2))
    assert rig.channels is None
    with pytest.raises(NotAvailableError, match="not available on this rig"):
        rig.column_currents([0], np.array([[0.1]]), [0])
    assert rig.clock == 0.0
