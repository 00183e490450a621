"""Keithley 707B switching matrix over TSP (instruments.md §5).

A selection is ONE `channel.exclusiveclose(...)` holding every closure, sent in the same TSP
chunk as `waitcomplete()` and the error-queue count, so a reselection costs one round trip and
an error is seen at once. The last selection is cached: re-selecting the same set sends nothing;
the cache is dropped whenever a command fails or the relays are opened, and a new session starts
without one. Card slots are objects, `k.slot(n)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from instruments.errors import InstrumentError
from instruments.visa import MessageInstrument

_CHANNEL = re.compile(r"^([1-6])([A-Ha-h])(\d\d)$")


def channel_name(slot: int, row: str, column: int) -> str:
    """`1A01`-style name; raises ValueError outside 6 slots x rows A-H x columns 01-12."""
    name = f"{int(slot)}{row.upper()}{int(column):02d}"
    check_channel(name)
    return name


def check_channel(name: str) -> str:
    m = _CHANNEL.match(name)
    if not m or not 1 <= int(m.group(3)) <= 12:
        raise ValueError(f"not a 707B channel name: {name!r} (expected e.g. 1A01, slot 1-6, "
                         "row A-H, column 01-12)")
    return name.upper()


def sort_key(name: str) -> tuple[int, str, int]:
    return int(name[0]), name[1], int(name[2:])


class Slot:
    """Card slot `number` (1-6) of a 707B."""

    def __init__(self, k: K707B, number: int):
        if not 1 <= number <= 6:
            raise ValueError(f"a 707B has slots 1-6, not {number!r}")
        self.k, self.number = k, int(number)

    def idn(self) -> str:
        """The card's identity as the instrument reports it (`slot[n].idn`)."""
        return self.k.query(f"print(slot[{self.number}].idn)")

    def channel(self, row: str, column: int) -> str:
        """The channel name of crosspoint (row letter, column) on this card."""
        return channel_name(self.number, row, column)


class K707B(MessageInstrument):
    kind = "K707B"
    read_termination = "\n"
    write_termination = "\n"

    def __init__(self, resource, **kw):
        super().__init__(resource, **kw)
        self._selected: frozenset[str] | None = None  # unknown until we set it
        self._listings: dict[tuple[str, ...], tuple[frozenset[str], str]] = {}

    def idn(self) -> str:
        return self.query("*IDN?")

    def slot(self, number: int) -> Slot:
        return Slot(self, number)

    def forget(self) -> None:
        """Treat the closed set as unknown: the next `exclusive_close` is sent in any case."""
        self._selected = None

    def snapshot(self, slots=()) -> dict:
        return {"kind": self.kind, "name": self.name, "idn": self.idn(),
                "cards": {str(n): self.slot(n).idn() for n in sorted(set(slots))},
                "closed": self.closed_channels()}

    def reset(self) -> None:
        self._tsp("reset() errorqueue.clear()", check=False)
        self._selected = frozenset()

    # -- switching -----------------------------------------------------------------------------
    def exclusive_close(self, channels: Iterable[str]) -> bool:
        """Close exactly `channels`, open everything else. Returns False if nothing was sent
        because that selection is already closed."""
        key = tuple(channels)
        hit = self._listings.get(key)
        if hit is None:  # a rig alternates between a few selections: check and sort each once
            names = frozenset(check_channel(c) for c in key)
            hit = (names, ",".join(sorted(names, key=sort_key)))
            if len(self._listings) >= 1024:
                self._listings.clear()
            self._listings[key] = hit
        names, listing = hit
        if names == self._selected:
            return False
        self._selected = None  # unknown if the command fails half-way
        self._tsp(f'channel.exclusiveclose("{listing}")')
        self._selected = names
        return True

    def close_channels(self, channels: Iterable[str]) -> None:
        """channel.close: ADDS closures."""
        names = sorted({check_channel(c) for c in channels}, key=sort_key)
        self._selected = None
        self._tsp(f'channel.close("{",".join(names)}")')

    def open_all(self) -> None:
        self._selected = None
        self._tsp('channel.open("allslots")')
        self._selected = frozenset()

    def closed_channels(self) -> list[str]:
        reply = self.query('print(channel.getclose("allslots"))')
        if reply == "nil" or reply == "":
            return []
        return reply.split(";")

    # -- errors --------------------------------------------------------------------------------
    def _tsp(self, chunk: str, check: bool = True) -> None:
        """Run a TSP chunk; with `check`, the error count comes back in the same round trip."""
        if not check:
            self.write(chunk)
            return
        reply = self.query(f"{chunk} waitcomplete() print(errorqueue.count)")
        try:
            count = int(float(reply))
        except (ValueError, OverflowError):  # 'inf' is a float, not an int
            raise InstrumentError("unexpected reply", instrument=self.name, command=chunk,
                                  reply=reply) from None
        if count:
            self._raise_queue(chunk, count)

    def error_count(self) -> int:
        reply = self.query("print(errorqueue.count)")
        try:
            return int(float(reply))
        except (ValueError, OverflowError):  # 'inf' is a float, not an int
            raise InstrumentError("unexpected reply", instrument=self.name,
                                  command="print(errorqueue.count)", reply=reply) from None

    def next_error(self) -> tuple[int, str]:
        reply = self.query("print(errorqueue.next())")
        fields = reply.split("\t")
        try:
            return int(float(fields[0])), (fields[1] if len(fields) > 1 else "")
        except (ValueError, OverflowError):  # 'inf' is a float, not an int
            raise InstrumentError("unexpected reply", instrument=self.name,
                                  command="print(errorqueue.next())", reply=reply) from None

    def check_errors(self, command: str = "") -> None:
        n = self.error_count()
        if n:
            self._raise_queue(command, n)

    def _raise_queue(self, command: str, count: int) -> None:
        self.forget()  # a failed chunk: what is closed now is unknown
        if count < 0:  # a corrupted count must not end as an IndexError
            raise InstrumentError("impossible error count", instrument=self.name,
                                  command=command, reply=str(count))
        errs = [self.next_error() for _ in range(min(count, 10))]
        code, text = errs[0]
        more = f" (+{count - 1} more)" if count > 1 else ""
        raise InstrumentError(f"707B error {code}: {text}{more}", instrument=self.name,
                              command=command, reply=f"{code}\t{text}")

    def make_safe(self) -> None:
        """Open every relay and confirm it from the instrument's own closed list.

        The confirmation rides in the same round trip; a lost or ignored open is retried once and
        then reported, because "relays open" must never be assumed.
        """
        self._selected = None
        cmd = 'channel.open("allslots") waitcomplete() print(channel.getclose("allslots"))'
        reply = ""
        for _ in range(2):
            reply = self.query(cmd)
            if reply in ("nil", ""):
                self._selected = frozenset()
                return
        raise InstrumentError("relays not confirmed open after two tries", instrument=self.name,
                              command=cmd, reply=reply)
