"""Local executor: work units in this process or on a pool of local worker processes."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import traceback
from collections.abc import Iterator

from training.errors import SweepError
from training.sweep.spec import Point
from training.sweep.units import Outcome, PointFn, timed_call


def iter_local(units: list[Point], fn: PointFn, workers: int = 1) -> Iterator[Outcome]:
    """Run units on local processes, yielding each as it finishes.

    One worker runs the units in this process, one after the other (no pool to start, and
    Ctrl-C stops at once). More workers use a ProcessPoolExecutor with the 'spawn' start method:
    each worker starts clean, which CUDA and torch's thread pools need. Training runs torch on one
    intra-op thread (training.train.set_threads: these tensors are too small to gain from more),
    so N workers keep about N cores busy.
    """
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    if workers == 1:
        for u in units:
            try:
                yield Outcome(u, payload=timed_call(fn, u.params))
            except Exception as e:  # a failed unit is reported, the sweep goes on
                yield Outcome(u, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc())
        return
    ctx = multiprocessing.get_context("spawn")
    # the pool's workers are the children this process starts from here on (the sweep driver
    # starts no others), so an interrupt can stop them without the pool's private state
    before = set(multiprocessing.active_children())
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        futures = {pool.submit(timed_call, fn, u.params): u for u in units}
        for fut in cf.as_completed(futures):
            u = futures[fut]
            try:
                yield Outcome(u, payload=fut.result())
            except Exception as e:
                trace = "".join(traceback.format_exception(e))
                yield Outcome(u, error=f"{type(e).__name__}: {e}", trace=trace)
    except BaseException:
        # interrupted (Ctrl-C, or the consumer stopped): drop queued units and stop the running
        # ones now rather than waiting for them; their results would not be stored anyway
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in set(multiprocessing.active_children()) - before:
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
