"""`xbarlab db build|show|plot`: raw runs -> non-ideality database, summaries, figures."""

from __future__ import annotations

import json
from pathlib import Path

import click
import h5py

from database.errors import SchemaError


def _kind(path: Path) -> str:
    try:
        with h5py.File(path, "r", locking=False) as f:
            k = f.attrs.get("kind", "")
    except OSError as e:
        raise SchemaError(f"{path}: not a readable HDF5 file ({e})") from None
    return k.decode() if isinstance(k, bytes) else str(k)


def _show_runs(path: Path) -> None:
    from database.runs import list_runs

    for info in list_runs(path):
        state = "complete" if info.complete else "UNFINISHED"
        click.echo(f"{path.name}:{info.name}  {info.protocol}  {state}  "
                   f"{info.units_done}/{info.units_total} units  seed {info.seed}")
        click.echo(f"  started {info.start_time}  ended {info.end_time or '-'}  "
                   f"xbarlab {info.software_version}  station {info.station.get('name', '?')}")
        for t, n in info.rows.items():
            click.echo(f"  table {t}: {n} rows")
        for name, snap in (info.snapshot.get("instruments") or {}).items():
            click.echo(f"  instrument {name}: {snap.get('idn', snap.get('kind', '?'))}")
        for k, v in info.summary.items():
            click.echo(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")


def _show_db(path: Path) -> None:
    import numpy as np

    from database.nonideality import load_nonideality

    db = load_nonideality(path)
    click.echo(f"{path.name}: non-ideality database, G range {db.g_min * 1e6:.0f}-"
               f"{db.g_max * 1e6:.0f} uS")
    click.echo("  tuning: level (uS)  sigma (%)  offset (%)  n")
    for lv, s, o, n in zip(db.tuning_levels, db.tuning_sigma_rel, db.tuning_offset_rel,
                           db.tuning_counts, strict=True):
        click.echo(f"    {lv * 1e6:8.1f}  {s * 100:8.3f}  {o * 100:+9.3f}  {int(n)}")
    click.echo(f"  sigma fit: {db.sigma_fit_slope * 1e-6 * 100:+.3e} %/uS * G + "
               f"{db.sigma_fit_intercept * 100:.3f} %; offset N({db.offset_mean_rel * 100:+.3f} %, "
               f"{db.offset_std_rel * 100:.3f} %)")
    d = db.disturbance_delta * 1e6
    click.echo(f"  disturbance: {d.size} samples, keys {db.disturbance_keys.min()}-{db.max_key}, "
               f"mean {d.mean():+.2f} uS, 1st pct {np.percentile(d, 1):+.2f} uS, "
               f"min {d.min():+.2f} uS, max {d.max():+.2f} uS")
    click.echo(f"  rule: {db.disturbance_rule}")
    click.echo(f"  stuck: HRS {db.stuck_hrs_rate * 100:.2f} % ({db.stuck_hrs_samples.size} samples), "
               f"LRS {db.stuck_lrs_rate * 100:.2f} % ({db.stuck_lrs_samples.size} samples)")
    for name, v in (("SET", db.iv_set_volts), ("RESET", db.iv_reset_volts)):
        if v.size:
            click.echo(f"  I-V {name} voltage: median {np.median(v):+.3f} V, "
                       f"5-95 % {np.percentile(v, 5):+.3f} .. {np.percentile(v, 95):+.3f} V, "
                       f"{v.size} cycles")
    if not (db.iv_set_volts.size or db.iv_reset_volts.size):
        click.echo("  I-V thresholds: none (no DC I-V run among the inputs)")
    for k, v in db.provenance.items():
        if k != "statistics":
            click.echo(f"  provenance {k}: {v if isinstance(v, str) else json.dumps(v)}")


def register(cli: click.Group) -> None:
    db_group = cli.commands["db"]

    @db_group.command("build")
    @click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
    @click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
    @click.option("--cut", type=float, default=None,
                  help="drop disturbance samples with |delta| above this [S] (default: no cut)")
    @click.option("--force", is_flag=True, help="overwrite an existing database")
    def build_cmd(runs, out, cut, force):
        """Build a non-ideality database from raw-run files."""
        from database.build import build_nonideality
        from database.nonideality import save_nonideality

        db = build_nonideality(list(runs), disturbance_cut=cut)
        save_nonideality(db, out, overwrite=force)
        click.echo(f"wrote {out}")
        _show_db(Path(out))

    @db_group.command("show")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    def show_cmd(file):
        """Readable summary of a raw-run file or a non-ideality database."""
        from database.nonideality import KIND as DB_KIND
        from database.runs import KIND as RUNS_KIND

        path = Path(file)
        kind = _kind(path)
        if kind == RUNS_KIND:
            _show_runs(path)
        elif kind == DB_KIND:
            _show_db(path)
        else:
            raise SchemaError(f"{path}: neither a raw-run file nor a non-ideality database "
                              f"(kind={kind!r})")

    @db_group.command("plot")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    @click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
                  help="folder for the PNGs (default: next to FILE)")
    @click.option("--k", "keys", multiple=True, type=int, help="disturbance keys to show")
    def plot_cmd(file, out_dir, keys):
        """Paper-style figures of a non-ideality database (tuning sigma/offset, disturbance by
        k, stuck) as PNG. Raw-run files: `xbarlab plot`."""
        from database.nonideality import load_nonideality
        from database.plots import plot_all
        from database.runs import KIND as RUNS_KIND

        if _kind(Path(file)) == RUNS_KIND:
            raise SchemaError(f"{file} is a raw-run file, not a non-ideality database: "
                              f"`xbarlab plot {file}` draws its figures (`xbarlab db build` "
                              "turns raw runs into a database)")
        db = load_nonideality(file)
        out = Path(out_dir) if out_dir else Path(file).parent
        for p in plot_all(db, out, list(keys) or None):
            click.echo(f"wrote {p}")
