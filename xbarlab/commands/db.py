"""`xbarlab db build|show|plot`: raw runs -> non-ideality database, summaries, figures."""

from __future__ import annotations

import json
from pathlib import Path

import click
import h5py

from database.errors import SchemaError
from xbarlab.commands import next_steps


def _kind(path: Path) -> str:
    try:
        with h5py.File(path, "r", locking=False) as f:
            k = f.attrs.get("kind", "")
    except OSError as e:
        raise SchemaError(f"{path}: not a readable HDF5 file ({e})") from None
    return k.decode() if isinstance(k, bytes) else str(k)


def _show_runs(path: Path) -> None:
    from database.display import column_unit
    from database.runs import list_runs, table_columns
    from xbarlab.commands.campaigns import summary_text

    columns = table_columns(path)
    for info in list_runs(path):
        state = "complete" if info.complete else "UNFINISHED"
        click.echo(f"{path.name}:{info.name}  {info.protocol}  {state}  "
                   f"{info.units_done}/{info.units_total} units  seed {info.seed}")
        click.echo(f"  started {info.start_time}  ended {info.end_time or '-'}  "
                   f"xbarlab {info.software_version}  station {info.station.get('name', '?')}")
        for t, n in info.rows.items():
            cols = columns.get(info.name, {}).get(t, {})
            click.echo(f"  table {t}: {n:,} rows; columns "
                       + ", ".join(c + column_unit(u) for c, u in cols.items()))
        for name, snap in (info.snapshot.get("instruments") or {}).items():
            click.echo(f"  instrument {name}: {snap.get('idn', snap.get('kind', '?'))}")
        click.echo(summary_text(info.protocol, info.summary))


def _show_db(path: Path) -> None:
    import numpy as np

    from database.display import count, duration, pct, us, volts
    from database.nonideality import load_nonideality

    db = load_nonideality(path)
    click.echo(f"{path.name}: non-ideality database, G range {us(db.g_min, 0)} to "
               f"{us(db.g_max, 0)}")
    click.echo(f"  tuning: {'level':>10}  {'sigma':>9}  {'offset':>10}  tunings")
    for lv, s, o, n in zip(db.tuning_levels, db.tuning_sigma_rel, db.tuning_offset_rel,
                           db.tuning_counts, strict=True):
        click.echo(f"          {us(lv):>10}  {pct(s, 3):>9}  {pct(o, 3, signed=True):>10}  "
                   f"{count(n)}")
    click.echo(f"  sigma fit: {pct(db.sigma_fit_intercept, 3)} "
               f"{pct(db.sigma_fit_slope * 100e-6, 4, signed=True)} per 100 uS of G; offset "
               f"N({pct(db.offset_mean_rel, 3, signed=True)}, {pct(db.offset_std_rel, 3)})")
    d = db.disturbance_delta
    click.echo(f"  disturbance: {count(d.size)} samples, keys {db.disturbance_keys.min()}-"
               f"{db.max_key}, mean {us(d.mean(), 2, signed=True)}, 1st percentile "
               f"{us(np.percentile(d, 1), 2, signed=True)}, min {us(d.min(), 2, signed=True)}, "
               f"max {us(d.max(), 2, signed=True)}")
    click.echo(f"  rule: {db.disturbance_rule}")
    click.echo(f"  stuck: HRS {pct(db.stuck_hrs_rate, 2)} ({count(db.stuck_hrs_samples.size)} "
               f"samples), LRS {pct(db.stuck_lrs_rate, 2)} ({count(db.stuck_lrs_samples.size)} "
               "samples)")
    for name, v in (("SET", db.iv_set_volts), ("RESET", db.iv_reset_volts)):
        if v.size:
            click.echo(f"  I-V {name} voltage: median {volts(np.median(v), 3, signed=True)}, "
                       f"5-95 % {volts(np.percentile(v, 5), 3, signed=True)} to "
                       f"{volts(np.percentile(v, 95), 3, signed=True)}, {count(v.size)} cycles")
    if not (db.iv_set_volts.size or db.iv_reset_volts.size):
        click.echo("  I-V thresholds: none (no DC I-V run among the inputs)")
    if db.retention is not None:
        r = db.retention
        click.echo(f"  retention: {r.time.size} cells (level x time since programming)")
        click.echo("          level  time since programming  drift mean      std  "
                   "drifting up  devices")
        for lv, t, m, sd, up, n in zip(r.level, r.time, r.mean_rel, r.std_rel, r.up_fraction,
                                       r.counts, strict=True):
            click.echo(f"    {us(lv):>11}  {duration(t):>22}  {pct(m, 3, signed=True):>10}  "
                       f"{pct(sd, 3):>7}  {pct(up):>11}  {count(int(n)):>7}")
        click.echo(f"  retention rule: {r.rule}")
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
        next_steps(f"`xbarlab db plot {out}` (its figures)",
                   f"`xbarlab train --db {out} --out net.pt` (a network trained on it)")

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
