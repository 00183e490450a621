"""Exceptions of the simulator package. The CLI catches `SimulatorError` once (xbarlab/errors.py)."""

from __future__ import annotations


class SimulatorError(Exception):
    """The simulated crossbar was asked something it cannot do (bad bias, bad state file, ...)."""
