"""Follow a raw-run file while a campaign or transfer writes it, without touching the writer.

`Follower.poll()` looks at the file's size and modification time; only when they changed does it
copy the file (one plain sequential read, no HDF5 open and so no HDF5 file lock) and read the
copy with the store's readers, which return committed rows only. Reading the live file itself
would be unsafe: HDF5 takes a file lock on open, and a writer that opens the file for a commit
while a reader holds it open fails ("unable to lock file"), which would stop the campaign. If
the file changed while it was copied, the copy is discarded and the next poll tries again.

A file that cannot be read (damaged, truncated, not a raw-run file, a view that fails) turns the
snapshot into an error state that keeps the last good data; the next good read clears it.
No bokeh here: this is the data side of the live view, testable on its own.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from database.figures import RunView, run_view, unit_counts
from database.runs import RunInfo, list_runs, read_table

log = logging.getLogger("xbarlab.watch")


@dataclass(frozen=True)
class Snapshot:
    """What the live view shows; `version` changes whenever anything shown changes."""

    version: int
    state: str                     # "waiting", "running", "complete" or "error"
    message: str                   # why it waits, or the error (one line)
    info: RunInfo | None = None
    view: RunView | None = None
    done: int = 0
    total: int = 0
    committed_at: float | None = None  # wall time of the last commit shown (file mtime)
    unit_s: float | None = None        # wall time per unit so far
    eta_s: float | None = None         # wall time left after `committed_at`


def duration(seconds: float) -> str:
    """12 s, 3 min 20 s, 2 h 05 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


def status_text(snap: Snapshot, now: float, poll_s: float) -> str:
    """One line saying where the run stands, every number labelled."""
    unit = snap.view.unit if snap.view is not None else "devices"
    if snap.state == "waiting":
        return snap.message
    if snap.state == "error":
        seen = f"showing the data read at {_clock(snap.committed_at)}" if snap.info else \
            "nothing read yet"
        return f"ERROR: {snap.message} ({seen}; retrying every {poll_s:g} s)"
    share = f"{100 * snap.done / snap.total:.1f} %" if snap.total else "-"
    head = f"{snap.done} of {snap.total} {unit} done ({share})"
    if snap.state == "complete":
        end = snap.info.end_time if snap.info else ""
        return f"complete: {head}" + (f", finished {end}" if end else "")
    out = [f"running: {head}"]
    if snap.committed_at is not None:
        out.append(f"last commit {_clock(snap.committed_at)} "
                   f"({duration(now - snap.committed_at)} ago)")
    if snap.eta_s is not None:
        left = max(0.0, snap.committed_at + snap.eta_s - now)
        out.append(f"ETA {duration(left)} (about {_clock(now + left)})")
        if snap.unit_s and now - snap.committed_at > max(3 * snap.unit_s, 60):
            out.append(f"no new unit for {duration(now - snap.committed_at)} (a unit took "
                       f"{duration(snap.unit_s)} so far): is the campaign still running?")
    else:
        out.append("ETA after the next commit")
    return " · ".join(out)


def _start_time(info: RunInfo) -> float | None:
    try:
        return datetime.fromisoformat(info.start_time).timestamp()
    except (TypeError, ValueError):
        return None


class Follower:
    """Polls one raw-run file (the run `run`, default the latest) into `Snapshot`s."""

    def __init__(self, path: str | os.PathLike, run: str | None = None):
        self.path = Path(path)
        self.run = run
        self._tmp = tempfile.TemporaryDirectory(prefix="xbarlab-watch-")
        self._copy = Path(self._tmp.name) / "snapshot.h5"
        self._sig: tuple | None = None
        self._marks: list[tuple[float, int]] = []  # (commit time, units done) as seen
        self.snapshot = Snapshot(0, "waiting", f"waiting for {self.path} (no such file yet)")

    def close(self) -> None:
        self._tmp.cleanup()

    def _signature(self) -> tuple:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _set(self, **kw) -> Snapshot:
        self.snapshot = replace(self.snapshot, version=self.snapshot.version + 1, **kw)
        return self.snapshot

    def _error(self, message: str) -> Snapshot:
        message = " ".join(message.split())
        if self.snapshot.state == "error" and self.snapshot.message == message:
            return self.snapshot
        log.warning("watch %s: %s", self.path, message)
        return self._set(state="error", message=message)

    def poll(self) -> Snapshot:
        """Look at the file; re-read it only if it changed. Never raises."""
        try:
            sig = self._signature()
        except FileNotFoundError:
            self._sig = None
            if self.snapshot.info is None:
                return self.snapshot
            return self._error(f"{self.path} is gone (moved or deleted)")
        except OSError as e:
            return self._error(f"{self.path}: cannot look at the file ({e})")
        if sig == self._sig:
            return self.snapshot
        try:
            shutil.copyfile(self.path, self._copy)
            changed = self._signature() != sig
        except OSError as e:
            return self._error(f"{self.path}: cannot read the file ({e})")
        if changed:  # written while we copied: the copy may be torn, try again next poll
            return self.snapshot
        self._sig = sig
        try:
            info, tables = self._read()
            v = run_view(info, tables)
        except Exception as e:  # any fault is shown on the page, never raised into the server
            log.debug("watch %s", self.path, exc_info=True)
            kind = "" if type(e).__name__ in ("DatabaseError", "SchemaError") else \
                f"{type(e).__name__}: "
            return self._error(kind + str(e).replace(str(self._copy), str(self.path)))
        return self._update(info, v, sig[0] / 1e9)

    def _read(self) -> tuple[RunInfo, dict]:
        infos = list_runs(self._copy)
        if not infos:
            raise ValueError(f"{self.path}: the file holds no run yet")
        if self.run is None:
            info = infos[-1]
        else:
            info = next((i for i in infos if i.name == self.run), None)
            if info is None:
                raise ValueError(f"{self.path}: no run {self.run!r} "
                                 f"(runs: {', '.join(i.name for i in infos)})")
        return info, {t: read_table(self._copy, t, info.name) for t in info.rows}

    def _update(self, info: RunInfo, v: RunView, mtime: float) -> Snapshot:
        done, total = unit_counts(info)
        prev = self.snapshot.info
        if prev is None or prev.name != info.name or prev.start_time != info.start_time:
            self._marks = []  # another run (or the file was replaced): start the ETA afresh
        if not self._marks or self._marks[-1][1] != done:
            self._marks.append((mtime, done))
        unit_s = eta = None
        (t0, d0), (t1, d1) = self._marks[0], self._marks[-1]
        if d1 > d0 and t1 > t0:
            unit_s = (t1 - t0) / (d1 - d0)
        elif done > 0 and (start := _start_time(info)) is not None and mtime > start:
            unit_s = (mtime - start) / done  # from the run's start (pauses and resumes count)
        if unit_s is not None and math.isfinite(unit_s):
            eta = unit_s * (total - done)
        state = "complete" if info.complete else "running"
        return self._set(state=state, message="", info=info, view=v, done=done, total=total,
                         committed_at=mtime, unit_s=unit_s, eta_s=eta)
