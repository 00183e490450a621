"""The CrossbarRig seam: everything a protocol may ask of hardware, in SI units.

Concrete rigs (`WgfmuRig`, `PmuRig`, the simulator's direct rig) implement the underscored
methods. The public methods here enforce the station's safety limits and bounds *before* a rig
sees a request, so no protocol can reach an instrument outside the envelope, whatever rig it
runs on. Any exception escaping a `with rig:` block leaves the rig in its safe state.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np

from instruments.errors import InstrumentError
from instruments.limits import SafetyLimits

log = logging.getLogger("xbarlab.rig")


@dataclass(frozen=True)
class ReadSettings:
    """How a verify read is taken."""

    volts: float = 0.2
    seconds: float = 10e-6
    #: conductance at which the current range saturates (100 uA at 0.2 V -> 500 uS);
    #: reads are clipped to it and the protocol flags them.
    ceiling_S: float = 500e-6


class CrossbarRig(abc.ABC):
    """Abstract rig addressing one crossbar (or a single crosspoint as a 1x1 crossbar).

    Coordinates are (row, col) = (word line, bit line), 0-based. Conductances in siemens,
    voltages in volts, times in seconds. `clock` is the instrument time spent so far (the real
    elapsed time on hardware, the virtual clock on a simulated station).
    """

    #: human-readable name for logs and HDF5 attributes
    name: str = "rig"

    def __init__(self, shape: tuple[int, int], limits: SafetyLimits | None = None,
                 read: ReadSettings | None = None):
        self._shape = (int(shape[0]), int(shape[1]))
        self.limits = limits or SafetyLimits()
        self.read_settings = read or ReadSettings()
        self.limits.check_bias(self.read_settings.volts, where=f"{self.name} read voltage")

    # -- public API (checked) ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    @abc.abstractmethod
    def clock(self) -> float:
        """Instrument time spent so far [s]."""

    def read(self, row: int, col: int) -> float:
        self._check_device(row, col)
        return float(self._read_repeated(row, col, 1)[0])

    def read_repeated(self, row: int, col: int, n: int) -> np.ndarray:
        """n reads in one instrument execution."""
        self._check_device(row, col)
        if n < 1:
            raise ValueError(f"read_repeated needs n >= 1, got {n}")
        return np.asarray(self._read_repeated(row, col, int(n)), dtype=float)

    def pulse(self, row: int, col: int, volts: float, seconds: float) -> None:
        """One write pulse on (row, col); the rig applies its bias scheme to every other line."""
        self._check_device(row, col)
        self.limits.check_pulse(volts, seconds, where=f"{self.name} ({row},{col})")
        self._pulse(row, col, float(volts), float(seconds))

    def pulse_and_read(self, row: int, col: int, volts: float, seconds: float,
                       n_reads: int = 1) -> np.ndarray | float:
        """A pulse followed by n verify reads in one execution; float when n_reads == 1."""
        self._check_device(row, col)
        self.limits.check_pulse(volts, seconds, where=f"{self.name} ({row},{col})")
        if n_reads < 1:
            raise ValueError(f"pulse_and_read needs n_reads >= 1, got {n_reads}")
        out = np.asarray(self._pulse_and_read(row, col, float(volts), float(seconds),
                                              int(n_reads)), dtype=float)
        return float(out[0]) if n_reads == 1 else out

    def read_array(self) -> np.ndarray:
        """Conductance map of the whole crossbar [S], shape == self.shape."""
        out = np.asarray(self._read_array(), dtype=float)
        if out.shape != self.shape:
            raise InstrumentError(f"{self.name}: read map has shape {out.shape}, expected {self.shape}")
        return out

    @abc.abstractmethod
    def safe_state(self) -> None:
        """All outputs 0 V, all relays open. Must not raise for an instrument already safe."""

    def close(self) -> None:
        """Leave everything safe and release the instruments."""
        self.safe_state()

    def __enter__(self) -> CrossbarRig:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                self.safe_state()
            finally:
                self.close()
        except Exception as e:
            if exc is None:
                raise
            # Keep the error that stopped the work (it names the command that failed); a lost
            # instrument also fails its safe-state commands, which is said here, not raised.
            log.error("%s: could not make every instrument safe after the error: %s",
                      self.name, e)

    # -- for concrete rigs ---------------------------------------------------------------------
    @abc.abstractmethod
    def _read_repeated(self, row: int, col: int, n: int) -> np.ndarray: ...

    @abc.abstractmethod
    def _pulse(self, row: int, col: int, volts: float, seconds: float) -> None: ...

    def _pulse_and_read(self, row: int, col: int, volts: float, seconds: float,
                        n: int) -> np.ndarray:
        # Rigs that can do both in one execution override this.
        self._pulse(row, col, volts, seconds)
        return self._read_repeated(row, col, n)

    def _read_array(self) -> np.ndarray:
        rows, cols = self.shape
        return np.array([[self._read_repeated(r, c, 1)[0] for c in range(cols)]
                         for r in range(rows)])

    def _check_device(self, row: int, col: int) -> None:
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"{self.name}: device ({row},{col}) outside the {rows}x{cols} crossbar")
