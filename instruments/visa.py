"""A thin base for message-based drivers over pyvisa.

It owns the terminators, turns pyvisa failures into `InstrumentError` / `InstrumentTimeout`
naming the instrument and the command, and gives every driver the same safe shutdown:
`close()`, the context manager and Ctrl-C (KeyboardInterrupt is a BaseException, so `__exit__`
sees it) all call `make_safe()` before the session is released.

The transport is any object with pyvisa's message-resource interface (`write`, `read`, `query`,
`close`, `timeout`, `read_termination`, `write_termination`): a real pyvisa resource, one from
the simulator's VISA library, one from pyvisa-sim, or a scripted fake in tests.
"""

from __future__ import annotations

from typing import Any

from instruments.errors import InstrumentError, InstrumentTimeout
from instruments.limits import SafetyLimits

try:  # pyvisa is a hard dependency, but keep the import local to the error mapping
    from pyvisa import constants as _vconst
    from pyvisa.errors import VisaIOError as _VisaIOError
except ImportError:  # pragma: no cover
    _VisaIOError = OSError  # type: ignore[assignment,misc]
    _vconst = None  # type: ignore[assignment]


def fmt(x: float) -> str:
    """Numbers as sent to instruments: shortest form with 6 significant digits (0.333333, 1e-05)."""
    return format(float(x), ".6g")


class MessageInstrument:
    """Base of the B1500, K4200 and K707B drivers."""

    #: name used in error messages (overridden per driver, or by the station)
    kind = "instrument"
    read_termination = "\n"
    write_termination = "\n"

    def __init__(self, resource: Any, *, name: str | None = None,
                 limits: SafetyLimits | None = None, timeout: float = 5.0):
        self.name = name or self.kind
        self.limits = limits or SafetyLimits()
        self._res = resource
        self._closed = False
        resource.read_termination = self.read_termination
        resource.write_termination = self.write_termination
        self.timeout = timeout
        #: commands sent and queries made since creation (round trips = writes + queries)
        self.writes = 0
        self.queries = 0

    @classmethod
    def open(cls, resource_manager: Any, resource_name: str, **kw: Any):
        """Open `resource_name` through a pyvisa ResourceManager and wrap it."""
        try:
            res = resource_manager.open_resource(resource_name)
        except Exception as e:  # pyvisa raises several types here
            raise InstrumentError(f"cannot open {resource_name}: {e}",
                                  instrument=kw.get("name") or cls.kind) from e
        return cls(res, **kw)

    # -- transport ---------------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        self._timeout = float(seconds)
        self._res.timeout = int(seconds * 1000)  # pyvisa counts milliseconds

    def _fail(self, e: Exception, command: str) -> InstrumentError:
        if self._closed:
            return InstrumentError("session already closed", instrument=self.name,
                                   command=command)
        is_timeout = (_vconst is not None and isinstance(e, _VisaIOError)
                      and getattr(e, "error_code", None) == _vconst.StatusCode.error_timeout)
        if is_timeout:
            return InstrumentTimeout(f"no reply within {self._timeout:g} s",
                                     instrument=self.name, command=command)
        return InstrumentError(f"communication failed: {e}", instrument=self.name,
                               command=command)

    def write(self, command: str) -> None:
        if self._closed:
            raise self._fail(RuntimeError("closed"), command)
        self.check_outgoing(command)
        try:
            self._res.write(command)
        except (_VisaIOError, OSError, ValueError) as e:
            raise self._fail(e, command) from e
        self.writes += 1

    def query(self, command: str) -> str:
        if self._closed:
            raise self._fail(RuntimeError("closed"), command)
        self.check_outgoing(command)
        try:
            reply = self._res.query(command)
        except (_VisaIOError, OSError, ValueError) as e:
            raise self._fail(e, command) from e
        self.queries += 1
        return reply.strip()

    @property
    def round_trips(self) -> int:
        return self.writes + self.queries

    # -- errors and safety (drivers override) --------------------------------------------------
    def check_outgoing(self, command: str) -> None:
        """Last guard before bytes leave: drivers parse the level-setting commands of their
        instrument in `command` (raw `write`/`query` included) and raise SafetyLimitError for a
        level outside the station limits. The default checks nothing (no outputs)."""

    def check_errors(self, command: str = "") -> None:
        """Read the instrument's error queue; raise InstrumentError naming `command` if not empty."""

    def make_safe(self) -> None:
        """Outputs to 0 V / off, relays open. Must not raise for an instrument already safe."""

    def close(self) -> None:
        """Leave the instrument safe, then release the session. Safe to call twice."""
        if self._closed:
            return
        try:
            self.make_safe()
        finally:
            self._closed = True
            try:
                self._res.close()
            except Exception:  # a dropped connection must not hide the original error
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
            return
        try:  # keep the original exception; the instrument may be what failed
            self.close()
        except Exception:
            pass
