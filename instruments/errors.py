"""Exceptions raised by drivers and rigs. The CLI catches `InstrumentError` once."""

from __future__ import annotations


class InstrumentError(Exception):
    """An instrument failed, refused a command or answered something unexpected.

    The message names the instrument, the command and the reply so a lab user can act on it.
    """

    def __init__(self, message: str, *, instrument: str = "", command: str = "", reply: str = ""):
        self.instrument = instrument
        self.command = command
        self.reply = reply
        parts = [message]
        if instrument:
            parts.append(f"instrument={instrument}")
        if command:
            parts.append(f"command={command!r}")
        if reply:
            parts.append(f"reply={reply!r}")
        super().__init__(parts[0] if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})")


class InstrumentTimeout(InstrumentError):
    """No reply arrived within the instrument's timeout."""


class SafetyLimitError(InstrumentError):
    """A requested voltage, width or compliance lies outside the station's safety limits.

    Raised before anything is sent to the instrument.
    """
