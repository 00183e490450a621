"""Raw-run store: one HDF5 file per campaign, crash-safe and resumable.

Layout (docs/hdf5-schema.md has the full schema):

    /                      attrs kind="xbarlab-runs", format_version
    /runs/<run>/           attrs protocol, config (JSON), station (JSON), software_version,
                           start_time, end_time ("" while running), seed, devices_total,
                           complete, progress (JSON: devices_done, rows per table, state slot)
    /runs/<run>/<table>/   one resizable, chunked 1-D dataset per column, attr `units` on each
    /runs/<run>/_state/    slot0, slot1: opaque bytes (uint8) of the simulated chip state

Crash safety: the file is opened, appended to and closed once per device, so between devices it
is a closed, consistent HDF5 file. Inside a commit the columns are written first, then the chip
state into the slot *not* referenced by `progress`, and the single `progress` attribute last:
until that attribute changes, the previous device count, row counts and state slot stay valid,
so a kill at any moment loses at most the device in progress. Resuming truncates every column to
the committed row count.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from database.errors import DatabaseError, SchemaError

KIND = "xbarlab-runs"
FORMAT_VERSION = 1
_CHUNK = 1024

#: table spec: {table: {column: (numpy dtype string, units)}}
TableSpecs = dict[str, dict[str, tuple[str, str]]]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _software_version() -> str:
    # the installed distribution's version (the store imports no higher package)
    try:
        return metadata.version("xbarlab")
    except metadata.PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+unknown"


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _open(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as e:
        if mode != "r" and _denied(path, e):
            raise DatabaseError(f"{path}: cannot write: the file or its folder is read-only "
                                "(nothing was changed)") from None
        raise SchemaError(f"{path}: not a readable HDF5 file ({e})") from None


def _denied(path: Path, e: OSError) -> bool:
    text = str(e)
    return (e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or "errno = 13" in text
            or "errno = 30" in text or "Permission denied" in text or "Read-only" in text
            or (path.exists() and not os.access(path, os.W_OK)))


def _write_failed(path: Path, e: OSError, what: str, done: int) -> DatabaseError:
    why = "disk full" if (e.errno == errno.ENOSPC or "No space" in str(e)) else str(e)
    return DatabaseError(f"{path}: cannot write {what} ({why}); the {done} devices committed "
                         "before are intact: free space and re-run to resume")


# -- one writer per file ---------------------------------------------------------------------
# A POSIX record lock on `<file>.lock`, held while a RunWriter may append. The OS drops it when
# the process dies (SIGKILL included), so a stale lock never blocks a resume; a second process
# is refused at once. Record locks belong to the process, so re-opening the same file in one
# process (a resume after an error) is allowed. Where fcntl is missing (Windows) only the
# progress check in `commit_device` guards against a second writer.
_LOCKS: dict[Path, int] = {}


def _lock(path: Path) -> None:
    key = path.resolve()
    if key in _LOCKS:
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if _denied(lock, e):
            raise DatabaseError(f"{path}: cannot write: the folder is read-only "
                                "(nothing was changed)") from None
        raise DatabaseError(f"{lock}: cannot create the lock file ({e})") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatabaseError(f"{path} is being written by another xbarlab process; wait for it "
                            "to finish (or stop it) before writing this file") from None
    _LOCKS[key] = fd


def _unlock(path: Path) -> None:
    fd = _LOCKS.pop(path.resolve(), None)
    if fd is None:
        return
    try:
        path.with_name(path.name + ".lock").unlink(missing_ok=True)
    finally:
        os.close(fd)


def _check_file(f: h5py.File, path: Path) -> None:
    kind = _attr_str(f.attrs.get("kind", ""))
    if kind != KIND:
        raise SchemaError(f"{path}: not an xbarlab raw-run file (kind={kind!r})")
    try:
        version = int(f.attrs.get("format_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version > FORMAT_VERSION:
        raise SchemaError(f"{path}: format version {version} is newer than this xbarlab reads "
                          f"({FORMAT_VERSION}); upgrade xbarlab")
    if version < 1:
        raise SchemaError(f"{path}: missing or invalid format_version")
    if "runs" not in f:
        raise SchemaError(f"{path}: truncated raw-run file (no /runs group)")


def _progress(g: h5py.Group, path: Path) -> dict:
    try:
        p = json.loads(_attr_str(g.attrs["progress"]))
        int(p["devices_done"])
        dict(p["rows"])
    except (KeyError, ValueError, TypeError) as e:
        raise SchemaError(f"{path}: run {g.name} has no valid progress record ({e})") from None
    return p


@dataclass
class RunInfo:
    """What a run group says about itself."""

    name: str
    protocol: str
    config: dict
    station: dict
    seed: int | None
    software_version: str
    start_time: str
    end_time: str
    devices_total: int
    devices_done: int
    complete: bool
    rows: dict[str, int] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def _run_info(g: h5py.Group, path: Path) -> RunInfo:
    p = _progress(g, path)
    try:
        seed = g.attrs.get("seed", -1)
        return RunInfo(
            name=g.name.rsplit("/", 1)[-1],
            protocol=_attr_str(g.attrs["protocol"]),
            config=json.loads(_attr_str(g.attrs["config"])),
            station=json.loads(_attr_str(g.attrs["station"])),
            seed=None if int(seed) < 0 else int(seed),
            software_version=_attr_str(g.attrs.get("software_version", "")),
            start_time=_attr_str(g.attrs.get("start_time", "")),
            end_time=_attr_str(g.attrs.get("end_time", "")),
            devices_total=int(g.attrs["devices_total"]),
            devices_done=int(p["devices_done"]),
            complete=bool(g.attrs.get("complete", False)),
            rows={k: int(v) for k, v in p["rows"].items()},
            summary=json.loads(_attr_str(g.attrs.get("summary", "{}"))),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise SchemaError(f"{path}: run {g.name} lacks a required attribute ({e})") from None


def list_runs(path: str | os.PathLike) -> list[RunInfo]:
    """Every run in a raw-run file, oldest first."""
    path = Path(path)
    if not path.exists():
        raise DatabaseError(f"{path}: no such file")
    with _open(path, "r") as f:
        _check_file(f, path)
        names = sorted(f["runs"], key=lambda n: int(n[3:]) if n[3:].isdigit() else 0)
        return [_run_info(f["runs"][n], path) for n in names]


def _pick_run(f: h5py.File, path: Path, run: str | None) -> h5py.Group:
    names = sorted(f["runs"], key=lambda n: int(n[3:]) if n[3:].isdigit() else 0)
    if not names:
        raise SchemaError(f"{path}: file holds no run")
    name = run or names[-1]
    if name not in f["runs"]:
        raise DatabaseError(f"{path}: no run {name!r} (runs: {', '.join(names)})")
    return f["runs"][name]


def read_table(path: str | os.PathLike, table: str, run: str | None = None) -> pd.DataFrame:
    """The committed rows of one table as a DataFrame (units in ``df.attrs['units']``)."""
    path = Path(path)
    if not path.exists():
        raise DatabaseError(f"{path}: no such file")
    with _open(path, "r") as f:
        _check_file(f, path)
        g = _pick_run(f, path, run)
        p = _progress(g, path)
        if table not in g or table not in p["rows"]:
            raise DatabaseError(f"{path}: run {g.name} has no table {table!r}")
        n = int(p["rows"][table])
        tg = g[table]
        cols = json.loads(_attr_str(tg.attrs["columns"]))
        data, units = {}, {}
        for c in cols:
            ds = tg[c]
            if ds.shape[0] < n:
                raise SchemaError(f"{path}: truncated column {ds.name} ({ds.shape[0]} < {n} rows)")
            data[c] = ds[:n]
            units[c] = _attr_str(ds.attrs.get("units", ""))
    df = pd.DataFrame(data, columns=cols)
    df.attrs["units"] = units
    return df


def read_run(path: str | os.PathLike, run: str | None = None) -> tuple[RunInfo, dict[str, pd.DataFrame]]:
    """A run's attributes and all its tables."""
    path = Path(path)
    infos = list_runs(path)
    info = next((i for i in infos if i.name == run), None) if run else infos[-1] if infos else None
    if info is None:
        raise DatabaseError(f"{path}: no run {run!r}")
    return info, {t: read_table(path, t, info.name) for t in info.rows}


