"""`xbarlab station check STATION.yaml`: open the instruments and report what was found."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    group = cli.commands["station"]

    @group.command("check")
    @click.argument("station")
    def check(station: str) -> None:
        """Open the station's instruments and print identities, modules, the 707B card,
        limits and the crossbar shape."""
        from xbarlab.station import load_station

        click.echo("\n".join(load_station(station).check()))
