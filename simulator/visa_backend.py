"""A pyvisa library serving emulated instruments over one shared lab world.

    lib = EmulatedVisaLibrary({"GPIB0::17::INSTR": B1500Emulator(world), ...})
    rm = pyvisa.ResourceManager(lib)           # pyvisa accepts the instance directly
    res = rm.open_resource("GPIB0::17::INSTR")

Each emulator has `handle(message) -> reply | None` and terminators `(read, write)`. Input is
buffered until the instrument's write terminator arrives (a wrong terminator therefore times out
like on the bench); a message without a reply leaves nothing to read, so a read times out.

Fault injection (for reliability tests): `lib.faults.add(kind, resource=None, match=None,
count=1, rate=None)` arms a fault on the next message(s) to `resource` whose text contains
`match`. `count` one-shots (default 1); `rate` (0..1) makes it random and persistent, drawn
from `lib.faults.rng` (seeded). Kinds:

- ``timeout``      the reply is dropped (the read times out); the command still runs
- ``no_execute``   the message is lost entirely (not run, no reply)
- ``truncated``    the reply is cut in half
- ``garbled``      the reply's characters are scrambled
- ``wrong_reply``  the reply of the previous query is returned again (stale buffer)
- ``error``        the instrument also pushes an error (B1500/707B queue; 4200 refuses with
                   an error text instead of ACK)
- ``disconnect``   the connection drops: this and every later I/O raises VI_ERROR_CONN_LOST
- ``relay_stuck``  (707B) the channels named in `match` never close physically, although the
                   instrument reports them closed
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pyvisa import constants, highlevel, rname
from pyvisa import errors as pyvisa_errors
from pyvisa.errors import VisaIOError
from pyvisa.util import LibraryPath

StatusCode = constants.StatusCode

TERMINATORS = {"B1500Emulator": ("\r\n", "\r\n"), "K4200Emulator": ("\0", "\0"),
               "K707BEmulator": ("\n", "\n")}


@dataclass
class Fault:
    kind: str
    resource: str | None = None
    match: str | None = None
    count: int = 1
    rate: float | None = None


@dataclass
class Faults:
    armed: list[Fault] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    fired: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, resource, message)

    KINDS = ("timeout", "no_execute", "truncated", "garbled", "wrong_reply", "error",
             "disconnect", "relay_stuck")

    def add(self, kind: str, resource: str | None = None, match: str | None = None,
            count: int = 1, rate: float | None = None) -> Fault:
        if kind not in self.KINDS:
            raise ValueError(f"unknown fault {kind!r}; choose one of {self.KINDS}")
        f = Fault(kind, resource, match, count, rate)
        self.armed.append(f)
        return f

    def clear(self) -> None:
        self.armed.clear()

    def take(self, resource: str, message: str) -> list[str]:
        kinds = []
        for f in list(self.armed):
            if f.resource not in (None, resource) or (f.match and f.match not in message):
                continue
            if f.rate is not None:
                if self.rng.random() < f.rate:
                    kinds.append(f.kind)
                continue
            kinds.append(f.kind)
            f.count -= 1
            if f.count <= 0:
                self.armed.remove(f)
        for k in kinds:
            self.fired.append((k, resource, message))
        return kinds


class _Session:
    def __init__(self, name: str, emulator: Any):
        self.name = name
        self.emulator = emulator
        self.read_term, self.write_term = TERMINATORS.get(type(emulator).__name__, ("\n", "\n"))
        self.inbuf = ""
        self.out = b""
        self.last_reply = ""
        self.attrs: dict[Any, Any] = {}


class EmulatedVisaLibrary(highlevel.VisaLibraryBase):
    """pyvisa backend whose resources are emulated instruments (see module docstring)."""

    @staticmethod
    def get_library_paths():
        return (LibraryPath("unset"),)

    @staticmethod
    def get_debug_info():
        return {"backend": "xbarlab emulated instruments"}

    def __new__(cls, instruments: dict[str, Any] | None = None):
        # VisaLibraryBase caches instances per library path; every lab world needs its own.
        obj = object.__new__(cls)
        obj.library_path = LibraryPath("unset")
        obj._logging_extra = {"library_path": obj.library_path}
        obj._init()
        obj.issue_warning_on = set(pyvisa_errors.default_warnings)
        obj._last_status_in_session = {}
        obj._ignore_warning_in_session = defaultdict(set)
        obj.handlers = defaultdict(list)
        obj.resource_manager = None
        return obj

    def __init__(self, instruments: dict[str, Any] | None = None):
        self.instruments: dict[str, Any] = dict(instruments or {})
        self.faults = Faults()
        self.dead: set[str] = set()

    def _init(self) -> None:
        self.sessions: dict[int, Any] = {}
        self._next = 1000

    def add(self, resource_name: str, emulator: Any) -> None:
        self.instruments[resource_name] = emulator

    def _register(self, obj) -> int:
        self._next += 1
        self.sessions[self._next] = obj
        return self._next

    # -- resource manager ------------------------------------------------------------------------
    def open_default_resource_manager(self):
        return self._register(self), StatusCode.success

    def list_resources(self, session, query="?*"):
        found = rname.filter(tuple(self.instruments), query)
        if not found:
            raise VisaIOError(StatusCode.error_resource_not_found.value)
        return found

    def open(self, session, resource_name, access_mode=constants.AccessModes.no_lock,
             open_timeout=constants.VI_TMO_IMMEDIATE):
        try:
            rname.parse_resource_name(resource_name)
        except rname.InvalidResourceName:
            raise VisaIOError(StatusCode.error_invalid_resource_name.value) from None
        emu = self.instruments.get(resource_name)
        if emu is None:
            raise VisaIOError(StatusCode.error_resource_not_found.value)
        return self._register(_Session(resource_name, emu)), StatusCode.success

    def close(self, session):
        if self.sessions.pop(session, None) is None:
            return StatusCode.error_invalid_object
        return StatusCode.success

    def get_attribute(self, session, attribute):
        s = self.sessions.get(session)
        if s is None:
            return 0, StatusCode.error_invalid_object
        if isinstance(s, _Session):
            if attribute == constants.ResourceAttribute.resource_name:
                return s.name, StatusCode.success
            return s.attrs.get(attribute, 0), StatusCode.success
        return 0, StatusCode.success

    def set_attribute(self, session, attribute, attribute_state):
        s = self.sessions.get(session)
        if s is None:
            return StatusCode.error_invalid_object
        if isinstance(s, _Session):
            s.attrs[attribute] = attribute_state
        return StatusCode.success

    def disable_event(self, session, event_type, mechanism):
        return StatusCode.success

    def discard_events(self, session, event_type, mechanism):
        return StatusCode.success

    def clear(self, session):
        s = self.sessions.get(session)
        if isinstance(s, _Session):
            s.inbuf, s.out = "", b""
        return StatusCode.success

    # -- message I/O -----------------------------------------------------------------------------
    def write(self, session, data: bytes):
        s = self.sessions.get(session)
        if not isinstance(s, _Session):
            return 0, StatusCode.error_invalid_object
        if s.name in self.dead:
            raise VisaIOError(StatusCode.error_connection_lost.value)
        text = data.decode("latin-1")
        term = s.write_term
        if not s.inbuf and text.endswith(term) and text.find(term) == len(text) - len(term):
            # the usual case: exactly one whole message
            self._message(s, text[:-len(term)])
            return len(data), StatusCode.success
        s.inbuf += text
        while True:
            msg, sep, rest = s.inbuf.partition(s.write_term)
            if not sep:
                break
            s.inbuf = rest
            self._message(s, msg)
        return len(data), StatusCode.success

    def _message(self, s: _Session, msg: str) -> None:
        kinds = self.faults.take(s.name, msg) if self.faults.armed else ()
        if "disconnect" in kinds:
            self.dead.add(s.name)
            raise VisaIOError(StatusCode.error_connection_lost.value)
        emu = s.emulator
        world = getattr(emu, "world", None)
        if world is not None:
            # every message is one exchange on the bus or socket (a KXCI setter waits for its
            # ACK, a TSP chunk or FLEX query for its reply), whatever becomes of it
            world.clock.advance(world.latency.gpib_cmd, "command")
        if "no_execute" in kinds:
            return
        if "relay_stuck" in kinds and hasattr(emu, "stuck"):
            import re
            emu.stuck |= set(re.findall(r"[1-6][A-H]\d\d", msg))
            if emu.world is not None:
                emu.world.routing_changed()
        if "error" in kinds:
            reply = self._inject_error(emu, msg)
        else:
            reply = emu.handle(msg)
        if reply is None:
            return
        if "timeout" in kinds:
            return
        if "truncated" in kinds:
            reply = reply[: len(reply) // 2]
        if "garbled" in kinds:
            chars = list(reply)
            self.faults.rng.shuffle(chars)
            reply = "".join(chars)
        if "wrong_reply" in kinds:
            reply, s.last_reply = s.last_reply, reply
        else:
            s.last_reply = reply
        s.out += (reply + s.read_term).encode("latin-1")

    @staticmethod
    def _inject_error(emu: Any, msg: str) -> str | None:
        name = type(emu).__name__
        if name == "K4200Emulator":
            emu.last_error = (-990, "Injected fault")
            return "Injected fault (-990)"
        emu.errors.append((999, "Injected fault"))
        return emu.handle(msg)

    def read(self, session, count: int):
        s = self.sessions.get(session)
        if not isinstance(s, _Session):
            return b"", StatusCode.error_invalid_object
        if s.name in self.dead:
            raise VisaIOError(StatusCode.error_connection_lost.value)
        if not s.out:
            raise VisaIOError(StatusCode.error_timeout.value)
        chunk, s.out = s.out[:count], s.out[count:]
        if s.out:
            return chunk, StatusCode.success_max_count_read
        return chunk, StatusCode.success_termination_character_read
