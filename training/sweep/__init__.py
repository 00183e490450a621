"""Parameter sweeps: train and evaluate many (hardware-aware, regular) network pairs.

A sweep file (YAML) names fixed ``base`` settings, a ``grid`` (cartesian product) and/or a list of
``points``; :func:`expand` turns it into concrete points, each with a stable key derived from its
fully resolved parameters. :func:`run_sweep` runs the points that are not yet in the output
folder's store (``results.jsonl``, appended and fsync'ed after every point), on local processes
or on a Ray cluster, then writes the tidy table (``results.csv``) and the summary plots.

One module per part, imported in this order (no cycles):

* ``spec``: the file's schema, expansion, resolution of defaults, keys;
* ``store``: the JSON-lines store and what a point function must return;
* ``units``: work units (a point, or a seed group trained as one batched model) and outcomes;
* ``local`` / ``ray_cluster``: the executors (local processes, Ray tasks);
* ``table``: results.csv and the plots;
* ``point``: the real point function (``run_point``, ``run_group``; the only one using torch);
* ``driver``: ``run_sweep``, which ties them together.

Nothing here imports torch, pandas or Ray at import time.
"""

from training.errors import SweepError
from training.sweep.driver import SweepSummary, run_sweep
from training.sweep.point import run_group, run_point
from training.sweep.spec import PARAM_NAMES, Point, PointParams, SweepSpec, expand, load_spec
from training.sweep.store import METRICS, ResultStore
from training.sweep.table import table_rows, write_plots, write_table
from training.sweep.units import Outcome, group_points

__all__ = ["METRICS", "PARAM_NAMES", "Outcome", "Point", "PointParams", "ResultStore",
           "SweepError", "SweepSpec", "SweepSummary", "expand", "group_points", "load_spec",
           "run_group", "run_point", "run_sweep", "table_rows", "write_plots", "write_table"]
