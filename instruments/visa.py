"""A thin base for message-based drivers over pyvisa.

It owns the terminators, turns pyvisa failures into `InstrumentError` / `InstrumentTimeout`
naming the instrument and the command, and gives every driver the same safe shutdown:
`close()`, the context manager and Ctrl-C (KeyboardInterrupt is a BaseException, so `__exit__`
sees it) all call `make_safe()` before the session is released.

No cached setting outlives doubt: a driver that skips re-sending what it last sent drops all of
it (`forget()`) whenever a command fails (timeout, lost connection, a refused command: the
instrument's state is then unknown), when it is made safe, and a new session starts with
nothing cached. `snapshot()` says what the instrument reports about itself (identity, options,
modules, settings it can be asked for), for the run files.

The transport is any object with pyvisa's message-resource interface (`write`, `read`, `query`,
`close`, `timeout`, `read_termination`, `write_termination`): a real pyvisa resource, one from
the simulator's VISA library, one from pyvisa-sim, or a scripted fake in tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from instruments.errors import InstrumentError, InstrumentTimeout, SafetyLimitError
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


#: a number as the raw-command guard accepts it: plain decimal or exponent form. No "nan",
#: "inf", units or other forms the guard would have to guess how the instrument reads.
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
#: the command name at the start of a message part: `DV` of `DV1,0,...`, `:PMU:LOAD`, `*IDN?`
_HEAD = re.compile(r"[:*A-Z?]+")

#: check of the levels a known command sets (raises SafetyLimitError), or None: sets none
LevelCheck = Callable[[SafetyLimits, "re.Match[str]"], None] | None


def allow_list(rules: dict[str, tuple[str, LevelCheck]],
               flags: int = 0) -> dict[str, tuple[re.Pattern[str], LevelCheck]]:
    """{command name: (pattern the whole command must match, its level check)}."""
    return {head: (re.compile(pattern, flags), check) for head, (pattern, check) in rules.items()}


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
            self.forget()
            raise self._fail(e, command) from e
        self.writes += 1

    def query(self, command: str) -> str:
        if self._closed:
            raise self._fail(RuntimeError("closed"), command)
        self.check_outgoing(command)
        try:
            reply = self._res.query(command)
        except (_VisaIOError, OSError, ValueError) as e:
            self.forget()
            raise self._fail(e, command) from e
        self.queries += 1
        return reply.strip()

    @property
    def round_trips(self) -> int:
        return self.writes + self.queries

    # -- errors and safety (drivers override) --------------------------------------------------
    #: the raw-command allow-list of instruments with outputs (see `check_outgoing`); empty:
    #: the instrument drives no level (the 707B) and nothing is checked
    RAW_COMMANDS: dict[str, tuple[re.Pattern[str], LevelCheck]] = {}
    #: FLEX headers are case-insensitive; KXCI refuses lower case (so the guard does too)
    RAW_CASE_SENSITIVE = True

    def check_outgoing(self, command: str) -> None:
        """Last guard before bytes leave, on every message (raw `write`/`query` included).

        An allow-list: each `;`-separated command must be one the guard knows (`RAW_COMMANDS`),
        in full; a command that sets a level has its levels checked against the station
        limits. Anything else is refused with SafetyLimitError naming it: an unknown command
        may set a level in a way the guard cannot read."""
        if not self.RAW_COMMANDS:
            return
        for part in command.split(";"):
            part = part.strip()
            if not part:
                continue
            text = part if self.RAW_CASE_SENSITIVE else part.upper()
            head = _HEAD.match(text)
            rule = self.RAW_COMMANDS.get(head.group(0)) if head else None
            m = rule[0].fullmatch(text) if rule else None
            if m is None:
                raise SafetyLimitError(f"refused raw command {part!r}: not one the {self.kind} "
                                       "guard knows (it could set an output level unchecked)",
                                       instrument=self.name, command=command)
            if rule[1] is not None:
                try:
                    rule[1](self.limits, m)
                except SafetyLimitError as e:
                    raise SafetyLimitError(str(e), instrument=self.name,
                                           command=command) from None

    def check_errors(self, command: str = "") -> None:
        """Read the instrument's error queue; raise InstrumentError naming `command` if not empty."""

    def make_safe(self) -> None:
        """Outputs to 0 V / off, relays open. Must not raise for an instrument already safe."""

    def forget(self) -> None:
        """Drop every setting the driver remembers having sent: the next use sends it again."""

    def snapshot(self) -> dict:
        """What the instrument says about itself (queried now), as a JSON-able dict."""
        return {"kind": self.kind, "name": self.name}

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
