"""`xbarlab sweep SWEEP.yaml --out DIR`: train and evaluate every point of a parameter sweep.

The work happens in the `training.sweep` package; this module only parses options and shows
progress. It imports neither torch nor the sweep machinery at load time, so
`xbarlab --help` stays fast on a lab PC without the [train] extra.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import click

from xbarlab.errors import XbarlabError


def _load_point_fn(spec: str):
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise XbarlabError(f"--point-fn wants MODULE:FUNCTION, got {spec!r}")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise XbarlabError(f"--point-fn {spec}: {e}") from None


def register(cli: click.Group) -> None:
    @cli.command("sweep")
    @click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="Output folder: results.jsonl (resume store), results.csv, plots/.")
    @click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
                  help="Local worker processes (ignored with --ray).")
    @click.option("--ray", "ray_address", default=None, metavar="ADDRESS|auto",
                  help="Run the points as Ray tasks on an existing cluster.")
    @click.option("--gpus-per-point", default=0.0, show_default=True, type=click.FloatRange(min=0),
                  help="With --ray: GPUs each point asks for (0 hides GPUs from the task).")
    @click.option("--cpus-per-point", default=1.0, show_default=True,
                  type=click.FloatRange(min=0, min_open=True),
                  help="With --ray: CPUs each point asks for.")
    @click.option("--no-plots", is_flag=True, help="Write the table only.")
    @click.option("--no-batch-seeds", is_flag=True,
                  help="Train every point on its own, not points differing only by seed as one "
                       "batched model (same results; overrides the file's batch_seeds).")
    @click.option("--point-fn", default=None, metavar="MODULE:FUNCTION",
                  help="Use another point function (params dict -> metrics); for tests and "
                       "custom experiments. Default: training.sweep.point.run_point.")
    def sweep_cmd(sweep_file: Path, out_dir: Path, workers: int, ray_address: str | None,
                  gpus_per_point: float, cpus_per_point: float, no_plots: bool,
                  point_fn: str | None, no_batch_seeds: bool) -> None:
        """Train and evaluate every point of SWEEP_FILE (hardware-aware and regular networks).

        Finished points are stored as they complete; running the same command again resumes,
        recomputing nothing that finished. See docs/sweeps.md for the file format.
        """
        from training.defaults import LABELS
        from training.sweep import SweepError, expand, load_spec, run_sweep

        fn = _load_point_fn(point_fn) if point_fn else None
        try:
            spec = load_spec(sweep_file)
            n_points = len(expand(spec))
            t0 = time.perf_counter()

            def on_point(done: int, total: int, oc) -> None:
                p = oc.point.params
                label = " ".join(f"{k}={p[k]}" for k in ("dataset", "stuck_rate", "tile_size",
                                                          "mapping", "seed") if p.get(k) is not None)
                if oc.error is not None:
                    click.echo(f"  FAILED {label}: {oc.error}", err=True)
                    return
                kinds = oc.payload["result"]["kinds"]
                scores = ", ".join(f"{LABELS[k]} {100 * kinds[k]['share_correct_95']:.1f} %"
                                   for k in spec.kinds)
                elapsed = time.perf_counter() - t0
                click.echo(f"[{done}/{total}] {label}: {scores} "
                           f"({oc.payload['wall_s']:.1f} s; {elapsed:.0f} s so far)")

            click.echo(f"sweep {spec.name!r}: {n_points} points -> {out_dir}")
            summary = run_sweep(
                spec, out_dir, point_fn=fn, workers=workers,
                batch_seeds=False if no_batch_seeds else None,
                use_ray=ray_address is not None, ray_address=ray_address,
                ray_options={"num_gpus": gpus_per_point, "num_cpus": cpus_per_point},
                on_point=on_point, plots=not no_plots)
        except SweepError as e:
            raise XbarlabError(str(e)) from None
        done = summary.already_done + summary.ran
        click.echo(f"{done} of {summary.total} points done ({summary.already_done} from earlier "
                   f"runs, {summary.ran} now, {len(summary.failed)} failed)")
        if summary.table is not None:
            click.echo(f"table: {summary.table}")
        for p in summary.plots:
            click.echo(f"plot: {p}")
        if summary.failed:
            raise XbarlabError(f"{len(summary.failed)} point(s) failed (see "
                               f"{out_dir / 'failures.jsonl'}); re-run to retry them")
