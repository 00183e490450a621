"""Raw-run store: one HDF5 file per campaign, written so that no fault can damage what is committed.

Layout (docs/hdf5-schema.md has the full schema):

    /                      attrs kind="xbarlab-runs", format_version=2
    /runs/run0/            attrs protocol, config, station, seed, units_total, progress, ...,
                           run_id, meta_crc32 (CRC-32 of every attribute and column spec)
    /runs/run0/<table>/    one chunked 1-D dataset per column (fletcher32), attr `units` on each
    /runs/run0/_state      uint8 (fletcher32): the opaque chip state committed with the last unit

Work is committed in *units* (a device, later a single tuning): `RunWriter.commit(unit, rows,
state)` appends every table's rows of one unit and the chip state after it, all or nothing.

How a commit survives a full disk, a kill or a reader
------------------------------------------------------
The writer never modifies the published file in place, and HDF5 never writes to disk:

1. The run lives in memory as numpy columns. A commit first appends one checksummed record
   (rows + state, see `database.store_io.Journal`) to the sidecar journal `<file>.journal`
   with plain Python I/O and fsyncs it: that is the commit point. If the append fails (disk
   full, I/O error) the journal is cut back to where it was and a one-line DatabaseError says
   so; nothing committed before is touched, because nothing written before is ever rewritten.
2. *Publishing* builds the HDF5 file from the columns in memory (h5py on an io.BytesIO) and
   writes it next to the file, fsyncs it, renames it over the file (atomic) and fsyncs the
   folder; then the journal is emptied. A publish that fails leaves the old file and the
   journal as they were, so the commits it would have published stay committed.
3. Resume = published file + the journal records after it (a record cut short by a kill is
   the unit in progress and is dropped; a bad record followed by good ones is damage: refused).
   Readers do the same, so they see every committed unit and nothing else.

Why build the file at each publish rather than keep an HDF5 image open in memory and append to
it: a commit then never enters HDF5 at all (its cost is one journal append), the file is a pure
function of the committed data (every dataset exactly its committed length, no leftovers of
resized datasets, the same bytes whatever faults happened before), and a published image is
always one that a closed h5py file produced. A commit costs one journal append + fdatasync
(~4 ms on the development machine's disk, bench/store.py); a publish is O(file size) (~0.4 s for
30 MB, a quarter of it building the image). So publishing is throttled: after a commit, publish
when the time since the last publish exceeds PUBLISH_RATIO times that publish's cost, and always
on the first commit, at finish and at close. Readers apply the journal themselves, so publishing
only bounds the journal's length (what a resume or a reader parses) and what a copy of the file
without its journal holds; PUBLISH_RATIO = 50 keeps it under ~2 % of the wall time (at 10 it was
measured at ~10 %). The first commit of a new run publishes directly (there is no file yet to
extend), which is also what makes `overwrite` safe: the old file stays as it is until the new run
has its first unit, and is then replaced in one rename.

Readers (`list_runs`, `read_table`, `read_run`) open the file with HDF5 file locking off; the
writer's rename never waits for them and they keep reading the file they opened. Everything read
is checked: HDF5's own metadata checksums (libver="latest"), fletcher32 on every dataset,
`meta_crc32` over the attributes (stored as variable-length strings in HDF5's global heap, which
HDF5 does not checksum), and ranges and consistency (units done within the total, row counts
equal to the datasets, a complete run has all its units, ...). Damage is a one-line SchemaError
naming the file and the object.

One writer per file: a POSIX record lock on `<file>.lock`, dropped by the OS when the process
dies. Before each commit and publish the writer also checks that nobody else moved the journal or
the file (the guard where OS locks are missing, and against a second writer in one process).
Format 1 files (xbarlab before the journal) are read and resumed; the first commit of a resumed
format-1 run rewrites it as format 2.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import io
import json
import logging
import os
import time
import uuid
import weakref
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from database import store_io
from database.errors import DatabaseError, SchemaError

log = logging.getLogger("xbarlab.store")

KIND = "xbarlab-runs"
FORMAT_VERSION = 2
#: publish when the time since the last publish exceeds this many times its cost
PUBLISH_RATIO = 50.0
_CHUNK = 65536                  # elements per chunk: the unit of fletcher32 checking
_VOLATILE_STATION = ("path",)   # station fields that may differ between a run and its resume
_KINDS = "biuf"                 # column dtypes: bool, int, unsigned, float

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


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


# -- one writer per file ---------------------------------------------------------------------
# A POSIX record lock on `<file>.lock`, held while a RunWriter is open. The OS drops it when the
# process dies (SIGKILL included), so a stale lock never blocks a resume; a second process is
# refused at once. Record locks belong to the process, so re-opening the same file in one process
# (a resume after an error) is allowed: the newest writer owns the lock, and the file/journal
# identity check in `commit` keeps an older one from writing. Only the owner's close releases the
# lock and removes the lock file; whoever locks checks that the file it locked is still the one on
# disk (not one its owner just removed). Where fcntl is missing (Windows) only ownership is kept.
_LOCKS: dict[Path, list] = {}   # resolved path -> [lock fd or None, owning writer]


def _denied(e: OSError) -> bool:
    return e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def _lock(path: Path, owner) -> object | None:
    """Lock `path` for `owner`; returns the writer of this process that owned it before."""
    key = path.resolve()
    if key in _LOCKS:
        before, _LOCKS[key][1] = _LOCKS[key][1], owner
        return before
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the identity checks guard alone
        _LOCKS[key] = [None, owner]
        return None
    lock = path.with_name(path.name + ".lock")
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if _denied(e):
                raise DatabaseError(f"{path}: cannot write: the folder is read-only "
                                    "(nothing was changed)") from None
            raise DatabaseError(f"{lock}: cannot create the lock file ({_line(e)})") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatabaseError(f"{path} is being written by another xbarlab process; wait for "
                                "it to finish (or stop it) before writing this file") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _LOCKS[key] = [fd, owner]
            return None
        os.close(fd)  # its owner removed it while we waited: lock the new one
    raise DatabaseError(f"{lock}: the lock file keeps changing; is another process busy?")


def _owns(path: Path, owner) -> bool:
    entry = _LOCKS.get(path.resolve())
    return entry is not None and entry[1] is owner


def _unlock(path: Path, owner, before=None) -> None:
    """Release `owner`'s lock (or hand it back to the writer that owned it `before`)."""
    key = path.resolve()
    if not _owns(path, owner):
        return
    if before is not None:
        _LOCKS[key][1] = before
        return
    fd = _LOCKS.pop(key)[0]
    if fd is None:  # pragma: no cover - Windows
        return
    try:
        path.with_name(path.name + ".lock").unlink(missing_ok=True)
    finally:
        os.close(fd)


