"""Emulated instruments speaking the real command sets over one simulated lab world.

`world.LabWorld` holds the crossbar, the wiring and the terminal levels; `b1500`, `k4200`,
`k707b` are message-based emulators served by `simulator.visa_backend.EmulatedVisaLibrary`;
`wgfmu` is an emulated `WgfmuLibrary` backend for the WGFMU driver.
"""

from simulator.emulators.b1500 import B1500Emulator
from simulator.emulators.k707b import K707BEmulator
from simulator.emulators.k4200 import K4200Emulator
from simulator.emulators.wgfmu import EmulatedWgfmuLibrary
from simulator.emulators.world import LabWorld, Segment

__all__ = ["B1500Emulator", "EmulatedWgfmuLibrary", "K4200Emulator", "K707BEmulator",
           "LabWorld", "Segment"]
