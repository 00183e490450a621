"""xbarlab: from the probe station to a network that survives its transfer onto the crossbar."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xbarlab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
