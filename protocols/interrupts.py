"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives. Inside a
finaliser (`__del__`, a weakref callback, the garbage collector) it cannot propagate: Python
prints "Exception ignored in ..." and the work goes on as if nothing had happened. So a command
runs under `sigint_handler()`: its handler *records* the interrupt before raising it, and
`check()`, called where all long work passes (every public rig method, every unit of a
campaign), raises it again if it was lost. The CLI ends with exit 130 whenever one was recorded.

`deferred()` marks code that must finish once started (making the instruments safe): a Ctrl-C
arriving inside it is recorded, not raised, and the next `check()` (or the CLI) acts on it.
`hold()` does the same for the rest of the command once its work is over (the CLI reporting).

Everything here runs in the main thread, where Python runs signal handlers.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _State:
    received = 0      # SIGINTs since the handler was installed
    deferring = 0     # depth of deferred() blocks
    held = False      # the command is over (hold()): only record


_state = _State()


def _handler(signum, frame) -> None:
    _state.received += 1
    if not (_state.deferring or _state.held):
        raise KeyboardInterrupt


def _unraisable(hook):
    # An interrupt raised inside a finaliser is recorded and raised again by check(): the
    # multi-line "Exception ignored" report would only hide the one-line message.
    def report(u) -> None:
        if not isinstance(u.exc_value, KeyboardInterrupt):
            hook(u)
    return report


@contextmanager
def sigint_handler() -> Iterator[None]:
    """Record every Ctrl-C while the block runs (outside the main thread: does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(hook)
    saved = (_state.received, _state.deferring, _state.held)
    _state.received, _state.deferring, _state.held = 0, 0, False
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook
        _state.received, _state.deferring, _state.held = saved


def received() -> bool:
    """Whether a Ctrl-C arrived since the handler was installed."""
    return _state.received > 0


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C was recorded (and may have been lost)."""
    if _state.received and not (_state.deferring or _state.held):
        raise KeyboardInterrupt


def hold() -> None:
    """The work is over (the CLI reports): from now on a Ctrl-C is only recorded."""
    _state.held = True


@contextmanager
def deferred() -> Iterator[None]:
    """Let the block finish: a Ctrl-C inside it is recorded, not raised."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
