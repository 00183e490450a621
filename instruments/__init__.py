"""Drivers for the real instruments and the rigs built from them (the `protocols.rig` seam).

Never imports `simulator`: the station builder in `xbarlab` wires emulators in.
"""

from instruments.errors import InstrumentError, InstrumentTimeout, SafetyLimitError
from instruments.limits import SafetyLimits

__all__ = ["InstrumentError", "InstrumentTimeout", "SafetyLimitError", "SafetyLimits"]
