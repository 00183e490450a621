"""Write-verify tuning and the characterisation campaigns, written against the CrossbarRig seam."""

from protocols.errors import ProtocolError

__all__ = ["ProtocolError"]
