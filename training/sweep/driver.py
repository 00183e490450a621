"""The sweep driver: run what is not yet stored, store each result as it comes, then write the
table and the plots."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.errors import SweepError
from training.sweep.spec import SweepSpec, expand
from training.sweep.store import ResultStore, check_result, write_atomic
from training.sweep.table import write_plots, write_table
from training.sweep.units import (
    MEMBERS,
    GroupFn,
    Outcome,
    PointFn,
    UnitFn,
    make_units,
    split_outcome,
)

log = logging.getLogger(__name__)


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
    group_fn: GroupFn | None = None,
    batch_seeds: bool | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    use_ray: bool = False,
    ray_options: dict | None = None,
    on_point: Callable[[int, int, Outcome], None] | None = None,
    plots: bool = True,
) -> SweepSummary:
    """Run every point of ``spec`` not already in ``out_dir``'s store, then write table + plots.

    ``point_fn(params) -> {'kinds': {kind: {metric: value}}}`` defaults to
    :func:`training.sweep.point.run_point`. ``use_ray`` runs the points as Ray tasks
    (``ray_address``: an address, "auto", or None to use a Ray instance this process already
    started). ``on_point(done, total, outcome)`` is called after each point is stored.

    Seed batching: with ``batch_seeds`` (default: the sweep file's ``batch_seeds``, itself on by
    default) and a group function, the pending points that differ only by seed run as one work
    unit, ``group_fn([params, ...]) -> [result, ...]``; each point is still stored under its own
    key. The default point function's group function is :func:`~training.sweep.point.run_group`
    (one batched model of K networks). A custom ``point_fn`` without a ``group_fn`` runs point
    by point.
    """
    out_dir = Path(out_dir)
    if point_fn is None:
        from training.sweep.point import run_group, run_point

        point_fn = run_point
        group_fn = group_fn or run_group
    batch = (spec.batch_seeds if batch_seeds is None else batch_seeds) and group_fn is not None
    points = expand(spec)
    store = ResultStore(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "sweep.yaml",
                 yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    done = store.done_keys()
    pending = [p for p in points if p.key not in done]
    summary = SweepSummary(total=len(points), already_done=len(points) - len(pending))
    log.info("sweep %s: %d points, %d already done", spec.name, len(points), summary.already_done)

    # the point function also learns which networks to train; the store keeps the parameters.
    # Only pending points are grouped, so a group with finished members trains only the rest.
    units, members = make_units(pending, list(spec.kinds), batch)
    unit_fn = UnitFn(point_fn, group_fn) if any(MEMBERS in u.params for u in units) else point_fn
    if use_ray:
        from training.sweep.ray_cluster import iter_ray

        outcomes = iter_ray(units, unit_fn, address=ray_address, **(ray_options or {}))
    else:
        from training.sweep.local import iter_local

        outcomes = iter_local(units, unit_fn, workers=workers)
    n_done = summary.already_done
    try:
        for unit_oc in outcomes:
            for oc in split_outcome(unit_oc, members[unit_oc.point.key]):
                n_done += _store(store, spec, oc, summary)
                if on_point is not None:
                    on_point(n_done, summary.total, oc)
    finally:
        outcomes.close()
        # the table reflects whatever is stored, also after an interrupt
        keys = {p.key for p in points}
        recs = [r for r in store.records() if r["key"] in keys]
        if recs:
            summary.table = write_table(recs, out_dir)
    if plots and summary.table is not None:
        summary.plots = [*write_plots(summary.table, out_dir / "plots"),
                         *write_plots(summary.table, out_dir / "plots", "transfer_acc_mean")]
    return summary


def _store(store: ResultStore, spec: SweepSpec, oc: Outcome, summary: SweepSummary) -> int:
    """Append one point's outcome to the store (or to the failures); 1 if it succeeded."""
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
        return 0
    extra = {k: v for k, v in oc.payload["result"].items() if k != "kinds"}
    store.append({**rec_base, "kinds": {k: per_kind[k] for k in spec.kinds},
                  "wall_s": oc.payload["wall_s"], "host": oc.payload["host"],
                  **({"extra": extra} if extra else {}),
                  **({"group": oc.payload["group"]} if "group" in oc.payload else {})})
    summary.ran += 1
    return 1
