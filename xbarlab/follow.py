"""Follow a raw-run file while a campaign or transfer writes it, without touching the writer.

`Follower.poll()` looks at the size and modification time of the file and of its journal
(`<file>.journal`, where the writer commits between publishes); only when one changed does it
read the run with the store's readers, which return every committed unit and nothing else and
never block the writer (the writer replaces the file atomically and never writes it in place;
readers open it without HDF5 file locking).

The read runs in a child process, given `read_timeout_s`: a damaged file can make HDF5 loop
for minutes inside one call while holding the GIL (a raw-run file whose tail is zeroed does, in
`list_runs`), which in a thread would freeze the page and, with `--watch`, the campaign running
in the same process. A read that takes too long is abandoned and its process killed.

A file that cannot be read (damaged, truncated, not a raw-run file, a view that fails, a read
that hangs) turns the snapshot into an error state that keeps the last good data; the next good
read clears it. A read that fails is believed only when nothing changed one poll later, so a
read that raced the writer's publish is not shown as damage. No bokeh here: this is the data
side of the live view, testable on its own.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
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
        # the estimate runs down from the last commit, but never below the units still to start
        left = max(snap.eta_s - (now - snap.committed_at),
                   (snap.total - snap.done - 1) * (snap.unit_s or 0.0), 0.0)
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


def read_view(path: str, run: str | None) -> tuple[RunInfo, RunView]:
    """A run's attributes and view, from a raw-run file (the worker's job)."""
    infos = list_runs(path)
    if not infos:
        raise ValueError("the file holds no run yet")
    if run is None:
        info = infos[-1]
    else:
        info = next((i for i in infos if i.name == run), None)
        if info is None:
            raise ValueError(f"no run {run!r} (runs: {', '.join(i.name for i in infos)})")
    tables = {t: read_table(path, t, info.name) for t in info.rows}
    return info, run_view(info, tables)


def _serve() -> None:
    """The reader process (`python -m xbarlab.follow`): answer pickled (path, run) requests on
    stdin with pickled (ok, view or message) on stdout until stdin closes."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers may reach the channel
    pickle.dump("ready", out)
    out.flush()
    while True:
        try:
            path, run = pickle.load(sys.stdin.buffer)
        except (EOFError, OSError):
            return
        try:
            answer = (True, read_view(path, run))
        except Exception as e:  # reported to the follower as a fault of the file
            kind = "" if type(e).__name__ in ("DatabaseError", "SchemaError", "ValueError") \
                else f"{type(e).__name__}: "
            answer = (False, kind + str(e))
        pickle.dump(answer, out)
        out.flush()


class ReadTimeout(Exception):
    pass


class Reader:
    """`read_view` in a child process that is killed (and replaced) when a read hangs.

    A plain subprocess, not multiprocessing: spawn would re-run the caller's main script.
    A thread pumps the child's answers into a queue so every wait has a timeout, on any OS.
    """

    def __init__(self, start_timeout_s: float = 120.0):
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._answers: queue.Queue = queue.Queue()

    def start(self) -> None:
        """Start the process now (it imports for a second or two); `read` waits for it."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen([sys.executable, "-m", "xbarlab.follow"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._answers = queue.Queue()
        threading.Thread(target=self._pump, args=(self._proc.stdout, self._answers),
                         name="xbarlab-watch-reader", daemon=True).start()
        self._ready = False

    @staticmethod
    def _pump(stream, answers: queue.Queue) -> None:
        while True:
            try:
                answers.put(pickle.load(stream))
            except Exception as e:  # the process ended or was killed
                answers.put(EOFError(f"the reader process ended ({type(e).__name__})"))
                return

    def _wait(self, timeout_s: float, what: str):
        try:
            answer = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            self.close()
            raise ReadTimeout(what) from None
        if isinstance(answer, EOFError):
            self.close()
            raise answer
        return answer

    def read(self, path: Path, run: str | None, timeout_s: float) -> tuple[RunInfo, RunView]:
        if self._proc is None or self._proc.poll() is not None:
            self.start()
        if not self._ready:
            self._wait(self.start_timeout_s, "the reader process did not start")
            self._ready = True
        pickle.dump((str(path), run), self._proc.stdin)
        self._proc.stdin.flush()
        ok, payload = self._wait(timeout_s, f"reading took more than {timeout_s:g} s")
        if not ok:
            raise ValueError(payload)
        return payload

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            for f in (self._proc.stdin, self._proc.stdout):
                f.close()
        self._proc = None


class Follower:
    """Polls one raw-run file (the run `run`, default the latest) into `Snapshot`s."""

    def __init__(self, path: str | os.PathLike, run: str | None = None, *,
                 read_timeout_s: float = 30.0, clock=time.time):
        self.path = Path(path)
        #: wall clock: a change is dated when a poll sees it (the file's own mtime is the
        #: writer's business: it guards the file with it)
        self.clock = clock
        self.run = run
        self.read_timeout_s = read_timeout_s
        self._reader = Reader()
        self._journal = self.path.with_name(self.path.name + ".journal")
        self._sig: tuple | None = None
        self._suspect: tuple | None = None  # a signature whose read failed once
        self._marks: list[tuple[float, int]] = []  # (commit time, units done) as seen
        self.snapshot = Snapshot(0, "waiting", f"waiting for {self.path} (no such file yet)")

    def start(self) -> None:
        """Start the reader process ahead of the first poll (it takes a second or two)."""
        self._reader.start()

    def close(self) -> None:
        self._reader.close()

    def _signature(self) -> tuple:
        st = os.stat(self.path)
        try:
            j = os.stat(self._journal)
            journal = (j.st_mtime_ns, j.st_size)
        except FileNotFoundError:
            journal = None
        return (st.st_mtime_ns, st.st_size, st.st_ino, journal)

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
        self._sig = sig
        try:
            info, v = self._reader.read(self.path, self.run, self.read_timeout_s)
        except ReadTimeout as e:
            return self._error(f"{self.path}: {e}: the file is damaged (or very large: "
                               "raise --read-timeout)")
        except (EOFError, OSError) as e:  # the reader process died (killed, out of memory)
            self._reader.close()
            return self._error(f"{self.path}: the reader process failed ({e!r})")
        except ValueError as e:
            # believe a failure only when nothing changed by the next poll (it is then read once
            # more): a read can race the writer's publish
            if self._suspect != sig:
                self._suspect, self._sig = sig, None
                return self.snapshot
            text = str(e)
            return self._error(text if str(self.path) in text else f"{self.path}: {text}")
        self._suspect = None
        return self._update(info, v, self.clock())

    def _update(self, info: RunInfo, v: RunView, seen: float) -> Snapshot:
        done, total = unit_counts(info)
        prev = self.snapshot.info
        if prev is None or prev.name != info.name or prev.start_time != info.start_time:
            self._marks = []  # another run (or the file was replaced): start the ETA afresh
        if not self._marks or self._marks[-1][1] != done:
            self._marks.append((seen, done))
        unit_s = eta = None
        (t0, d0), (t1, d1) = self._marks[0], self._marks[-1]
        if d1 > d0 and t1 > t0:
            unit_s = (t1 - t0) / (d1 - d0)
        elif done > 0 and (start := _start_time(info)) is not None and seen > start:
            unit_s = (seen - start) / done  # from the run's start (pauses and resumes count)
        if unit_s is not None and math.isfinite(unit_s):
            eta = unit_s * (total - done)
        state = "complete" if info.complete else "running"
        return self._set(state=state, message="", info=info, view=v, done=done, total=total,
                         committed_at=seen, unit_s=unit_s, eta_s=eta)


if __name__ == "__main__":
    _serve()
