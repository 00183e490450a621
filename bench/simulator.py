"""Simulator speed figures (prints; no assertions). Run: python bench/simulator.py

Targets (issue 2): >= 50,000 single-device pulse updates per second, full 8x8 grounded read map
in under 2 ms.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from simulator.config import CrossbarConfig, DeviceParams  # noqa: E402
from simulator.crossbar import Crossbar  # noqa: E402
from simulator.direct_rig import SimulatedRig  # noqa: E402


def rate(fn, min_time=0.4):
    """Calls per second of fn(), timed over at least min_time seconds."""
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(50):
            fn()
        n += 50
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return n / dt


def line(label, per_s):
    print(f"  {label:<52s} {per_s:>12,.0f} /s   {1e3 / per_s:9.4f} ms each")


def main() -> None:
    print("xbarlab simulator benchmark")
    print(f"  numpy {np.__version__}, {os.cpu_count()} CPUs")
    one = Crossbar(CrossbarConfig(rows=1, cols=1, stuck_hrs_rate=0, stuck_lrs_rate=0), seed=0)
    xb = Crossbar(seed=0)
    v = np.full((8, 8), -0.4)
    print("pulses")
    line("single device, 1x1 crossbar (apply_device_voltages)",
         rate(lambda: one.apply_device_voltages(0.6, 200e-9)))
    line("single device in an 8x8 (pulse_device)", rate(lambda: xb.pulse_device(3, 4, 0.6, 200e-9)))
    line("whole 8x8 array, vectorised (apply_device_voltages)",
         rate(lambda: xb.apply_device_voltages(v, 200e-9)))
    line("8x8 V/3 write pulse (pulse_v3)", rate(lambda: xb.pulse_v3(3, 4, 0.6, 200e-9)))
    print("reads (sinh I-V, Newton / chord iterations)")
    for r in (0.0, 0.75):
        cfg = CrossbarConfig(r_line=r, r_source=0.0 if r == 0 else 2.0)
        x = Crossbar(cfg, seed=1)
        tag = f"r_line={r} ohm, r_source={cfg.r_source} ohm"
        line(f"8x8 grounded read map, {tag}", rate(lambda x=x: x.read_map()))
        line(f"8x8 single grounded read, {tag}", rate(lambda x=x: x.read(2, 5)))
    x = Crossbar(seed=1)
    line("8x8 floating read map (64 general solves), default r",
         rate(lambda: x.read_map(scheme="floating"), min_time=1.0))
    x32 = Crossbar(CrossbarConfig(rows=32, cols=32), seed=1)
    line("32x32 grounded read map, default r", rate(lambda: x32.read_map(), min_time=1.0))
    line("32x32 single grounded read, default r", rate(lambda: x32.read(7, 9), min_time=1.0))
    print("rig (SimulatedRig: V/3 pulse + grounded verify read, default r)")
    rig = SimulatedRig(Crossbar(seed=2))
    line("pulse_and_read step", rate(lambda: rig.pulse_and_read(1, 1, 0.6, 200e-9)))
    print(f"  virtual instrument time booked so far: {rig.clock:.2f} s")
    # what the slow fluctuators cost: the same step with them switched off
    quiet = SimulatedRig(Crossbar(CrossbarConfig(device=DeviceParams(rtn_count=0)), seed=2))
    line("pulse_and_read step, no fluctuators (rtn_count=0)",
         rate(lambda: quiet.pulse_and_read(1, 1, 0.6, 200e-9)))
    line("pulse_and_read step (again, same process)",
         rate(lambda: rig.pulse_and_read(1, 1, 0.6, 200e-9)))
    line("read_array, 64 reads each at its own time", rate(rig.read_array))


if __name__ == "__main__":
    main()
