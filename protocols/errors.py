"""Exceptions of the protocols package. The CLI catches `ProtocolError` once."""


class ProtocolError(Exception):
    """A protocol could not run: bad configuration, inconsistent resume state, and so on."""


class ConfigError(ProtocolError):
    """A campaign or tuning configuration is invalid."""


class NotAvailableError(ProtocolError):
    """The rig has no way to do what was asked (e.g. no DC source/measure path)."""


class ComplianceError(ProtocolError):
    """A source or meter reached the station's current compliance during a request."""
