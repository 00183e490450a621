"""The `xbarlab` command line. Sub-commands live in `xbarlab/commands/*.py`.

Every module listed in COMMAND_MODULES exposes ``register(cli: click.Group)``. Errors that a user
can act on (instrument, protocol, database, station, training) are caught here once, printed as
one line, and exit with code 2.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from xbarlab import __version__

# Order is the order of `xbarlab --help`; a module that is absent is skipped.
COMMAND_MODULES = [
    "xbarlab.commands.sim",
    "xbarlab.commands.station",
    "xbarlab.commands.campaigns",
    "xbarlab.commands.db",
    "xbarlab.commands.db_reference",
    "xbarlab.commands.train",
    "xbarlab.commands.transfer",
    "xbarlab.commands.chip",
    "xbarlab.commands.view",
    "xbarlab.commands.demo",
    "xbarlab.commands.sweep",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xbarlab")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """xbarlab: characterise passive TiO2 ReRAM crossbars and train networks that survive
    ex-situ transfer onto them. Every command runs on a simulated station without hardware."""
    level = logging.WARNING - 10 * min(verbose, 2)
    # the console shows `level`; files opened by commands (campaign logs) may take more
    console = logging.StreamHandler()
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[console])


@cli.group("db")
def db_group() -> None:
    """Measurement files and the non-ideality database."""


@cli.group("run")
def run_group() -> None:
    """Characterisation campaigns (resumable; written to HDF5)."""


@cli.group("station")
def station_group() -> None:
    """Station files: check instruments, limits and wiring."""


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(cli)


_register_all()


def main(argv: list[str] | None = None) -> None:
    from xbarlab.errors import user_errors

    try:
        cli.main(args=argv, prog_name="xbarlab", standalone_mode=False)
    except click.exceptions.Abort:
        # click turns Ctrl-C into Abort: say what state the hardware is in, as below
        click.echo("interrupted: instruments left in their safe state", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except user_errors() as e:
        # one line whatever the message holds (a library error text may span several)
        click.echo("error: " + " ".join(str(e).split()), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: instruments left in their safe state", err=True)
        sys.exit(130)
