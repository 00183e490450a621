"""Parameter sweeps: train and evaluate many (hardware-aware, regular) network pairs.

A sweep file (YAML) names fixed ``base`` settings, a ``grid`` (cartesian product) and/or a list of
``points``; :func:`expand` turns it into concrete points, each with a stable key derived from its
fully resolved parameters. :func:`run_sweep` runs the points that are not yet in the output
folder's store (``results.jsonl``, appended and fsync'ed after every point), on local processes
or on a Ray cluster (:mod:`training.sweep_ray`), then writes the tidy table (``results.csv``) and
the summary plots.

This module imports neither torch nor pandas at import time: spec, expansion and store are cheap
to import and test. Only :func:`run_point` (the real point function) needs torch.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from training.errors import TrainingError

log = logging.getLogger(__name__)

#: network kinds a point trains; each becomes one row of the table
KINDS = ("hardware_aware", "regular")

#: metric columns every point function reports per kind (more are allowed and kept)
METRICS = (
    "share_correct_95",   # share of test points correct in >= 95 % of transfers
    "transfer_acc_mean",  # mean over transfers of the test accuracy
    "transfer_acc_p05",   # 5th percentile over transfers of the test accuracy
    "clean_acc",          # accuracy without any non-ideality
    "steps",              # optimiser steps actually used (convergence-aware training)
    "train_s",            # wall time of this network's training [s]
)

STORE_NAME = "results.jsonl"
FAILURES_NAME = "failures.jsonl"
TABLE_NAME = "results.csv"


class SweepError(TrainingError):
    """A sweep file, output folder or backend problem, said in one line."""


# -- the sweep file ---------------------------------------------------------------------------


class PointParams(BaseModel):
    """One point's settings. Unset values mean "the training default" (or the DB's value)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: non-ideality database: "reference" (the shipped published data) or an HDF5 path
    db: str = "reference"
    dataset: Literal["moons", "digits"] = "moons"
    mapping: Literal["physical", "reference"] = "physical"
    seed: int = Field(0, ge=0)
    #: stuck rates per device: x = stuck at HRS, y = stuck at LRS; or a total split evenly.
    #: None = the rates in the non-ideality database.
    stuck_rate: float | None = Field(None, ge=0.0, le=1.0)
    stuck_hrs_rate: float | None = Field(None, ge=0.0, le=1.0)
    stuck_lrs_rate: float | None = Field(None, ge=0.0, le=1.0)
    #: square crossbar tile edge (devices); layers larger than a tile span several tiles
    tile_size: int | None = Field(None, ge=1, le=4096)
    #: a layer's bias on the same tiles as its weights (None = the training default)
    share_bias: bool | None = None
    #: multipliers on the tuning-imprecision sigma and on the V/3 disturbance draws
    tuning_sigma_scale: float = Field(1.0, ge=0.0, le=100.0)
    disturbance_scale: float = Field(1.0, ge=0.0, le=100.0)
    #: hidden layer widths (None = the dataset's default network)
    hidden: tuple[int, ...] | None = None
    epochs: int | None = Field(None, ge=1)
    #: early stopping patience in epochs on the validation loss under noise (None = default)
    patience: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)
    batch_size: int | None = Field(None, ge=1)
    #: Monte-Carlo transfers used to evaluate each trained network
    transfers: int = Field(1000, ge=1, le=1_000_000)

    @field_validator("hidden")
    @classmethod
    def _hidden_positive(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (len(v) == 0 or any(h < 1 for h in v)):
            raise ValueError("hidden widths must be a non-empty list of integers >= 1")
        return v

    @model_validator(mode="after")
    def _resolve_stuck(self) -> PointParams:
        if self.stuck_rate is not None:
            if self.stuck_hrs_rate is not None or self.stuck_lrs_rate is not None:
                raise ValueError("give either stuck_rate (total) or stuck_hrs_rate/stuck_lrs_rate")
            half = self.stuck_rate / 2.0
            # frozen model: set through object.__setattr__; the total splits evenly (x = y)
            object.__setattr__(self, "stuck_hrs_rate", half)
            object.__setattr__(self, "stuck_lrs_rate", half)
        elif (self.stuck_hrs_rate is None) != (self.stuck_lrs_rate is None):
            raise ValueError("stuck_hrs_rate and stuck_lrs_rate must be given together")
        elif self.stuck_hrs_rate is not None:
            object.__setattr__(self, "stuck_rate", self.stuck_hrs_rate + self.stuck_lrs_rate)
        if self.stuck_hrs_rate is not None and self.stuck_hrs_rate + self.stuck_lrs_rate > 1.0:
            raise ValueError("stuck_hrs_rate + stuck_lrs_rate exceeds 1")
        return self


PARAM_NAMES = tuple(PointParams.model_fields)


class SweepSpec(BaseModel):
    """A sweep file. ``points`` x ``grid``: every listed point is combined with every grid
    combination (with only one of them, that one alone); ``base`` fills the rest."""

    model_config = ConfigDict(extra="forbid")

    name: str = "sweep"
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list)
    kinds: list[Literal["hardware_aware", "regular"]] = Field(default_factory=lambda: list(KINDS))
    #: train points that differ only by seed as one batched model of K networks (see
    #: :func:`group_points`); results are the same either way, to float rounding
    batch_seeds: bool = True
    #: folder of the sweep file, against which a relative ``db`` path is resolved
    _source_dir: Path | None = PrivateAttr(None)

    @field_validator("base", "grid")
    @classmethod
    def _known_names(cls, v: dict) -> dict:
        for name in v:
            if name not in PARAM_NAMES:
                raise ValueError(f"unknown parameter {name!r} (known: {', '.join(PARAM_NAMES)})")
        return v

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, v: dict[str, list]) -> dict[str, list]:
        for name, values in v.items():
            if not values:
                raise ValueError(f"grid axis {name!r} has no values")
        return v

    @field_validator("points")
    @classmethod
    def _known_point_names(cls, v: list[dict]) -> list[dict]:
        for i, p in enumerate(v):
            for name in p:
                if name not in PARAM_NAMES:
                    raise ValueError(f"points[{i}]: unknown parameter {name!r}")
        return v

    @field_validator("kinds")
    @classmethod
    def _kinds_non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("kinds must name at least one of hardware_aware, regular")
        return list(dict.fromkeys(v))


