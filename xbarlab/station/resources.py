"""What a station's drivers connect through, real or simulated, behind one interface.

`Resources` on a probe station: pyvisa's ResourceManager over the PC's VISA library, vendor
libraries loaded from disk (Keysight's WGFMU library), real time (`RealLab`).
`SimulatedLab` on a simulated station: the same interface over one crossbar of the virtual
chip, every configured instrument replaced by its emulator (pyvisa's ResourceManager over the
emulated VISA library; the emulated WGFMU library), the chip's virtual clock and saved state
(`simulator.chip.ChipLab`). The drivers and rigs on top cannot tell the two apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocols.rig import Lab, RealLab
from xbarlab.errors import StationError


class Resources:
    """A probe station's VISA sessions and vendor libraries."""

    #: the simulated lab's insides (None on a probe station)
    world = None
    visa_library = None

    def __init__(self) -> None:
        self._rm = None
        self.libraries: dict[str, Any] = {}

    def visa(self):
        """The pyvisa ResourceManager the message-based drivers open their sessions with."""
        if self._rm is None:
            import pyvisa
            try:
                self._rm = pyvisa.ResourceManager()
            except Exception as e:
                raise StationError(f"no VISA library on this PC: {e}") from None
        return self._rm

    def library(self, key: str, load: Callable[[], Any]) -> Any:
        """The vendor library `key` (loaded once with `load`)."""
        if key not in self.libraries:
            self.libraries[key] = load()
        return self.libraries[key]

    def lab(self) -> Lab:
        """Time for a rig opened now: real elapsed time since then."""
        return RealLab()


class SimulatedLab(Resources):
    """One crossbar of a virtual chip with every configured instrument emulated around it."""

    def __init__(self, chip, crossbar: str, wiring, latency: dict[str, float]):
        from simulator.config import LatencyConfig
        from simulator.emulators import LabWorld
        from simulator.visa_backend import EmulatedVisaLibrary

        super().__init__()
        self.chip = chip
        self.world = LabWorld(chip[crossbar], wiring, LatencyConfig(**latency))
        self.visa_library = EmulatedVisaLibrary()

    def add_visa(self, resource: str, emulator) -> None:
        """Serve `emulator` at VISA address `resource`."""
        self.visa_library.add(resource, emulator)

    def add_library(self, key: str, emulator) -> None:
        """Use `emulator` as vendor library `key`."""
        self.libraries[key] = emulator

    def visa(self):
        import pyvisa

        if self._rm is None:
            self._rm = pyvisa.ResourceManager(self.visa_library)
        return self._rm

    def library(self, key: str, load: Callable[[], Any]) -> Any:
        try:
            return self.libraries[key]
        except KeyError:
            raise StationError(f"the simulated lab has no emulated {key} library") from None

    def lab(self) -> Lab:
        return self.chip.lab
