"""xbarlab: from the probe station to a network that survives its transfer onto the crossbar."""

# Nothing is imported here: `xbarlab` on the command line must reach its Ctrl-C handling
# (xbarlab/__main__.py) before any slow import.


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("xbarlab")
        except PackageNotFoundError:  # running from a source tree without installation
            return "0.0.0+unknown"
    raise AttributeError(f"module 'xbarlab' has no attribute {name!r}")