def _one_line(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(file)"
    extra = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where}: {loc}: {err['msg']}{extra}"


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file; SweepError naming the field on any problem.

    A relative ``db`` path is resolved against the sweep file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: a sweep file is a mapping (name, base, grid, points, kinds)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SweepError(_one_line(e, str(path))) from None
    spec._source_dir = path.parent.resolve()
    return spec


@dataclass(frozen=True)
class Point:
    """A concrete sweep point: resolved parameters and the key they hash to."""

    key: str
    params: dict[str, Any]


def _resolve_db(db: str, source_dir: Path | None) -> str:
    if db == "reference":
        return db
    p = Path(db).expanduser()
    if not p.is_absolute() and source_dir is not None:
        p = source_dir / p
    return str(p.resolve())


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise SweepError(f"non-ideality database {path}: {e.strerror or e}") from None
    return h.hexdigest()[:16]


def point_key(params: dict[str, Any]) -> str:
    """Stable key of a resolved parameter set: sha256 of its canonical JSON (sorted keys)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def expand(spec: SweepSpec) -> list[Point]:
    """All points of a sweep, in file order, duplicates (same key) removed.

    Every parameter is resolved (defaults filled in, a total stuck rate split into x and y), so
    two files that mean the same point give the same key. A DB given as a file also contributes
    the file's content digest to the key, so a rebuilt database is not mistaken for the old one.
    """
    source_dir = spec._source_dir
    names = list(spec.grid)
    combos = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*spec.grid.values())]
    listed = spec.points or [{}]
    digests: dict[str, str] = {}
    out: dict[str, Point] = {}
    for i, listed_point in enumerate(listed):
        clash = set(listed_point) & set(names)
        if clash:
            raise SweepError(f"points[{i}] sets {sorted(clash)[0]!r}, which is also a grid axis")
        for combo in combos:
            raw = {**spec.base, **listed_point, **combo}
            # a point's stuck rates replace the base's, whichever form (total or x/y) each uses
            override = {**listed_point, **combo}
            if "stuck_rate" in override:
                for name in ("stuck_hrs_rate", "stuck_lrs_rate"):
                    if name not in override:
                        raw.pop(name, None)
            elif {"stuck_hrs_rate", "stuck_lrs_rate"} & override.keys():
                raw.pop("stuck_rate", None)
            try:
                pp = PointParams.model_validate(raw)
            except ValidationError as e:
                where = f"points[{i}]" if spec.points else "grid"
                raise SweepError(_one_line(e, where) + f" in {_short(raw)}") from None
            params = pp.model_dump()
            params["hidden"] = list(params["hidden"]) if params["hidden"] is not None else None
            params["db"] = _resolve_db(params["db"], source_dir)
            keyed = dict(params)
            if params["db"] != "reference":
                if params["db"] not in digests:
                    digests[params["db"]] = _file_digest(params["db"])
                keyed["db_digest"] = digests[params["db"]]
            keyed["kinds"] = sorted(spec.kinds)
            key = point_key(keyed)
            out.setdefault(key, Point(key=key, params=params))
    return list(out.values())


def _short(d: dict) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in d.items()) + "}"


# -- the store ---------------------------------------------------------------------------------


class ResultStore:
    """Append-only JSON-lines store of finished points in an output folder.

    Only the sweep driver writes it (workers return results), one line per point, flushed and
    fsync'ed before the next point is reported, so a killed sweep loses at most the points in
    flight. A torn last line (the process died mid-write) is ignored on reading and the point
    recomputed.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / STORE_NAME
        self.failures_path = self.dir / FAILURES_NAME

    def records(self) -> list[dict]:
        """All complete records, later ones winning for a repeated key."""
        if not self.path.exists():
            return []
        by_key: dict[str, dict] = {}
        with open(self.path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s:%d: torn or corrupt line ignored", self.path, lineno)
                    continue
                if isinstance(rec, dict) and "key" in rec and "kinds" in rec:
                    by_key[rec["key"]] = rec
        return list(by_key.values())

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.records()}

    def _append(self, path: Path, rec: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(rec, sort_keys=True, default=_json_default) + "\n"
        with open(path, "a+b") as f:
            # if a previous writer died mid-line, start on a fresh line so this record survives
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def append(self, rec: dict) -> None:
        self._append(self.path, rec)

    def append_failure(self, rec: dict) -> None:
        self._append(self.failures_path, rec)


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays from a point function
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_result(result: Any, kinds: Iterable[str]) -> dict[str, dict[str, float]]:
    """Validate a point function's return value; returns its ``kinds`` mapping."""
    if not isinstance(result, dict) or not isinstance(result.get("kinds"), dict):
        raise SweepError("point function must return {'kinds': {kind: {metric: value}}}")
    per_kind = result["kinds"]
    for kind in kinds:
        m = per_kind.get(kind)
        if not isinstance(m, dict):
            raise SweepError(f"point function returned no metrics for kind {kind!r}")
        missing = [name for name in METRICS if name not in m]
        if missing:
            raise SweepError(f"point function result for {kind!r} lacks {', '.join(missing)}")
    return per_kind


# -- executing points --------------------------------------------------------------------------

PointFn = Callable[[dict], dict]


def _timed_call(point_fn: PointFn, params: dict) -> dict:
    """Runs in the worker: the point plus where and how long it ran."""
    t0 = time.perf_counter()
    result = point_fn(dict(params))
    return {"result": result, "wall_s": time.perf_counter() - t0, "host": socket.gethostname(),
            "pid": os.getpid()}


@dataclass
class Outcome:
    point: Point
    payload: dict | None = None
    error: str | None = None
    trace: str | None = None


def iter_local(points: list[Point], point_fn: PointFn, workers: int = 1) -> Iterator[Outcome]:
    """Run points on local processes, yielding each as it finishes.

    One worker runs the points in this process, one after the other (no pool to start, and
    Ctrl-C stops at once). More workers use a ProcessPoolExecutor with the 'spawn' start method:
    each worker starts clean, which CUDA and torch's thread pools need. Training runs torch on one
    intra-op thread (training.train.set_threads: these tensors are too small to gain from more),
    so N workers keep about N cores busy.
    """
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        for p in points:
            try:
                yield Outcome(p, payload=_timed_call(point_fn, p.params))
            except Exception as e:  # a failed point is reported, the sweep goes on
                yield Outcome(p, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc())
        return
    ctx = multiprocessing.get_context("spawn")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = {pool.submit(_timed_call, point_fn, p.params): p for p in points}
        for fut in cf.as_completed(futures):
            p = futures[fut]
            try:
                yield Outcome(p, payload=fut.result())
            except Exception as e:
                trace = "".join(traceback.format_exception(e))
                yield Outcome(p, error=f"{type(e).__name__}: {e}", trace=trace)
    except BaseException:
        # interrupted (Ctrl-C, or the consumer stopped): drop queued points and stop the running
        # ones now rather than waiting for them; their results would not be stored anyway
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# -- seed groups -------------------------------------------------------------------------------


def group_points(points: list[Point]) -> list[list[Point]]:
    """Points that differ only by ``seed`` (every other resolved parameter, the DB path
    included, equal), in first-seen order; each group in file order."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        rest = {k: v for k, v in p.params.items() if k != "seed"}
        groups.setdefault(point_key(rest), []).append(p)
    return list(groups.values())


#: params key of a work unit that holds a whole seed group
MEMBERS = "members"


@dataclass(frozen=True)
class GroupRunner:
    """The work-unit function of a seed group: ``{"members": [params, ...]}`` -> the group
    function's list of per-point results, as ``{"members": [...]}``. A module-level class so that
    worker processes and Ray tasks can unpickle it."""

    group_fn: Callable[[list[dict]], list[dict]]

    def __call__(self, unit: dict) -> dict:
        members = unit[MEMBERS]
        results = self.group_fn([dict(m) for m in members])
        if not isinstance(results, list) or len(results) != len(members):
            raise SweepError("group function must return one result per member point")
        return {MEMBERS: results}


@dataclass(frozen=True)
class _UnitFn:
    """Runs one work unit: a seed group through the group runner, a lone point through the
    point function (picklable, for worker processes and Ray tasks)."""

    point_fn: PointFn
    runner: GroupRunner

    def __call__(self, params: dict) -> dict:
        return self.runner(params) if MEMBERS in params else self.point_fn(params)


def _units(pending: list[Point], kinds: list[str], batch: bool) -> tuple[list[Point], dict]:
    """Work units to submit and, per unit key, the member points it stands for.

    Unbatched, a unit is the point itself (its params plus the kinds to train). Batched, a group
    of two or more becomes one unit whose key is derived from its members' keys (a group of one
    stays a plain point, so nothing changes for sweeps without repeated seeds)."""
    units: list[Point] = []
    members: dict[str, list[Point]] = {}
    for grp in (group_points(pending) if batch else [[p] for p in pending]):
        if len(grp) == 1:
            p = grp[0]
            units.append(Point(p.key, {**p.params, "kinds": list(kinds)}))
            members[p.key] = grp
        else:
            key = "group-" + point_key({"members": [p.key for p in grp]})
            units.append(Point(key, {MEMBERS: [{**p.params, "kinds": list(kinds)}
                                               for p in grp]}))
            members[key] = grp
    return units, members


def _split_outcome(oc: Outcome, grp: list[Point]) -> list[Outcome]:
    """Per-point outcomes of a finished unit. A group's wall time is shared evenly among its
    points (``wall_s``); the whole group's time and size are kept in the payload."""
    if MEMBERS not in (oc.point.params or {}):
        return [Outcome(grp[0], oc.payload, oc.error, oc.trace)]
    if oc.error is not None:
        return [Outcome(p, error=oc.error, trace=oc.trace) for p in grp]
    results = oc.payload["result"][MEMBERS]
    share = oc.payload["wall_s"] / len(grp)
    return [Outcome(p, payload={**oc.payload, "result": r, "wall_s": share,
                                "group": {"size": len(grp), "wall_s": oc.payload["wall_s"]}})
            for p, r in zip(grp, results, strict=True)]


