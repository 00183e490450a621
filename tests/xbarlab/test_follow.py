"""The data side of the live view: following a file safely, faults, progress and ETA."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from database.runs import RunWriter
from xbarlab.follow import Follower, Snapshot, duration, status_text

TABLES = {"devices": {"device": ("i4", "1"), "row": ("i4", "1"), "col": ("i4", "1"),
                      "g_after_reset": ("f8", "S"), "g_initial": ("f8", "S"),
                      "g_after_set": ("f8", "S"), "set_pulses": ("i4", "1"),
                      "reset_pulses": ("i4", "1"), "initial_clipped": ("?", "1"),
                      "final_clipped": ("?", "1"),
                      "status": ("i1", "0=working, 1=stuck-HRS, 2=stuck-LRS, 3=failed")}}


def _writer(path, total=4):
    return RunWriter.open(path, protocol="stuck", config={}, station={"shape": [2, 2]},
                          seed=0, tables=TABLES, units_total=total)


def _unit(i):
    return {"devices": {"device": [i], "row": [i // 2], "col": [i % 2], "g_after_reset": [1e-4],
                        "g_initial": [2e-4], "g_after_set": [4e-4], "set_pulses": [3],
                        "reset_pulses": [4], "initial_clipped": [False],
                        "final_clipped": [False], "status": [i % 3]}}


@pytest.fixture
def follower(tmp_path):
    f = Follower(tmp_path / "run.h5", read_timeout_s=20)
    yield f
    f.close()


def test_waits_then_follows_commits_to_completion(follower):
    s = follower.poll()
    assert s.state == "waiting" and "no such file yet" in s.message
    w = _writer(follower.path)
    w.commit(0, _unit(0))
    t0 = time.time() - 100
    follower.clock = lambda: t0
    s = follower.poll()
    assert (s.state, s.done, s.total) == ("running", 1, 4)
    assert s.view.conductance.values[0, 0] == pytest.approx(100.0)  # uS
    assert follower.poll() is s  # nothing changed: nothing re-read
    w.commit(1, _unit(1))
    follower.clock = lambda: t0 + 10
    s = follower.poll()
    assert s.done == 2 and s.unit_s == pytest.approx(10) and s.eta_s == pytest.approx(20)
    assert np.isfinite(s.view.conductance.values).sum() == 2
    for i in (2, 3):
        w.commit(i, _unit(i))
    w.finish({})
    s = follower.poll()
    assert s.state == "complete" and s.done == 4
    assert status_text(s, time.time(), 1).startswith("complete: 4 of 4 devices done (100.0 %)")


def test_damaged_file_is_an_error_that_clears(follower):
    w = _writer(follower.path)
    w.commit(0, _unit(0))
    good = follower.poll()
    assert good.state == "running"
    data = follower.path.read_bytes()
    follower.path.write_bytes(b"this is not HDF5" * 64)
    assert follower.poll() is good  # one failed read may have raced the writer's publish
    s = follower.poll()  # the same file one poll later: damaged
    assert s.state == "error" and str(follower.path) in s.message
    assert "not a readable HDF5 file" in s.message
    assert s.view is good.view and s.done == 1  # the last good data stay on the page
    assert "ERROR:" in status_text(s, time.time(), 1)
    follower.path.write_bytes(data)
    assert follower.poll().state == "running"
    follower.path.unlink()
    assert "is gone" in follower.poll().message


def test_a_read_that_hangs_is_abandoned(tmp_path):
    """A campaign file whose tail is zeroed makes HDF5 (2.0) loop inside one call, holding the
    GIL: the follower must give up after its timeout, kill the reader and carry on."""
    from protocols.campaigns import disturbance
    from simulator.config import CrossbarConfig
    from simulator.crossbar import Crossbar
    from simulator.direct_rig import SimulatedRig

    path = tmp_path / "run.h5"
    disturbance.run(SimulatedRig(Crossbar(CrossbarConfig(rows=2, cols=2), seed=1)),
                    disturbance.DisturbanceConfig(), path, progress=False)
    good = path.read_bytes()
    f = Follower(path, read_timeout_s=2)
    try:
        assert f.poll().state == "complete"
        path.write_bytes(good[:4096] + b"\0" * (len(good) - 4096))
        t = time.monotonic()
        s = f.poll()
        if s.state != "error":  # a quick failure is believed at the second look
            s = f.poll()
        assert s.state == "error" and time.monotonic() - t < 10
        if "took more than 2 s" not in s.message:
            pytest.skip(f"this HDF5 no longer loops on this damage ({s.message})")
        assert "the file is damaged" in s.message
        path.write_bytes(good)
        assert f.poll().state == "complete"  # a fresh reader process
    finally:
        f.close()


def test_following_never_disturbs_the_writer(tmp_path):
    """A writer in another process commits as fast as it can while we poll as fast as we can:
    every commit must succeed (an HDF5 reader holding the file open makes them fail)."""
    path, go = tmp_path / "run.h5", tmp_path / "go"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path[:0] = {[str(Path(__file__).parent)]!r}
        from test_follow import _unit, _writer
        w = _writer({str(path)!r}, total=60)
        w.commit(0, _unit(0))
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        for i in range(1, 60):
            w.commit(i, _unit(i))
            time.sleep(0.01)
        w.finish({{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    f = Follower(path, read_timeout_s=20)
    try:
        while f.poll().done < 1:  # the reader is up and has seen the first commit
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
        go.touch()
        seen = set()
        while proc.poll() is None:
            seen.add(f.poll().done)
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        assert f.poll().state == "complete"
        assert len(seen) > 1  # we did read while it wrote
    finally:
        f.close()


def test_status_line_labels_every_number():
    now = 1_000_000.0
    s = Snapshot(3, "running", "", done=12, total=64, committed_at=now - 5, unit_s=20,
                 eta_s=52 * 20)
    text = status_text(s, now, 1)
    assert text.startswith("running: 12 of 64 devices done (18.8 %)")
    assert "(5 s ago)" in text and "ETA 17 min 15 s" in text
    stale = status_text(s, now + 600, 1)
    assert "no new unit for 10 min 05 s" in stale and "is the campaign still running?" in stale
    assert "ETA 17 min 00 s" in stale  # never below the 51 devices still to start
    assert "ETA after the next commit" in status_text(Snapshot(1, "running", "", done=0,
                                                               total=4), now, 1)
    assert duration(5) == "5 s" and duration(200) == "3 min 20 s" and duration(7500) == \
        "2 h 05 min"
