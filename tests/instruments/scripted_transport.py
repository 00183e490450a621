"""A recording, scripted stand-in for a pyvisa message resource (message-exact driver tests).

Like pymeasure's expected_protocol: the test lists (sent, reply) pairs in order, without
terminators; a reply of None means the instrument says nothing. A read with nothing queued times
out like pyvisa does; a message the script does not expect (another one, or one more after the
script ended) fails the test.
"""

from __future__ import annotations

import pyvisa
from pyvisa import constants


class Scripted:
    def __init__(self, script=()):
        self.script = list(script)
        self.sent: list[str] = []
        self._replies: list[str] = []
        self.timeout = 2000
        self.read_termination = None
        self.write_termination = None
        self.closed = False

    def write(self, message: str) -> None:
        assert not self.closed, "write after close"
        self.sent.append(message)
        assert self.script, f"sent {message!r} after the script ended"
        expected, reply = self.script.pop(0)
        assert message == expected, f"sent {message!r}, script expected {expected!r}"
        if reply is not None:
            self._replies.append(reply)

    def read(self) -> str:
        if not self._replies:
            raise pyvisa.errors.VisaIOError(constants.StatusCode.error_timeout)
        return self._replies.pop(0)

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def close(self) -> None:
        self.closed = True

    def done(self) -> bool:
        return not self.script and not self._replies
