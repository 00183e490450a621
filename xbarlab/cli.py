"""The `xbarlab` command line. Sub-commands live in `xbarlab/commands/*.py`.

Every module listed in COMMAND_MODULES exposes ``register(cli: click.Group)``. Errors that a user
can act on (instrument, protocol, database, station, training, a bad argument) are caught here
once, printed as one line, and exit with code 2; Ctrl-C exits with 130 (see `main`).
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
    """Run one command and exit with its code: 0, 2 (an error the user can act on, one line)
    or 130 (Ctrl-C).

    A Ctrl-C is recorded the moment it arrives (`protocols.interrupts`), so one that Python
    swallowed inside a finaliser still stops the work at the next rig call or device and still
    ends here with 130. The message says what the rigs' last safe state actually reached.
    """
    from protocols import interrupts
    from protocols.rig import recording_safe_states

    with interrupts.sigint_handler(), recording_safe_states() as rigs:
        code = _command(argv, rigs)
    # CPython remembers a KeyboardInterrupt that escaped source text run by exec/eval (dataclass
    # and namedtuple creation do that), even one handled since, and then ends the process by
    # SIGINT instead of with `code`; evaluating source text clears that memory.
    eval("None")
    sys.exit(code)


def _command(argv: list[str] | None, rigs) -> int:
    from protocols import interrupts
    from xbarlab.errors import user_errors

    error = ""
    try:
        try:
            rv = cli.main(args=argv, prog_name="xbarlab", standalone_mode=False)
            code = rv if isinstance(rv, int) else 0  # --help / --version exit through here
        finally:
            interrupts.hold()  # the command is over: a later Ctrl-C only waits for the report
    except (click.exceptions.Abort, KeyboardInterrupt):
        code = 130  # click turns Ctrl-C into Abort
    except click.ClickException as e:
        code, error = 2, e.format_message()
        if getattr(e, "ctx", None) is not None:
            error += f" (see '{e.ctx.command_path} --help')"
    except user_errors() as e:
        code, error = 2, str(e)
    except SystemExit as e:  # a command's own exit code (e.g. `tune` that did not converge)
        code = e.code if isinstance(e.code, int) else 1
    except Exception:
        # a Ctrl-C can surface as another error (inside an extension module's import it
        # becomes "ImportError: initialization failed"): after one, that error is its doing
        if not interrupts.received():
            raise
        code = 130
    interrupts.hold()
    if interrupts.received():
        code = 130
    safe, state = _safe_state_reached(rigs)
    if code == 130:
        click.echo(f"interrupted: {state}", err=True)
        return code
    if not safe:
        click.echo(f"warning: {state}", err=True)
    if error:
        # one line whatever the message holds (a library error text may span several)
        click.echo("error: " + " ".join(error.split()), err=True)
    return code


def _safe_state_reached(rigs) -> tuple[bool, str]:
    """(all confirmed, what to say) from the last safe state of every rig the command built."""
    used = [r for r in rigs if r.state != "unused"]
    bad = [r for r in used if r.state != "safe"]
    if bad:
        return False, ("instruments NOT confirmed safe: " + "; ".join(r.describe() for r in bad)
                       + "; check them before touching the probes")
    if used:
        return True, "instruments left in their safe state"
    return True, "no instrument was used"
