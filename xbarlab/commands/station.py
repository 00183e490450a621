"""`xbarlab station list|check`: the shipped stations; open a station's instruments and report
what was found."""

from __future__ import annotations

import click

from xbarlab.commands import next_steps


def describe_shipped() -> list[tuple[str, str]]:
    """(name, one-line description) of every shipped station: what its file's first comment
    calls it, its rig and its crossbar shape."""
    import yaml

    from xbarlab.station.station import SHIPPED_STATIONS

    out = []
    for p in sorted(SHIPPED_STATIONS.glob("*.yaml")):
        text = p.read_text()
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        what = first.lstrip("#").strip().split(": ")[0] if first.startswith("#") else ""
        raw = yaml.safe_load(text) or {}
        shape = "x".join(str(n) for n in raw.get("shape", []))
        out.append((p.stem, f"{what}; rig {raw.get('rig', '?')}, {shape} devices"))
    return out


def register(cli: click.Group) -> None:
    group = cli.commands["station"]

    @group.command("list")
    def list_cmd() -> None:
        """The stations shipped with xbarlab (usable by name: --station sim-pmu)."""
        rows = describe_shipped()
        width = max(len(n) for n, _ in rows)
        for name, desc in rows:
            click.echo(f"{name:<{width}}  {desc}")
        next_steps("`xbarlab station check sim-pmu` (open its instruments)",
                   "`xbarlab run --help` (the campaigns)")

    @group.command("check")
    @click.argument("station")
    def check(station: str) -> None:
        """Open the station's instruments and print identities, modules, the 707B card,
        limits and the crossbar shape."""
        from xbarlab.station import load_station

        click.echo("\n".join(load_station(station).check()))
        next_steps(f"`xbarlab run CAMPAIGN --station {station} -o FILE.h5` "
                   "(`xbarlab run --help` lists the campaigns)")
