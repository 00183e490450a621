"""Round trips and wall time per pulse+read step through each rig on emulated instruments, and
the instrument time the virtual clock predicts for tuning one device (~60 pulses + 10 reads)
and programming an 8x8 array (a fixed 60 steps per device; bench/station_time.py tunes real
target maps). Target: <= 200 us wall time per pulse+read step.

    python bench/instruments.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `instruments` package: put the repository root there instead.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _ROOT / "bench"]

from xbarlab.station import load_station  # noqa: E402

STATIONS = Path(__file__).resolve().parents[1] / "xbarlab" / "stations"


def _trips(rig) -> int:
    n = 0
    for name in ("pmu", "matrix", "b1500"):
        inst = getattr(rig, name, None)
        if inst is not None:
            n += inst.round_trips
    return n


def step_cost(station: str, steps: int = 300, repeats: int = 5) -> None:
    st = load_station(STATIONS / f"{station}.yaml")
    with st.open_rig() as rig:
        rows, cols = rig.shape
        rig.pulse_and_read(0, 0, 1.0, 200e-9)           # session set-up outside the timing
        wg = getattr(rig, "wgfmu", None)
        t0, c0 = _trips(rig), (wg.calls if wg else 0)
        walls, cpus = [], []
        # several repeats: the machine is shared, so report the best and the median repeat, and
        # the CPU time of this process (what the wall time is on an idle machine)
        for _rep in range(repeats):
            w0, c0_ = time.perf_counter(), time.process_time()
            for i in range(steps):
                # amplitude ramps like a tuning run, so the waveform changes every step
                rig.pulse_and_read(0, 0, 0.8 + 0.02 * (i % 40), 200e-9)
            walls.append((time.perf_counter() - w0) / steps)
            cpus.append((time.process_time() - c0_) / steps)
        n = steps * repeats
        trips = (_trips(rig) - t0) / n
        calls = ((wg.calls - c0) / n) if wg else 0
        lib = f", {calls:.0f} WGFMU library calls" if wg else ""
        print(f"{station:10s} pulse+read step: {min(walls) * 1e6:7.0f} us wall (best of "
              f"{repeats} x {steps}; median {statistics.median(walls) * 1e6:.0f} us; CPU "
              f"{min(cpus) * 1e6:.0f} us), {trips:.0f} VISA round trips{lib}  "
              "(target <= 200 us)")

        # instrument time predicted by the virtual clock
        clock = st.chip.clock
        c = clock.now
        for i in range(60):
            rig.pulse_and_read(0, 0, 0.8 + 0.02 * i, 200e-9)
        rig.read_repeated(0, 0, 10)
        tune = clock.now - c
        print(f"{'':10s} tune one device (60 pulse+read, 10 reads): {tune:7.2f} s instrument time")
        if rows * cols > 1:
            c = clock.now
            w0 = time.perf_counter()
            for r in range(rows):
                for col in range(cols):
                    for i in range(60):
                        rig.pulse_and_read(r, col, 0.8 + 0.02 * (i % 40), 200e-9)
                    rig.read_repeated(r, col, 10)
            prog = clock.now - c
            print(f"{'':10s} program {rows}x{cols} (60 steps + 10 reads per device): "
                  f"{prog:7.1f} s instrument time, {time.perf_counter() - w0:5.1f} s wall")
        tot = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(clock.totals.items()))
        print(f"{'':10s} clock by category: {tot}")


if __name__ == "__main__":
    step_cost("sim-pmu")
    step_cost("sim-wgfmu")
