"""`xbarlab db import-reference`: write the published non-ideality model as an HDF5 file."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    db = cli.commands["db"]

    @db.command("import-reference")
    @click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False),
                  help="Non-ideality database to write (.h5).")
    @click.option("--force", is_flag=True, help="Overwrite an existing file.")
    def import_reference_cmd(out: str, force: bool) -> None:
        """Non-ideality DB from the data published with Drolet et al. 2023 (shipped offline)."""
        from database.nonideality import save_nonideality
        from database.reference import import_reference

        db_ = import_reference()
        path = save_nonideality(db_, out, overwrite=force)
        n_keys = len(set(db_.disturbance_keys.tolist()))
        click.echo(f"wrote {path}: {db_.disturbance_delta.size} disturbance samples over "
                   f"{n_keys} keys (k = devices programmed after), stuck HRS/LRS "
                   f"{db_.stuck_hrs_rate:.1%}/{db_.stuck_lrs_rate:.1%}, "
                   f"G in [{db_.g_min * 1e6:.0f}, {db_.g_max * 1e6:.0f}] uS")