# -- the driver --------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    total: int
    already_done: int
    ran: int = 0
    failed: list[tuple[dict, str]] = field(default_factory=list)
    table: Path | None = None
    plots: list[Path] = field(default_factory=list)


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    *,
    point_fn: PointFn | None = None,
    group_fn: Callable[[list[dict]], list[dict]] | None = None,
    batch_seeds: bool | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    use_ray: bool = False,
    ray_options: dict | None = None,
    on_point: Callable[[int, int, Outcome], None] | None = None,
    plots: bool = True,
) -> SweepSummary:
    """Run every point of ``spec`` not already in ``out_dir``'s store, then write table + plots.

    ``point_fn(params) -> {'kinds': {kind: {metric: value}}}`` defaults to :func:`run_point`.
    ``use_ray`` runs the points as Ray tasks (``ray_address``: an address, "auto", or None to
    use a Ray instance this process already started). ``on_point(done, total, outcome)`` is
    called after each point is stored.

    Seed batching: with ``batch_seeds`` (default: the sweep file's ``batch_seeds``, itself on by
    default) and a group function, the pending points that differ only by seed run as one work
    unit, ``group_fn([params, ...]) -> [result, ...]``; each point is still stored under its own
    key. The default point function's group function is :func:`run_group` (one batched model of
    K networks). A custom ``point_fn`` without a ``group_fn`` runs point by point.
    """
    out_dir = Path(out_dir)
    if point_fn is None:
        point_fn = run_point
        group_fn = group_fn or run_group
    batch = (spec.batch_seeds if batch_seeds is None else batch_seeds) and group_fn is not None
    points = expand(spec)
    store = ResultStore(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "sweep.yaml",
                  yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    done = store.done_keys()
    pending = [p for p in points if p.key not in done]
    summary = SweepSummary(total=len(points), already_done=len(points) - len(pending))
    log.info("sweep %s: %d points, %d already done", spec.name, len(points), summary.already_done)

    # the point function also learns which networks to train; the store keeps the parameters.
    # Only pending points are grouped, so a group with finished members trains only the rest.
    calls, members = _units(pending, list(spec.kinds), batch)
    if any(MEMBERS in u.params for u in calls):
        unit_fn: PointFn = _UnitFn(point_fn, GroupRunner(group_fn))
    else:
        unit_fn = point_fn
    if use_ray:
        from training.sweep_ray import iter_ray

        outcomes = iter_ray(calls, unit_fn, address=ray_address, **(ray_options or {}))
    else:
        outcomes = iter_local(calls, unit_fn, workers=workers)
    n_done = summary.already_done
    try:
        for unit_oc in outcomes:
            for oc in _split_outcome(unit_oc, members[unit_oc.point.key]):
                rec_base = {"key": oc.point.key, "params": oc.point.params,
                            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                if oc.error is None:
                    try:
                        per_kind = check_result(oc.payload["result"], spec.kinds)
                    except SweepError as e:
                        oc.error, oc.trace = str(e), None
                if oc.error is not None:
                    store.append_failure({**rec_base, "error": oc.error, "trace": oc.trace})
                    summary.failed.append((oc.point.params, oc.error))
                    log.error("point %s failed: %s", oc.point.key, oc.error)
                else:
                    extra = {k: v for k, v in oc.payload["result"].items() if k != "kinds"}
                    store.append({**rec_base, "kinds": {k: per_kind[k] for k in spec.kinds},
                                  "wall_s": oc.payload["wall_s"], "host": oc.payload["host"],
                                  **({"extra": extra} if extra else {}),
                                  **({"group": oc.payload["group"]} if "group" in oc.payload
                                     else {})})
                    summary.ran += 1
                    n_done += 1
                if on_point is not None:
                    on_point(n_done, summary.total, oc)
    finally:
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
        # the table reflects whatever is stored, also after an interrupt
        keys = {p.key for p in points}
        recs = [r for r in store.records() if r["key"] in keys]
        if recs:
            summary.table = write_table(recs, out_dir)
    if plots and summary.table is not None:
        summary.plots = [*write_plots(summary.table, out_dir / "plots"),
                         *write_plots(summary.table, out_dir / "plots", "transfer_acc_mean")]
    return summary


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- table and plots ---------------------------------------------------------------------------


def table_rows(records: list[dict]) -> list[dict]:
    """One row per point x network kind: every parameter, then every metric."""
    rows = []
    for rec in records:
        params = dict(rec["params"])
        if isinstance(params.get("hidden"), list):
            params["hidden"] = "-".join(str(h) for h in params["hidden"])
        used = (rec.get("extra") or {}).get("params_used") or {}
        for name, val in used.items():  # e.g. the DB's stuck rates where the point left them unset
            if params.get(name) is None:
                params[name] = val
        for kind, metrics in rec["kinds"].items():
            rows.append({"key": rec["key"], **params, "kind": kind, **metrics,
                         "point_wall_s": rec.get("wall_s"), "host": rec.get("host"),
                         "finished_at": rec.get("finished_at")})
    return rows


def write_table(records: list[dict], out_dir: str | os.PathLike) -> Path:
    """Write results.csv (and results.parquet if pyarrow is installed) atomically."""
    import pandas as pd

    out_dir = Path(out_dir)
    df = pd.DataFrame(table_rows(records))
    # key, parameters, kind, the standard metrics, any further metrics, then bookkeeping
    tail = ["point_wall_s", "host", "finished_at"]
    head = ["key", *PARAM_NAMES, "kind", *METRICS]
    cols = [c for c in head if c in df.columns]
    cols += [c for c in df.columns if c not in cols and c not in tail] + tail
    df = df[cols]
    order = [c for c in ("dataset", "mapping", "stuck_rate", "tile_size", "seed", "kind")
             if c in df.columns]
    df = df.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)
    path = out_dir / TABLE_NAME
    _write_atomic(path, df.to_csv(index=False))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        tmp = out_dir / "results.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / "results.parquet")
    return path


#: parameters worth a "robustness vs" plot when they vary in a sweep
PLOT_AXES = ("stuck_rate", "tile_size", "tuning_sigma_scale", "disturbance_scale")


def interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean over seeds (zero width for a single value)."""
    import numpy as np
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if v.size < 2:
        return (m, m, m)
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return (m, m - half, m + half)


METRIC_LABELS = {"share_correct_95": "test points correct in >= 95 % of transfers [%]",
                 "transfer_acc_mean": "mean test accuracy over transfers [%]",
                 "transfer_acc_p05": "5th-percentile test accuracy [%]",
                 "clean_acc": "test accuracy without non-idealities [%]"}


def write_plots(table: str | os.PathLike, plot_dir: str | os.PathLike,
                metric: str = "share_correct_95") -> list[Path]:
    """One PNG per varying parameter in PLOT_AXES: ``metric`` (a fraction, shown in %) against
    it, a panel per dataset, a line per network kind (and per other varying setting), mean with
    a 95 % interval over seeds. Named robustness_vs_<axis>.png for share_correct_95, else
    <metric>_vs_<axis>.png.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(table)
    plot_dir = Path(plot_dir)
    written: list[Path] = []
    # settings that vary (besides seed and the x axis) split the lines, so no mean mixes them
    candidates = [c for c in PARAM_NAMES if c in df.columns and c not in ("seed", "stuck_hrs_rate",
                                                                           "stuck_lrs_rate")]
    for axis in PLOT_AXES:
        if axis not in df.columns or df[axis].dropna().nunique() < 2:
            continue
        datasets = sorted(df["dataset"].astype(str).unique())
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.0 * len(datasets), 3.8),
                                 squeeze=False)
        for ax, ds in zip(axes[0], datasets, strict=True):
            sub = df[(df["dataset"].astype(str) == ds) & df[axis].notna()]
            others = [c for c in candidates if c not in (axis, "dataset")
                      and sub[c].astype(str).nunique() > 1]
            for label, grp in sub.groupby(["kind", *others], dropna=False, sort=True):
                label = label if isinstance(label, tuple) else (label,)
                xs, ms, los, his = [], [], [], []
                for x, g in grp.groupby(axis, sort=True):
                    m, lo, hi = interval(g[metric])
                    xs.append(x)
                    ms.append(m)
                    los.append(lo)
                    his.append(hi)
                scale = 100.0 if axis == "stuck_rate" else 1.0  # rates shown in %
                xs = [x * scale for x in xs]
                name = ", ".join([str(label[0])] + [f"{o}={v}" for o, v in zip(others, label[1:], strict=True)])
                (line,) = ax.plot(xs, [100 * m for m in ms], marker="o", label=name)
                ax.fill_between(xs, [100 * v for v in los], [100 * v for v in his],
                                color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(f"{ds}")
            ax.set_xlabel("stuck devices (HRS + LRS) [%]" if axis == "stuck_rate" else axis)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{metric} vs {axis} (mean, 95 % interval over seeds)", fontsize=10)
        fig.tight_layout()
        plot_dir.mkdir(parents=True, exist_ok=True)
        stem = "robustness" if metric == "share_correct_95" else metric
        path = plot_dir / f"{stem}_vs_{axis}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# -- the real point function -------------------------------------------------------------------

#: default network per dataset: inputs, hidden widths, outputs
DATASET_SIZES = {"moons": (2, (8,), 1), "digits": (64, (32,), 10)}

#: sweep parameter -> TrainConfig field, passed only when the point sets it
_TRAIN_FIELDS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size",
                 "patience": "patience", "share_bias": "share_bias"}


