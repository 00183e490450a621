"""Ray executor of `xbarlab sweep --ray ADDRESS`: every pending work unit (a point, or a seed
group of points trained as one batched model: training.sweep.units) becomes one Ray task.

The driver (the process running the sweep) keeps the store: tasks return their results and the
driver appends each to ``results.jsonl`` as it arrives, exactly as with local processes, so a
restarted sweep resumes the same way whichever backend ran it. Workers need xbarlab (with the
[train] extra) installed, and a non-ideality database given as a path must be readable at that
path on every node ("reference", the shipped data, always is).

Ray is an optional extra (``pip install 'xbarlab[ray]'``) and is imported only here, lazily.
"""

from __future__ import annotations

from collections.abc import Iterator

from training.errors import SweepError
from training.sweep.spec import Point
from training.sweep.units import Outcome, PointFn, timed_call


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs Ray, an optional extra: pip install 'xbarlab[ray]'") from None
    return ray


def _task(fn: PointFn, params: dict) -> dict:
    return timed_call(fn, params)  # runs on a Ray worker


def connect(address: str | None):
    """Connect to a Ray cluster (an address or "auto"); reuse an instance already started in this
    process (address None, as the tests do with a local 2-CPU instance)."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    if address is None:
        raise SweepError("no Ray instance: give --ray ADDRESS (or auto) of a running cluster")
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SweepError(f"cannot connect to Ray at {address!r}: {first}") from None
    return ray


def iter_ray(units: list[Point], fn: PointFn, *, address: str | None = None,
             num_cpus: float = 1.0, num_gpus: float = 0.0) -> Iterator[Outcome]:
    """Submit every unit as a Ray task; yield outcomes in completion order.

    ``num_gpus`` > 0 lets a task see a GPU (Ray hides GPUs from tasks that reserve none), and the
    training code then uses CUDA. A unit that fails (exception, crashed worker) is yielded as an
    error; a unit is not retried by Ray, because the sweep itself retries failed points on the
    next run. If the driver stops early, the outstanding tasks are cancelled.
    """
    if not units:
        return
    ray = connect(address)
    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_task)
    fn_ref = ray.put(fn)
    pending = {task.remote(fn_ref, u.params): u for u in units}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                u = pending.pop(ref)
                try:
                    payload = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None) or e
                    msg = str(cause).strip().splitlines()
                    yield Outcome(u, error=f"{type(cause).__name__}: {msg[0] if msg else ''}",
                                  trace=str(e))
                else:
                    yield Outcome(u, payload=payload)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
