"""Work units: what an executor runs (a point, or a seed group of points trained as one batched
model) and what comes back (an :class:`Outcome` per unit, split into one per point).

Everything here is picklable at module level, so local worker processes and Ray tasks can run
it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from training.errors import SweepError
from training.sweep.spec import Point, point_key

PointFn = Callable[[dict], dict]
GroupFn = Callable[[list[dict]], list[dict]]

#: params key of a work unit that holds a whole seed group
MEMBERS = "members"


def timed_call(fn: PointFn, params: dict) -> dict:
    """Runs in the worker: the unit plus where and how long it ran."""
    t0 = time.perf_counter()
    result = fn(dict(params))
    return {"result": result, "wall_s": time.perf_counter() - t0, "host": socket.gethostname(),
            "pid": os.getpid()}


@dataclass
class Outcome:
    point: Point
    payload: dict | None = None
    error: str | None = None
    trace: str | None = None


def group_points(points: list[Point]) -> list[list[Point]]:
    """Points that differ only by ``seed`` (every other resolved parameter, the DB path
    included, equal), in first-seen order; each group in file order."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        rest = {k: v for k, v in p.params.items() if k != "seed"}
        groups.setdefault(point_key(rest), []).append(p)
    return list(groups.values())


@dataclass(frozen=True)
class UnitFn:
    """Runs one work unit: a seed group (``{"members": [params, ...]}``) through the group
    function, a lone point through the point function."""

    point_fn: PointFn
    group_fn: GroupFn | None = None

    def __call__(self, params: dict) -> dict:
        if MEMBERS not in params:
            return self.point_fn(params)
        members = params[MEMBERS]
        results = self.group_fn([dict(m) for m in members])
        if not isinstance(results, list) or len(results) != len(members):
            raise SweepError("group function must return one result per member point")
        return {MEMBERS: results}


def make_units(pending: list[Point], kinds: list[str], batch: bool
               ) -> tuple[list[Point], dict[str, list[Point]]]:
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


def split_outcome(oc: Outcome, grp: list[Point]) -> list[Outcome]:
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