@functools.lru_cache(maxsize=4)
def _load_db(db: str):
    """The non-ideality DB of a point, loaded once per worker process."""
    if db == "reference":
        from database.reference import import_reference

        return import_reference()
    from database.nonideality import load_nonideality

    return load_nonideality(db)


def _training_api():
    """The training engineer's API, or SweepError naming what is missing."""
    try:
        from training import train as train_mod
        from training.noise import NoiseConfig
    except ImportError as e:
        raise SweepError(f"run_point needs the training API: {e}") from None
    try:
        from training.evaluate import evaluate_transfers
    except ImportError as e:
        raise SweepError(f"run_point needs training.evaluate.evaluate_transfers: {e}") from None
    return train_mod, NoiseConfig, evaluate_transfers


#: data order (mini-batch shuffling, held-out validation split) and the evaluation transfers are
#: seeded by these constants, not by the point's seed: a batched model shares one data order and
#: one set of evaluation transfers among its K networks, so a point trained alone must use the
#: same ones to give the same result. The point's seed sets each network's initialisation and
#: its training noise (per-network generators in training.train).
DATA_SEED = 0
EVAL_SEED = 0


def run_point(params: dict) -> dict:
    """Train the hardware-aware and the regular network of one point and evaluate both.

    Both networks are evaluated under the same non-idealities (the regular one has the point's
    noise model attached after training, as the paper does), on the dataset's test set, with
    ``params['transfers']`` Monte-Carlo transfers. The digits train/test split is fixed (seed
    0), and so are the data order and the evaluation transfers (DATA_SEED, EVAL_SEED), so that
    seeds vary only the networks and their training noise. Same as ``run_group([params])``.
    """
    return run_group([params])[0]


