"""Shared helpers of the reliability suite: simulated stations and checks on the emulators' state.

(Not a conftest.py: other test folders import their conftest by the bare name `conftest`, and a
second module of that name would shadow theirs. Test modules import what they need from here,
the autouse fixture included.)

"Safe" is checked on what the emulated instruments hold, never on what the driver believes:
every 707B relay open (as the instrument reports it and physically), every PMU output off,
every SMU disabled or at 0 V, every WGFMU channel disconnected, and no crossbar line driven by a
nonzero level in the simulated lab world.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import numpy as np
import pytest

from xbarlab.station import load_station

ROOT = Path(__file__).resolve().parents[2]
STATIONS = ROOT / "xbarlab" / "stations"
PMU_STATION = STATIONS / "sim-pmu.yaml"
WGFMU_STATION = STATIONS / "sim-wgfmu.yaml"


def ctrl_c_as_in_a_terminal() -> None:
    """`preexec_fn` of every child a test sends SIGINT: Ctrl-C's default disposition, as in a
    terminal. A shell that starts a job in the background (`nohup ... &`, some CI runners)
    leaves SIGINT ignored, children inherit that and Python then never installs its handler,
    so every signal would be lost and the test would fail for the wrong reason."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def single_thread_blas():
    # small nodal solves are far slower with threaded BLAS on a busy shared machine
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def open_station(name: str = "sim-pmu"):
    """(station, rig) for a shipped simulated station."""
    st = load_station(STATIONS / f"{name}.yaml")
    return st, st.open_rig()


def emulators(st) -> dict[str, object]:
    out = dict(st.visa_library.instruments) if st.visa_library is not None else {}
    if st.wgfmu_library is not None:
        out["wgfmu"] = st.wgfmu_library
    return out


def unsafe_parts(st, skip: tuple[str, ...] = ()) -> list[str]:
    """Everything on the emulated station that is not in its safe state ([] = all safe).

    `skip` names resources whose instrument is unreachable (a dropped connection): the driver
    cannot command them, so their own state is reported by `lost_state` instead."""
    bad: list[str] = []
    for name, emu in emulators(st).items():
        if name in skip:
            continue
        if hasattr(emu, "physically_closed"):
            if emu.closed:
                bad.append(f"{name}: relays reported closed {sorted(emu.closed)[:4]}")
            if emu.physically_closed():
                bad.append(f"{name}: relays physically closed")
        if hasattr(emu, "outputs") and any(emu.outputs.values()):
            bad.append(f"{name}: PMU outputs on {emu.outputs}")
        if hasattr(emu, "smu"):
            bad += [f"{name}: SMU{ch} at {v} V" for ch, v in emu.smu.items() if v != 0.0]
        if hasattr(emu, "enabled") and hasattr(emu, "levels"):  # B1500
            bad += [f"{name}: SMU{ch} enabled" for ch in emu.enabled]
        if hasattr(emu, "connected") and emu.connected:
            bad.append(f"{name}: WGFMU channels connected {sorted(emu.connected)}")
        if hasattr(emu, "output_levels"):
            for k, v in emu.output_levels().items():
                if not (math.isnan(v) or v == 0.0):
                    bad.append(f"{name}: output {k} at {v} V")
    bad += energised_lines(st)
    return bad


def energised_lines(st) -> list[str]:
    """Crossbar lines held at a nonzero level by whatever is physically connected."""
    if st.world is None:
        return []
    rows, cols = st.world.line_levels({})
    out = [f"row {i} at {v} V" for i, v in enumerate(rows) if not (math.isnan(v) or v == 0)]
    out += [f"col {j} at {v} V" for j, v in enumerate(cols) if not (math.isnan(v) or v == 0)]
    return out


def snapshot(st) -> dict:
    """Comparable state of every emulator and of the crossbar (for 'nothing was applied')."""
    snap: dict = {}
    for name, emu in emulators(st).items():
        d = {}
        for attr in ("closed", "outputs", "smu", "enabled", "levels", "connected", "executions",
                     "selections", "seqs", "patterns", "sequences"):
            if hasattr(emu, attr):
                v = getattr(emu, attr)
                d[attr] = repr(sorted(v.items()) if isinstance(v, dict) else
                               sorted(v) if isinstance(v, set) else v)
        snap[name] = d
    if st.world is not None:
        snap["pulses_applied"] = st.world.pulses_applied
        snap["g"] = st.world.crossbar.conductance().copy()
    return snap


def assert_unchanged(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for k in before:
        if isinstance(before[k], np.ndarray):
            np.testing.assert_array_equal(before[k], after[k], err_msg=k)
        else:
            assert before[k] == after[k], k


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from xbarlab.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