# -- reading ---------------------------------------------------------------------------------

@dataclass
class RunInfo:
    """What a run says about itself (committed units only)."""

    name: str
    protocol: str
    config: dict
    station: dict
    seed: int | None
    software_version: str
    start_time: str
    end_time: str
    units_total: int
    units_done: int
    complete: bool
    rows: dict[str, int] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    #: what the instruments said about themselves in the latest session (not compared)
    snapshot: dict = field(default_factory=dict)


@dataclass
class _Run:
    """A run as found on disk: its info, column specs and where its data lie."""

    info: RunInfo
    group: h5py.Group
    specs: TableSpecs                   # as on file
    file_rows: dict[str, int]           # committed rows in the HDF5 file
    run_id: str | None                  # None for format 1
    state: tuple[str, int] | None       # (dataset name, length) of the committed chip state
    journal: list[dict] = field(default_factory=list)  # records after the file, decoded


def _py(v, path: Path, what: str):
    """An attribute value as a plain Python value."""
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            raise SchemaError(f"{path}: {what} is not text") from None
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v[()]
    return v.item() if isinstance(v, np.generic) else v


def _int(v, path: Path, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise SchemaError(f"{path}: {what} is not an integer ({v!r})")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise SchemaError(f"{path}: {what} = {v} is impossible (must be {rng})")
    return v


def _json(text, path: Path, what: str, kind=dict):
    try:
        v = json.loads(text)
    except (TypeError, ValueError) as e:
        raise SchemaError(f"{path}: {what} is not valid JSON ({_line(e)})") from None
    if not isinstance(v, kind):
        raise SchemaError(f"{path}: {what} is not a JSON {kind.__name__}")
    return v


def _meta_crc(attrs: dict, specs: TableSpecs) -> int:
    """CRC-32 over a run's attributes (but meta_crc32) and its column specs."""
    doc = {"attrs": {k: v for k, v in attrs.items() if k != "meta_crc32"},
           "tables": {t: [[c, d, u] for c, (d, u) in cols.items()] for t, cols in specs.items()}}
    return zlib.crc32(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def _check_root(f: h5py.File, path: Path) -> int:
    kind = _py(f.attrs.get("kind", ""), path, "kind")
    if kind != KIND:
        raise SchemaError(f"{path}: not an xbarlab raw-run file (kind={kind!r})")
    version = _py(f.attrs.get("format_version", -1), path, "format_version")
    if not isinstance(version, int) or version < 1:
        raise SchemaError(f"{path}: missing or invalid format_version")
    if version > FORMAT_VERSION:
        raise SchemaError(f"{path}: format version {version} is newer than this xbarlab reads "
                          f"({FORMAT_VERSION}); upgrade xbarlab")
    if "runs" not in f or not isinstance(f["runs"], h5py.Group):
        raise SchemaError(f"{path}: truncated raw-run file (no /runs group)")
    return version


def _unprotected(ds: h5py.Dataset, version: int) -> bool:
    """A format-2 dataset without its checksum filter (replaced by another program)."""
    return version >= 2 and not ds.fletcher32


def _table_specs(g: h5py.Group, path: Path, names, version: int) -> tuple[TableSpecs, dict]:
    """Column specs and dataset lengths of the named tables, checked."""
    specs, lengths = {}, {}
    for t in names:
        if t not in g or not isinstance(g[t], h5py.Group):
            raise SchemaError(f"{path}: {g.name}: table {t!r} is missing")
        tg = g[t]
        cols = _json(_py(tg.attrs.get("columns", ""), path, f"{tg.name} columns"), path,
                     f"{tg.name} columns", list)
        if not cols or len(set(cols)) != len(cols) or not all(isinstance(c, str) for c in cols):
            raise SchemaError(f"{path}: {tg.name}: invalid column list")
        spec, n = {}, set()
        for c in cols:
            ds = tg.get(c)
            if not isinstance(ds, h5py.Dataset):
                raise SchemaError(f"{path}: {tg.name}/{c}: column is missing")
            if ds.ndim != 1 or ds.dtype.kind not in _KINDS:
                raise SchemaError(f"{path}: {ds.name}: not a 1-D numeric column")
            if _unprotected(ds, version):
                raise SchemaError(f"{path}: {ds.name}: has no checksum filter (not written by "
                                  "xbarlab)")
            spec[c] = (ds.dtype.str, str(_py(ds.attrs.get("units", ""), path, f"{ds.name} units")))
            n.add(ds.shape[0])
        if len(n) != 1:
            raise SchemaError(f"{path}: {tg.name}: columns of different lengths {sorted(n)}")
        specs[t], lengths[t] = spec, n.pop()
    return specs, lengths


def _read_run(g: h5py.Group, path: Path, version: int) -> _Run:
    name = g.name.rsplit("/", 1)[-1]
    where = f"run {name}"
    attrs = {k: _py(v, path, f"{where} attribute {k}") for k, v in g.attrs.items()}
    try:
        if version >= 2:
            total_key, done_key = "units_total", "units_done"
        else:
            total_key, done_key = "devices_total", "devices_done"
        prog = _json(attrs["progress"], path, f"{where} progress")
        rows = prog["rows"]
        if not isinstance(rows, dict):
            raise SchemaError(f"{path}: {where} progress rows are not a table of counts")
        specs, lengths = _table_specs(g, path, sorted(rows), version)
        if version >= 2:
            if _meta_crc(attrs, specs) != attrs["meta_crc32"]:
                raise SchemaError(f"{path}: {where}: metadata damaged (checksum mismatch)")
            extra = {k for k, v in g.items() if isinstance(v, h5py.Group)} - set(rows)
            if extra:
                raise SchemaError(f"{path}: {where}: tables {sorted(extra)} not in its progress")
        total = _int(attrs[total_key], path, f"{where} {total_key}", 1 if version >= 2 else 0)
        done = _int(prog[done_key], path, f"{where} progress {done_key}", 0, total)
        complete = attrs.get("complete", False)
        if not isinstance(complete, bool):
            raise SchemaError(f"{path}: {where} complete flag is not true/false")
        if complete and done != total:
            raise SchemaError(f"{path}: {where} is marked complete with {done} of {total} units")
        file_rows = {}
        for t, n in rows.items():
            n = _int(n, path, f"{where} progress rows[{t!r}]", 0)
            if n != lengths[t] and (version >= 2 or n > lengths[t]):
                raise SchemaError(f"{path}: {g.name}/{t}: {lengths[t]} rows on file, progress "
                                  f"says {n}")
            if done == 0 and n:
                raise SchemaError(f"{path}: {where}: rows in {t!r} but no unit done")
            file_rows[t] = n
        if version >= 2:
            n_state = _int(prog["state_bytes"], path, f"{where} progress state_bytes", 0)
            ds = g.get("_state")
            if not isinstance(ds, h5py.Dataset) or ds.shape != (n_state,) \
                    or _unprotected(ds, version):
                raise SchemaError(f"{path}: {g.name}/_state: missing, not {n_state} bytes or "
                                  "without its checksum filter")
            state = ("_state", n_state) if n_state else None
            run_id = attrs["run_id"]
            if not isinstance(run_id, str):
                raise SchemaError(f"{path}: {where} run_id is not text")
        else:
            slot = prog.get("state_slot")
            if slot not in (None, 0, 1):
                raise SchemaError(f"{path}: {where} progress state_slot = {slot!r} is impossible")
            ds = g.get(f"_state/slot{slot}") if slot is not None else None
            if slot is not None and not isinstance(ds, h5py.Dataset):
                raise SchemaError(f"{path}: {g.name}/_state/slot{slot} is missing")
            state = None if slot is None else (f"_state/slot{slot}", ds.shape[0])
            run_id = None
        seed = _int(attrs.get("seed", -1), path, f"{where} seed", -1)
        info = RunInfo(
            name=name, protocol=str(attrs["protocol"]),
            config=_json(attrs["config"], path, f"{where} config"),
            station=_json(attrs["station"], path, f"{where} station"),
            seed=None if seed < 0 else seed,
            software_version=str(attrs.get("software_version", "")),
            start_time=str(attrs.get("start_time", "")), end_time=str(attrs.get("end_time", "")),
            units_total=total, units_done=done, complete=complete, rows=dict(file_rows),
            summary=_json(attrs.get("summary", "{}"), path, f"{where} summary"),
            format_version=version,
            snapshot=_json(attrs.get("snapshot", "{}"), path, f"{where} snapshot"))
    except KeyError as e:
        raise SchemaError(f"{path}: {where} lacks {e}") from None
    if not info.protocol:
        raise SchemaError(f"{path}: {where} has no protocol")
    return _Run(info, g, specs, file_rows, run_id, state)


# -- journal records -------------------------------------------------------------------------
# header (JSON): {"run_id", "unit", "tables": {table: [[column, dtype, nbytes], ...]},
# "state": nbytes or null}; body: the columns' bytes in that order, then the state.

def _encode(run_id: str, unit: int, arrays: dict[str, dict[str, np.ndarray]],
            state: bytes | None) -> tuple[bytes, list]:
    tables, parts = {}, []
    for t, cols in arrays.items():
        tables[t] = [[c, a.dtype.str, a.nbytes] for c, a in cols.items()]
        parts += [np.ascontiguousarray(a).view(np.uint8) for a in cols.values()]
    if state is not None:
        parts.append(state)
    header = {"run_id": run_id, "unit": unit, "tables": tables,
              "state": None if state is None else len(state)}
    return json.dumps(header, separators=(",", ":")).encode(), parts


def _decode(rec: store_io.Record, specs: TableSpecs) -> dict:
    """A journal record as {"run_id", "unit", "rows": {t: {c: array}}, "state"}; ValueError if
    it does not fit the run's tables."""
    h = json.loads(rec.header)
    unit, state_n = h["unit"], h["state"]
    if not isinstance(h["run_id"], str) or not isinstance(unit, int) or unit < 0:
        raise ValueError("bad record header")
    o, body, rows = 0, rec.body, {}
    for t, cols in h["tables"].items():
        spec = specs[t]
        if [c for c, _d, _n in cols] != list(spec):
            raise ValueError(f"columns of {t!r} differ from the file's")
        lens, out = set(), {}
        for c, d, n in cols:
            dt = np.dtype(d)
            if d != spec[c][0] or not isinstance(n, int) or n < 0 or n % dt.itemsize:
                raise ValueError(f"column {t}/{c}: bad type or size")
            if o + n > len(body):
                raise ValueError("record shorter than its header")
            out[c] = np.frombuffer(body[o:o + n], dtype=dt)
            lens.add(n // dt.itemsize)
            o += n
        if len(lens) > 1:
            raise ValueError(f"columns of {t!r} of different lengths")
        rows[t] = out
    if state_n is not None:
        if not isinstance(state_n, int) or state_n < 0:
            raise ValueError("bad state size")
        state, o = bytes(body[o:o + state_n]), o + state_n
    else:
        state = None
    if o != len(body):
        raise ValueError("record length does not match its header")
    return {"run_id": h["run_id"], "unit": unit, "rows": rows, "state": state}


def _extend(run: _Run, data: bytes, jpath: Path, strict: bool) -> int:
    """Attach the journal records that continue `run`; return the journal's valid length.

    Records of another run (a journal left by a run this file replaced) or of units already in
    the file (a publish whose journal clean-up did not happen) are skipped. `strict` (the
    writer) raises SchemaError on damage; readers use the valid records before it (a reader can
    also meet a journal being emptied and rewritten: whatever it misses is in the file it opens
    next)."""
    sc = store_io.scan(data)
    bad = sc.problem if sc.problem != "torn" else ""
    nxt = run.info.units_done
    for rec in sc.records:
        try:
            r = _decode(rec, run.specs)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            bad = f"record at byte {rec.offset} does not fit the run ({_line(e)})"
            break
        if r["run_id"] != run.run_id or r["unit"] < nxt:
            continue
        if r["unit"] > nxt:
            bad = f"record for unit {r['unit']} follows unit {nxt - 1} (a unit is missing)"
            break
        if nxt >= run.info.units_total:
            bad = f"record for unit {r['unit']} beyond the run's {run.info.units_total} units"
            break
        run.journal.append(r)
        nxt += 1
    if bad and strict:
        raise SchemaError(f"{jpath}: journal damaged: {bad}; move it away to continue from "
                          "the units in the file alone")
    info = run.info
    info.units_done = nxt
    for r in run.journal:
        for t, cols in r["rows"].items():
            info.rows[t] += len(next(iter(cols.values()))) if cols else 0
    return sc.end


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r", locking=False)
    except FileNotFoundError:
        raise DatabaseError(f"{path}: no such file") from None
    except Exception as e:
        raise SchemaError(f"{path}: not a readable HDF5 file ({_line(e)})") from None


def _read_journal(path: Path) -> bytes:
    try:
        return _journal_path(path).read_bytes()
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise DatabaseError(f"{_journal_path(path)}: cannot read ({_line(e)})") from None


class _Reader:
    """An open raw-run file with its journal: the committed state, checked."""

    def __init__(self, path: Path, strict: bool = False):
        self.path = path
        self.journal = _read_journal(path)      # first: see the module docstring
        self.f = _open_h5(path)
        try:
            self.version = _check_root(self.f, path)
            names = sorted(self.f["runs"], key=lambda n: int(n[3:]) if n[3:].isdigit() else -1)
            self.runs = [self._run(n) for n in names]
            self.journal_end = (_extend(self.runs[-1], self.journal, _journal_path(path), strict)
                                if self.runs and self.version >= 2 else 0)
        except BaseException:
            self.f.close()
            raise

    def _run(self, name: str) -> _Run:
        g = self.f["runs"][name]
        if not (name.startswith("run") and name[3:].isdigit()) or not isinstance(g, h5py.Group):
            raise SchemaError(f"{self.path}: unexpected object /runs/{name}")
        return _read_run(g, self.path, self.version)

    def pick(self, run: str | None) -> _Run:
        if not self.runs:
            raise SchemaError(f"{self.path}: file holds no run")
        if run is None:
            return self.runs[-1]
        for r in self.runs:
            if r.info.name == run:
                return r
        raise DatabaseError(f"{self.path}: no run {run!r} (runs: "
                            f"{', '.join(r.info.name for r in self.runs)})")

    def column(self, run: _Run, table: str, col: str) -> np.ndarray:
        try:
            a = run.group[table][col][: run.file_rows[table]]
        except Exception as e:
            raise SchemaError(f"{self.path}: {run.group.name}/{table}/{col}: damaged data "
                              f"({_line(e)})") from None
        extra = [r["rows"][table][col] for r in run.journal if table in r["rows"]]
        return np.concatenate([a, *extra]) if extra else a

    def state(self, run: _Run) -> bytes | None:
        for r in reversed(run.journal):
            if r["state"] is not None:
                return r["state"]
        if run.state is None:
            return None
        try:
            return run.group[run.state[0]][: run.state[1]].tobytes()
        except Exception as e:
            raise SchemaError(f"{self.path}: {run.group.name}/{run.state[0]}: damaged data "
                              f"({_line(e)})") from None

    def close(self) -> None:
        self.f.close()


@contextlib.contextmanager
def _guard(path: Path):
    """Whatever a damaged file makes h5py or numpy raise becomes one SchemaError line."""
    try:
        yield
    except DatabaseError:
        raise
    except Exception as e:
        raise SchemaError(f"{path}: damaged raw-run file ({type(e).__name__}: {_line(e)})") \
            from None


@contextlib.contextmanager
def _reading(path, strict: bool = False):
    path = Path(path)
    if not path.exists():
        raise DatabaseError(f"{path}: no such file")
    with _guard(path):
        r = _Reader(path, strict)
        try:
            yield r
        finally:
            r.close()


def list_runs(path: str | os.PathLike) -> list[RunInfo]:
    """Every run in a raw-run file, oldest first (committed units only)."""
    with _reading(path) as r:
        return [run.info for run in r.runs]


def table_columns(path: str | os.PathLike) -> dict[str, dict[str, dict[str, str]]]:
    """{run: {table: {column: units}}} for every run in a raw-run file (no data read)."""
    with _reading(path) as r:
        return {run.info.name: {t: {c: u for c, (_d, u) in spec.items()}
                                for t, spec in run.specs.items()} for run in r.runs}


def _frame(r: _Reader, run: _Run, table: str) -> pd.DataFrame:
    if table not in run.specs:
        raise DatabaseError(f"{r.path}: run {run.info.name} has no table {table!r}")
    spec = run.specs[table]
    df = pd.DataFrame({c: r.column(run, table, c) for c in spec}, columns=list(spec))
    df.attrs["units"] = {c: u for c, (_d, u) in spec.items()}
    return df


def read_table(path: str | os.PathLike, table: str, run: str | None = None) -> pd.DataFrame:
    """The committed rows of one table as a DataFrame (units in ``df.attrs['units']``)."""
    with _reading(path) as r:
        return _frame(r, r.pick(run), table)


def read_state(path: str | os.PathLike, run: str | None = None) -> bytes | None:
    """The opaque chip state committed with a run's last unit (None if none was saved): what
    a resume restores, and what a later protocol starts a simulated chip from."""
    with _reading(path) as r:
        return r.state(r.pick(run))


def read_run(path: str | os.PathLike, run: str | None = None) -> tuple[RunInfo, dict[str, pd.DataFrame]]:
    """A run's attributes and all its tables."""
    with _reading(path) as r:
        x = r.pick(run)
        return x.info, {t: _frame(r, x, t) for t in x.specs}


# -- writing ---------------------------------------------------------------------------------

class _Column:
    """A growable 1-D array (capacity doubles, so appends are amortised O(rows))."""

    def __init__(self, dtype: np.dtype, data: np.ndarray | None = None):
        self.a = np.array(data, dtype=dtype) if data is not None else np.zeros(0, dtype)
        self.n = self.a.size

    def extend(self, x: np.ndarray) -> None:
        need = self.n + x.size
        if need > self.a.size:
            grown = np.zeros(max(need, 2 * self.a.size, 64), self.a.dtype)
            grown[: self.n] = self.a[: self.n]
            self.a = grown
        self.a[self.n:need] = x
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.a[: self.n]


def _diff(a, b, where: str) -> str | None:
    """The first difference between two JSON values as 'where: file has A, this run B'."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _diff(a.get(k), b.get(k), f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = _diff(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: file has {a!r}, this run {b!r}"


def _settings_diff(info: RunInfo, protocol, config, station, seed, units_total) -> str | None:
    def bare(s):
        return {k: v for k, v in s.items() if k not in _VOLATILE_STATION}

    for d in (_diff(info.protocol, protocol, "protocol"), _diff(info.seed, seed, "seed"),
              _diff(info.units_total, units_total, "units_total"),
              _diff(info.config, config, "config"),
              _diff(bare(info.station), bare(station), "station")):
        if d:
            return d
    return None


def complete_run(path: str | os.PathLike, *, protocol: str, config: dict, station: dict,
                 seed: int | None) -> RunInfo | None:
    """The file's run if it is complete and has exactly these settings (what `RunWriter.open`
    would report as `already_complete`), else None; a missing or unreadable file is None (the
    writer reports what is wrong with it). Lets a caller skip opening instruments for nothing."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        runs = list_runs(path)
    except (DatabaseError, SchemaError):
        return None
    if len(runs) != 1 or not runs[0].complete:
        return None
    info = runs[0]
    d = _settings_diff(info, protocol, _normal(config), _normal(station),
                       None if seed is None else int(seed), info.units_total)
    return None if d else info


def _plain(o):
    return o.item() if isinstance(o, np.generic) else str(o)


def _normal(x):
    """As it reads back from the file's JSON (tuples become lists, keys strings)."""
    return json.loads(json.dumps(x, sort_keys=True, default=_plain))


_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # a process that ends without closing still publishes and unlocks
    for w in list(_OPEN):
        w.close()


class RunWriter:
    """Appends to one run of a raw-run file, one unit at a time (see the module docstring).

    Use `RunWriter.open(...)`: it starts a run, continues an unfinished one, reports a complete
    one with the same settings (`already_complete`), or refuses.
    """

    def __init__(self, path: Path, *, meta: dict, tables: TableSpecs, created: list[Path],
                 published: os.stat_result | None):
        self.path = path
        self.run = "run0"
        self.tables = tables
        self.already_complete = False
        self._meta = meta
        self._cols = {t: {c: _Column(np.dtype(d)) for c, (d, _u) in cols.items()}
                      for t, cols in tables.items()}
        self._units = 0
        self._state: bytes | None = None
        self._published = published     # stat of the file as we last saw or wrote it
        self._file_units = -1           # units of *this* run in the file (-1: not in it)
        self._journal: store_io.Journal | None = None
        self._jend = 0                  # valid journal bytes at open
        self._created = created         # folders made for this run (removed if it never starts)
        self._next_publish = 0.0
        self._closed = False
        self._broken = False            # an interrupt hit between journal and memory

    # -- creation / resumption ---------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, protocol: str, config: dict, station: dict,
             seed: int | None, tables: TableSpecs, units_total: int, resume: bool = False,
             overwrite: bool = False, snapshot: dict | None = None) -> RunWriter:
        """Start a run, or continue the file's unfinished run of the same campaign.

        `snapshot`: what the instruments say about themselves now (identity, options,
        settings read back); stored as its own attribute, never compared, and replaced by each
        session that continues the run.

        - no file: a new run, written at its first commit (`resume=True` is fine: nothing to
          resume yet);
        - the file's run has the same protocol, config, seed, station (but its file path) and
          unit count: continue it, or, if it is complete, `already_complete` is True and
          nothing is written;
        - anything else: DatabaseError naming the first field that differs, unless
          `overwrite`: then the new run replaces the file at its first commit (not before).
        """
        del resume  # a missing file starts the run, an unfinished one continues
        path = Path(path)
        if isinstance(units_total, bool) or not isinstance(units_total, (int, np.integer)) \
                or units_total < 1:
            raise DatabaseError(f"{path}: a run needs at least one unit (got {units_total!r})")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise DatabaseError(f"{path}: the seed must be a non-negative integer (got {seed!r})")
        for t, cols in tables.items():
            if not cols:
                raise DatabaseError(f"table {t!r} has no columns")
            for c, (d, _u) in cols.items():
                if np.dtype(d).kind not in _KINDS:
                    raise DatabaseError(f"table {t!r} column {c!r}: dtype {d!r} is not numeric")
        config, station = _normal(config), _normal(station or {})
        meta = {"protocol": protocol, "config": config, "station": station,
                "seed": None if seed is None else int(seed), "units_total": int(units_total),
                "snapshot": _normal(snapshot or {})}
        created = cls._folders(path)
        token = object()
        try:
            before = _lock(path, token)  # before reading or replacing anything
        except BaseException:
            cls._remove_folders(created)
            raise
        try:
            w = cls._open_locked(path, meta, tables, created, overwrite)
        except BaseException:
            _unlock(path, token, before)
            cls._remove_folders(created)
            raise
        _LOCKS[path.resolve()][1] = w
        _OPEN.add(w)
        return w

    @staticmethod
    def _folders(path: Path) -> list[Path]:
        made = []
        p = path.parent
        while not p.exists():
            made.append(p)
            p = p.parent
        try:
            for p in reversed(made):
                p.mkdir()
        except OSError as e:
            RunWriter._remove_folders(made)
            why = "read-only" if _denied(e) else _line(e)
            raise DatabaseError(f"{path}: cannot create the folder ({why})") from None
        return made

    @staticmethod
    def _remove_folders(made: list[Path]) -> None:
        for p in made:  # deepest first
            try:
                p.rmdir()
            except OSError:
                return

    @classmethod
    def _open_locked(cls, path: Path, meta: dict, tables: TableSpecs, created: list[Path],
                     overwrite: bool) -> RunWriter:
        for p in (path.parent, path):
            if p.exists() and not os.access(p, os.W_OK):
                raise DatabaseError(f"{path}: cannot write: the {'file' if p == path else 'folder'}"
                                    " is read-only (nothing was changed)")
        for tmp in store_io.stale_temps(path):  # a killed publish's leftovers (we hold the lock)
            tmp.unlink(missing_ok=True)
        published = os.stat(path) if path.exists() else None
        w = cls(path, meta=meta, tables=tables, created=created, published=published)
        if published is None or overwrite:
            w._new_run()
            return w
        with _reading(path, strict=True) as r:
            w._continue(r)
        return w

    def _new_run(self) -> None:
        self._meta.update(software_version=_software_version(), start_time=_now(), end_time="",
                          complete=False, summary={}, run_id=uuid.uuid4().hex)

    def _continue(self, r: _Reader) -> None:
        if len(r.runs) != 1:
            raise SchemaError(f"{self.path}: holds {len(r.runs)} runs; xbarlab writes one run "
                              "per file (pass --overwrite to replace it)")
        run = r.runs[0]
        info, m = run.info, self._meta
        d = _settings_diff(info, m["protocol"], m["config"], m["station"], m["seed"],
                           m["units_total"])
        if d:
            state = "a complete" if info.complete else "an unfinished"
            raise DatabaseError(f"{self.path} holds {state} {info.protocol} run with other "
                                f"settings ({d}); re-run with the same settings"
                                f"{'' if info.complete else ' to resume it'}, or pass --overwrite")
        if run.specs != {t: {c: (np.dtype(d).str, u) for c, (d, u) in cols.items()}
                         for t, cols in self.tables.items()}:
            raise SchemaError(f"{self.path}: the run's tables differ from what this campaign "
                              "writes (another xbarlab version?); pass --overwrite or use "
                              "another file")
        m.update(software_version=info.software_version, start_time=info.start_time,
                 end_time=info.end_time, complete=info.complete, summary=info.summary,
                 run_id=run.run_id or uuid.uuid4().hex)
        # the stored seed/config/station stay as on file (equal up to volatile fields)
        m.update(config=info.config, station=info.station)
        for t, cols in run.specs.items():
            for c in cols:
                self._cols[t][c] = _Column(np.dtype(cols[c][0]), r.column(run, t, c))
        self._units = info.units_done
        self._state = r.state(run)
        self._file_units = run.info.units_done - len(run.journal) if run.run_id else -1
        self._jend = r.journal_end
        jp = _journal_path(self.path)
        if jp.exists() and jp.stat().st_size != self._jend:
            # a commit killed half-way through its append: the unit that was in progress
            self._journal = store_io.Journal(jp, self._jend)
            self._journal.cut(self._jend)
            log.info("%s: dropped an unfinished commit at the end of the journal", jp)
        self.already_complete = info.complete

    # -- state -------------------------------------------------------------------------------
    @property
    def units_done(self) -> int:
        return self._units

    @property
    def info(self) -> RunInfo:
        m = self._meta
        return RunInfo(name=self.run, protocol=m["protocol"], config=m["config"],
                       station=m["station"], seed=m["seed"],
                       software_version=m["software_version"], start_time=m["start_time"],
                       end_time=m["end_time"], units_total=m["units_total"],
                       units_done=self._units, complete=m["complete"],
                       rows={t: self.rows(t) for t in self.tables}, summary=m["summary"],
                       snapshot=m["snapshot"])

    def rows(self, table: str) -> int:
        return next(iter(self._cols[table].values())).n

    def table(self, name: str) -> pd.DataFrame:
        """The committed rows of one table (a copy)."""
        spec = self.tables[name]
        df = pd.DataFrame({c: self._cols[name][c].view.copy() for c in spec}, columns=list(spec))
        df.attrs["units"] = {c: u for c, (_d, u) in spec.items()}
        return df

    def saved_state(self) -> bytes | None:
        """The chip state committed with the last unit, if any."""
        return self._state

    def record_snapshot(self, snapshot: dict) -> None:
        """Replace the instruments' snapshot (written with the next publish; never compared)."""
        self._meta["snapshot"] = _normal(snapshot)

    # -- committing --------------------------------------------------------------------------
    def _usable(self) -> None:
        if self._closed:
            raise DatabaseError(f"{self.path}: this writer is closed")
        if self._broken:
            raise DatabaseError(f"{self.path}: a commit was interrupted; open the file again "
                                "to continue from what is committed")
        if self._meta["complete"]:
            raise DatabaseError(f"{self.path}: the run is complete; nothing more can be committed")

    def _check_untouched(self) -> None:
        """Nobody else moved the file or (while we extend the file) the journal since we last
        did: the guard against a second writer where locks do not reach."""
        def ident(st):
            return None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns)

        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            now = None
        same = ident(now) == ident(self._published)
        if same and self._file_units >= 0:
            if self._journal is not None:
                same = self._journal.intact()
            else:
                jp = _journal_path(self.path)
                same = (jp.stat().st_size if jp.exists() else 0) == self._jend
        if not same:
            raise DatabaseError(f"{self.path}: run {self.run} was changed by another writer; "
                                "refusing to write (a unit would be lost or duplicated)")

    def _prepare(self, rows: dict) -> dict[str, dict[str, np.ndarray]]:
        prepared = {}
        for tname, data in rows.items():
            cols = self.tables.get(tname)
            if cols is None:
                raise DatabaseError(f"no table {tname!r} in this run")
            if set(data) != set(cols):
                raise DatabaseError(f"table {tname!r}: columns do not match "
                                    f"({sorted(set(cols) ^ set(data))})")
            try:
                arrays = {c: np.asarray(data[c], dtype=np.dtype(cols[c][0])).reshape(-1)
                          for c in cols}
            except (TypeError, ValueError, OverflowError) as e:
                raise DatabaseError(f"table {tname!r}: {_line(e)}") from None
            lens = {a.size for a in arrays.values()}
            if len(lens) != 1:
                raise DatabaseError(f"table {tname!r}: columns of different lengths {sorted(lens)}")
            prepared[tname] = arrays
        return prepared

    def commit(self, unit: int, rows: dict[str, dict[str, np.ndarray]],
               state: bytes | None = None) -> None:
        """Append one unit's rows to every table (and the chip state after it) in one commit."""
        self._usable()
        if unit != self._units:
            raise DatabaseError(f"{self.path}: committing unit {unit} but {self._units} are done "
                                "(a unit would be lost or duplicated)")
        if unit >= self._meta["units_total"]:
            raise DatabaseError(f"{self.path}: unit {unit} is beyond the run's "
                                f"{self._meta['units_total']} units")
        prepared = self._prepare(rows)
        state = None if state is None else bytes(state)
        self._check_untouched()
        if self._file_units < 0:
            # nothing of this run on disk yet: the first commit writes the file itself
            try:
                undo = self._apply(prepared, state)
            except BaseException:
                self._broken = True
                raise
            try:
                self._publish()
            except OSError as e:
                undo()
                raise self._failed(e, f"unit {unit}") from None
            except BaseException:  # e.g. Ctrl-C: whether the file was replaced is unknown
                self._broken = True
                raise
            return
        header, parts = _encode(self._meta["run_id"], unit, prepared, state)
        try:
            if self._journal is None:
                self._journal = store_io.Journal(_journal_path(self.path), self._jend)
            self._journal.append(header, parts)
        except OSError as e:
            raise self._failed(e, f"unit {unit}") from None
        try:
            self._apply(prepared, state)
            if time.monotonic() >= self._next_publish:
                try:
                    self._publish()
                except (OSError, DatabaseError) as e:  # the commit is safe in the journal
                    log.info("%s: publishing deferred (%s); the units are in the journal",
                             self.path, _line(e))
        except BaseException:
            # e.g. Ctrl-C: the unit is committed in the journal, but memory may be half-way;
            # nothing more is written by this writer, a re-open replays the journal
            self._broken = True
            raise

    def _apply(self, prepared: dict, state: bytes | None):
        """Put a unit into memory; returns how to take it out again."""
        before = {t: self.rows(t) for t in self.tables}
        old_state = self._state
        for t, cols in prepared.items():
            for c, a in cols.items():
                self._cols[t][c].extend(a)
        if state is not None:
            self._state = state
        self._units += 1

        def undo():
            for t, n in before.items():
                for col in self._cols[t].values():
                    col.n = n
            self._state = old_state
            self._units -= 1

        return undo

    def _failed(self, e: OSError, what: str) -> DatabaseError:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        why = "disk full" if full else ("read-only" if _denied(e) else _line(e))
        hint = "free space and re-run" if full else "fix this and re-run"
        return DatabaseError(f"{self.path}: cannot write {what} ({why}); the {self._units} "
                             f"units committed before are intact: {hint} to resume")

    # -- publishing --------------------------------------------------------------------------
    def _attrs(self) -> dict:
        m = self._meta
        rows = {t: self.rows(t) for t in self.tables}
        return {"protocol": m["protocol"], "config": json.dumps(m["config"], sort_keys=True),
                "station": json.dumps(m["station"], sort_keys=True),
                "seed": -1 if m["seed"] is None else m["seed"],
                "software_version": m["software_version"], "format_version": FORMAT_VERSION,
                "start_time": m["start_time"], "end_time": m["end_time"],
                "units_total": m["units_total"], "complete": bool(m["complete"]),
                "summary": json.dumps(m["summary"], sort_keys=True, default=float),
                "progress": json.dumps({"units_done": self._units, "rows": rows,
                                        "state_bytes": len(self._state or b"")}, sort_keys=True),
                "run_id": m["run_id"],
                "snapshot": json.dumps(m["snapshot"], sort_keys=True, default=str)}

    def _image(self) -> memoryview:
        """The whole file, built in memory (HDF5 never touches the disk)."""
        attrs = self._attrs()
        specs = {t: {c: (np.dtype(d).str, u) for c, (d, u) in cols.items()}
                 for t, cols in self.tables.items()}
        attrs["meta_crc32"] = _meta_crc(attrs, specs)
        bio = io.BytesIO()
        with h5py.File(bio, "w", libver="latest") as f:
            f.attrs["kind"] = KIND
            f.attrs["format_version"] = FORMAT_VERSION
            g = f.create_group("runs").create_group(self.run)
            for k, v in attrs.items():
                g.attrs[k] = v
            for t, cols in self.tables.items():
                tg = g.create_group(t)
                tg.attrs["columns"] = json.dumps(list(cols))
                for c, (_d, units) in cols.items():
                    _dataset(tg, c, self._cols[t][c].view).attrs["units"] = units
            _dataset(g, "_state", np.frombuffer(self._state or b"", np.uint8)).attrs["units"] = \
                "bytes"
        return bio.getbuffer()

    def _publish(self) -> None:
        """Write the file from memory, replace the published one atomically, empty the journal.
        OSError if it fails (then the old file and the journal are as they were)."""
        t0 = time.monotonic()
        self._check_untouched()
        self._published = store_io.atomic_write(self.path, self._image())
        self._file_units = self._units
        jp = _journal_path(self.path)
        if self._journal is None and jp.exists():
            self._journal = store_io.Journal(jp, self._jend)
        if self._journal is not None:
            try:
                self._journal.clear()
            except OSError as e:  # harmless: its records are all in the file now
                log.info("%s: could not empty the journal (%s)", jp, _line(e))
        cost = time.monotonic() - t0
        self._next_publish = time.monotonic() + PUBLISH_RATIO * cost

    def publish(self) -> None:
        """Publish now whatever is committed but not yet in the file (DatabaseError if it
        cannot be written; the commits stay in the journal)."""
        self._usable()
        if self._units > self._file_units >= 0:
            try:
                self._publish()
            except OSError as e:
                raise self._failed(e, "the file") from None

    def finish(self, summary: dict | None = None) -> None:
        """Mark the run complete with its end time and summary, publish it and close."""
        if self.already_complete:
            self.close()
            return
        self._usable()
        if self._units != self._meta["units_total"]:
            raise DatabaseError(f"{self.path}: cannot finish a run with {self._units} of "
                                f"{self._meta['units_total']} units done")
        self._meta.update(summary=_normal(summary or {}), end_time=_now(), complete=True)
        try:
            self._publish()
        except OSError as e:
            self._meta.update(summary={}, end_time="", complete=False)
            raise self._failed(e, "the run's end") from None
        except BaseException:
            self._meta.update(summary={}, end_time="", complete=False)
            raise
        self.close()

    def close(self) -> None:
        """Publish what is not yet in the file (best effort: it stays in the journal if that
        fails), release the lock and remove what an unstarted run made. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        try:
            if self._units > self._file_units >= 0 and not (self._meta["complete"]
                                                             or self._broken):
                try:
                    self._publish()
                except (OSError, DatabaseError) as e:
                    log.info("%s: not published at close (%s); the units are in the journal",
                             self.path, _line(e))
        finally:
            if self._journal is not None:
                self._journal.close()
            if _owns(self.path, self):  # a newer writer of this process takes care of the rest
                jp = _journal_path(self.path)
                try:
                    if jp.exists() and jp.stat().st_size == 0:
                        jp.unlink()
                except OSError:
                    pass
                _unlock(self.path, self)
                if self._file_units < 0:
                    self._remove_folders(self._created)


def _dataset(g: h5py.Group, name: str, a: np.ndarray) -> h5py.Dataset:
    return g.create_dataset(name, data=a, chunks=(max(1, min(a.size, _CHUNK)),),
                            maxshape=(None,), fletcher32=True, track_times=False)
