"""The error types the CLI turns into one line on stderr and exit code 2."""

from __future__ import annotations

from database.errors import DatabaseError
from instruments.errors import InstrumentError
from protocols.errors import ProtocolError


class XbarlabError(Exception):
    """Front-door errors: bad station file, bad argument, missing optional dependency."""


class StationError(XbarlabError):
    """A station file is missing, malformed or inconsistent."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every exception type that means 'the user or the instrument did something we can name'."""
    errs: list[type[BaseException]] = [XbarlabError, InstrumentError, ProtocolError, DatabaseError]
    try:  # simulator and training add their own, if present
        from simulator.errors import SimulatorError

        errs.append(SimulatorError)
    except ImportError:
        pass
    try:
        from training.errors import TrainingError

        errs.append(TrainingError)
    except ImportError:
        pass
    return tuple(errs)
