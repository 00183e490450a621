"""Drivers for the real instruments and the CrossbarRig seam the protocols use.

Never imports `simulator`: the station builder in `xbarlab` wires emulators in.
"""

from instruments.errors import InstrumentError, InstrumentTimeout, SafetyLimitError
from instruments.limits import SafetyLimits
from instruments.rig import CrossbarRig

__all__ = ["CrossbarRig", "InstrumentError", "InstrumentTimeout", "SafetyLimitError", "SafetyLimits"]