def _seeded_config(train_mod, seeds: list[int], **kw):
    """A TrainConfig for K networks with these (not necessarily consecutive) seeds.

    TrainConfig names its networks' seeds ``seed .. seed + k - 1``; a seed group after a resume
    may have gaps (0, 2, 3), so the seed list is given explicitly. training.train reads the
    networks' seeds only through ``cfg.seeds``."""
    import dataclasses

    @dataclasses.dataclass
    class _SeedListConfig(train_mod.TrainConfig):
        seed_list: tuple[int, ...] = ()

        @property
        def seeds(self) -> list[int]:
            return list(self.seed_list)

    return _SeedListConfig(seed=seeds[0], k=len(seeds), seed_list=tuple(seeds), **kw)


def run_group(group: list[dict]) -> list[dict]:
    """Train and evaluate points that differ only by seed as one batched model per kind.

    Network j of the K-network model is initialised from, and draws its training noise from,
    point j's seed; all K share the data order and the evaluation transfers (as a point run
    alone does: DATA_SEED, EVAL_SEED). So each point's result equals :func:`run_point`'s up to
    the rounding of batched matrix products. ``train_s`` and ``eval_s`` of a point are its share
    (1/K) of the batched model's times; ``steps`` is its own network's step count.
    """
    import dataclasses

    if not group:
        return []
    params = group[0]
    for other in group[1:]:
        diff = [k for k in params if k != "seed" and other.get(k) != params[k]]
        if diff or set(other) != set(params):
            raise SweepError(f"run_group: points differ in {diff or 'their parameter names'}, "
                             "not only in seed")
    seeds = [int(p["seed"]) for p in group]
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"run_group: repeated seeds {seeds}")
    k = len(seeds)

    train_mod, NoiseConfig, evaluate_transfers = _training_api()
    db = _load_db(params["db"])
    data = train_mod.load_dataset(params["dataset"], seed=0)
    x_tr, y_tr = data["train"]
    x_te, y_te = data["test"]
    n_in, hidden, n_out = DATASET_SIZES[params["dataset"]]
    sizes = (n_in, *(params["hidden"] or hidden), n_out)
    x_rate, y_rate = params["stuck_hrs_rate"], params["stuck_lrs_rate"]
    noise = NoiseConfig(tuning_scale=params["tuning_sigma_scale"],
                        disturbance_scale=params["disturbance_scale"],
                        stuck_hrs_rate=x_rate, stuck_lrs_rate=y_rate)
    kw: dict[str, Any] = {"sizes": sizes, "data_seed": DATA_SEED, "mapping": params["mapping"],
                          "noise": noise, "dataset": params["dataset"]}
    if params["tile_size"] is not None:
        kw["tile_rows"] = kw["tile_cols"] = params["tile_size"]
    known = {f.name for f in dataclasses.fields(train_mod.TrainConfig)}
    for name, field_name in _TRAIN_FIELDS.items():
        if params.get(name) is None:
            continue
        if field_name not in known:
            raise SweepError(f"parameter {name!r} is not supported by training.train.TrainConfig")
        kw[field_name] = params[name]

    per_point: list[dict[str, dict]] = [{} for _ in group]
    device = None
    for kind in params.get("kinds") or KINDS:
        cfg = _seeded_config(train_mod, seeds, hardware_aware=(kind == "hardware_aware"), **kw)
        res = train_mod.train(cfg, x_tr, y_tr, db)
        model = res.model
        device = str(model.layers[0].weight.device)
        # both networks see the same non-idealities at evaluation (the paper's comparison)
        t0 = time.perf_counter()
        ev = evaluate_transfers(model, x_te, y_te, params["transfers"], db,
                                mapping=cfg.mapping, noise=noise, seed=EVAL_SEED,
                                tile_rows=cfg.tile_rows, tile_cols=cfg.tile_cols,
                                share_bias=cfg.share_bias)
        eval_s = time.perf_counter() - t0
        steps = res.steps_per_network or [res.steps] * k
        for j in range(k):
            metrics = _metrics_from_evaluation(ev.summary(j))
            metrics.update(steps=steps[j], train_s=res.seconds / k, eval_s=eval_s / k)
            per_point[j][kind] = metrics
    used = {"stuck_hrs_rate": db.stuck_hrs_rate if x_rate is None else x_rate,
            "stuck_lrs_rate": db.stuck_lrs_rate if y_rate is None else y_rate,
            "stuck_rate": (db.stuck_hrs_rate + db.stuck_lrs_rate
                           if x_rate is None else x_rate + y_rate)}
    return [{"kinds": kinds, "device": device, "params_used": dict(used)} for kinds in per_point]


def _metrics_from_evaluation(summary: dict) -> dict[str, float]:
    """Flatten training.evaluate's summary of one network into the sweep's metric columns:
    share_correct_<q> for every threshold q (share_correct_95 is the paper's metric) and the
    transfer-accuracy statistics."""
    out = {"share_correct_95": float(summary["share_correct_95"])}
    for q, v in summary["share_correct"].items():  # keys like ">=95%"
        out[f"share_correct_{q.strip('>=%')}"] = float(v)
    for name in ("transfer_acc_mean", "transfer_acc_p05", "clean_acc", "transfer_acc_std",
                 "transfer_acc_median", "transfer_acc_min"):
        out[name] = float(summary[name])
    return out