class RunWriter:
    """Appends to one run of a raw-run file, one device at a time.

    Use `RunWriter.open(...)`; it creates the file, continues an unfinished run, or refuses.
    """

    def __init__(self, path: Path, run: str, tables: TableSpecs):
        self.path = path
        self.run = run
        self.tables = tables
        with _open(path, "r") as f:
            g = f["runs"][run]
            self.info = _run_info(g, path)
            self._progress = _progress(g, path)

    # -- creation / resumption ---------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, protocol: str, config: dict, station: dict,
             seed: int | None, tables: TableSpecs, devices_total: int, resume: bool = False,
             overwrite: bool = False) -> RunWriter:
        """Create a new run, or continue the file's unfinished run of the same campaign.

        - no file: a new file with run0 (`resume=True` is fine: nothing to resume yet);
        - the last run is unfinished with the same protocol, config and seed: continue it;
        - anything else (finished run, different settings, another program's file): refuse with
          DatabaseError unless `overwrite`, which replaces the whole file.
        """
        path = Path(path)
        cfg_json = json.dumps(config, sort_keys=True)
        if path.parent.exists():
            _lock(path)  # before reading or replacing anything: one writer per file
        try:
            return cls._open_locked(path, protocol=protocol, config=config, station=station,
                                    seed=seed, tables=tables, devices_total=devices_total,
                                    resume=resume, overwrite=overwrite, cfg_json=cfg_json)
        except BaseException:
            _unlock(path)
            raise

    @classmethod
    def _open_locked(cls, path: Path, *, protocol, config, station, seed, tables,
                     devices_total, resume, overwrite, cfg_json) -> RunWriter:
        if path.exists() and overwrite:
            if not os.access(path.parent, os.W_OK):
                raise DatabaseError(f"{path}: cannot replace: the folder is read-only")
            path.unlink()
        if path.exists():
            infos = list_runs(path)
            last = infos[-1] if infos else None
            if last is None:
                raise SchemaError(f"{path}: raw-run file without runs; pass --overwrite to replace it")
            if last.complete:
                raise DatabaseError(f"{path} already holds a complete {last.protocol} run; "
                                    "choose another file or pass --overwrite")
            same = (last.protocol == protocol and json.dumps(last.config, sort_keys=True) == cfg_json
                    and last.seed == seed)
            if not same:
                raise DatabaseError(f"{path} holds an unfinished {last.protocol} run with other "
                                    "settings (protocol, config or seed); re-run with the same "
                                    "settings to resume it, or pass --overwrite")
            if last.devices_total != devices_total:
                raise DatabaseError(f"{path}: the unfinished run has {last.devices_total} devices, "
                                    f"this campaign {devices_total}")
            w = cls(path, last.name, tables)
            w._truncate_to_progress()
            return w
        del resume  # a missing file simply starts the run
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _lock(path)
            cls._create(path, protocol=protocol, cfg_json=cfg_json, station=station, seed=seed,
                        tables=tables, devices_total=devices_total)
        except OSError as e:
            path.unlink(missing_ok=True)  # a half-created file holds nothing worth keeping
            if _denied(path.parent, e):
                raise DatabaseError(f"{path}: cannot create: the folder is read-only") from None
            raise _write_failed(path, e, "a new run file", 0) from None
        return cls(path, "run0", tables)

    @staticmethod
    def _create(path: Path, *, protocol, cfg_json, station, seed, tables, devices_total) -> None:
        with h5py.File(path, "w") as f:
            f.attrs["kind"] = KIND
            f.attrs["format_version"] = FORMAT_VERSION
            runs = f.create_group("runs")
            g = runs.create_group("run0")
            g.attrs["protocol"] = protocol
            g.attrs["config"] = cfg_json
            g.attrs["station"] = json.dumps(station, sort_keys=True, default=str)
            g.attrs["software_version"] = _software_version()
            g.attrs["format_version"] = FORMAT_VERSION
            g.attrs["start_time"] = _now()
            g.attrs["end_time"] = ""
            g.attrs["seed"] = -1 if seed is None else int(seed)
            g.attrs["devices_total"] = int(devices_total)
            g.attrs["complete"] = False
            g.attrs["summary"] = "{}"
            for tname, cols in tables.items():
                tg = g.create_group(tname)
                tg.attrs["columns"] = json.dumps(list(cols))
                for cname, (dtype, units) in cols.items():
                    ds = tg.create_dataset(cname, shape=(0,), maxshape=(None,), dtype=np.dtype(dtype),
                                           chunks=(_CHUNK,))
                    ds.attrs["units"] = units
            sg = g.create_group("_state")
            for s in ("slot0", "slot1"):
                ds = sg.create_dataset(s, shape=(0,), maxshape=(None,), dtype=np.uint8,
                                       chunks=(65536,))
                ds.attrs["units"] = "bytes"
            g.attrs["progress"] = json.dumps({"devices_done": 0, "rows": {t: 0 for t in tables},
                                              "state_slot": None})

    def _truncate_to_progress(self) -> None:
        """Drop anything a killed commit wrote beyond the last committed device."""
        with _open(self.path, "r+") as f:
            g = f["runs"][self.run]
            for tname, cols in self.tables.items():
                if tname not in g:
                    raise SchemaError(f"{self.path}: run {self.run} lacks table {tname!r}")
                n = int(self._progress["rows"].get(tname, 0))
                for c in cols:
                    ds = g[tname][c]
                    if ds.shape[0] < n:
                        raise SchemaError(f"{self.path}: truncated column {ds.name}")
                    if ds.shape[0] > n:
                        ds.resize((n,))

    # -- state -------------------------------------------------------------------------------
    @property
    def devices_done(self) -> int:
        return int(self._progress["devices_done"])

    def rows(self, table: str) -> int:
        return int(self._progress["rows"][table])

    def table(self, name: str) -> pd.DataFrame:
        return read_table(self.path, name, self.run)

    def saved_state(self) -> bytes | None:
        """The chip state committed with the last device, if any."""
        slot = self._progress.get("state_slot")
        if slot is None:
            return None
        with _open(self.path, "r") as f:
            return f["runs"][self.run]["_state"][f"slot{slot}"][()].tobytes()

    # -- appending ---------------------------------------------------------------------------
    def commit_device(self, device: int, rows: dict[str, dict[str, np.ndarray]],
                      state: bytes | None = None) -> None:
        """Append one device's rows to every table (and the chip state) in one commit."""
        if device != self.devices_done:
            raise DatabaseError(f"{self.path}: committing device {device} but {self.devices_done} "
                                "are done (a device would be lost or duplicated)")
        new_rows = dict(self._progress["rows"])
        prepared: dict[str, dict[str, np.ndarray]] = {}
        for tname, data in rows.items():
            cols = self.tables.get(tname)
            if cols is None:
                raise DatabaseError(f"no table {tname!r} in this run")
            if set(data) != set(cols):
                missing = set(cols) ^ set(data)
                raise DatabaseError(f"table {tname!r}: columns do not match ({sorted(missing)})")
            arrays = {c: np.asarray(data[c], dtype=np.dtype(cols[c][0])).reshape(-1) for c in cols}
            lens = {a.size for a in arrays.values()}
            if len(lens) != 1:
                raise DatabaseError(f"table {tname!r}: columns of different lengths {sorted(lens)}")
            prepared[tname] = arrays
            new_rows[tname] = int(new_rows[tname]) + lens.pop()
        slot = self._progress.get("state_slot")
        try:
            progress = self._append(device, prepared, state, slot, new_rows)
        except OSError as e:
            raise _write_failed(self.path, e, f"device {device}", self.devices_done) from None
        self._progress = progress

    def _append(self, device, prepared, state, slot, new_rows) -> dict:
        new_slot = slot
        with _open(self.path, "r+") as f:
            g = f["runs"][self.run]
            on_file = _progress(g, self.path)
            if on_file != self._progress:  # another writer committed since we last did
                raise DatabaseError(f"{self.path}: run {self.run} was changed by another "
                                    "process; refusing to write (a device would be lost or "
                                    "duplicated)")
            for tname, arrays in prepared.items():
                n0 = int(self._progress["rows"][tname])
                for c, a in arrays.items():
                    ds = g[tname][c]
                    ds.resize((n0 + a.size,))
                    ds[n0:] = a
            if state is not None:
                new_slot = 0 if slot in (None, 1) else 1
                ds = g["_state"][f"slot{new_slot}"]
                buf = np.frombuffer(state, dtype=np.uint8)
                ds.resize((buf.size,))
                ds[:] = buf
            progress = {"devices_done": device + 1, "rows": new_rows, "state_slot": new_slot}
            g.attrs["progress"] = json.dumps(progress)  # the commit point
        return progress

    def finish(self, summary: dict | None = None) -> None:
        """Mark the run complete with its end time and summary."""
        try:
            with _open(self.path, "r+") as f:
                g = f["runs"][self.run]
                g.attrs["summary"] = json.dumps(summary or {}, sort_keys=True, default=float)
                g.attrs["end_time"] = _now()
                g.attrs["complete"] = True
        except OSError as e:
            raise _write_failed(self.path, e, "the run's end", self.devices_done) from None
        _unlock(self.path)
        self.info = list_runs(self.path)[-1]
