"""Which crossbars a conductance plan's tiles go onto (used by `xbarlab transfer` and the demo)."""

from __future__ import annotations

from xbarlab.errors import StationError


def pick_crossbars(station, n_tiles: int, names: tuple[str, ...]) -> list[str]:
    """One crossbar per tile: the given names, or (sim) the chip's crossbars of station shape."""
    if names:
        if len(names) != n_tiles:
            raise StationError(f"--crossbar given {len(names)} times; the network needs "
                               f"{n_tiles} tiles (one crossbar each)")
        return list(names)
    chip = station.chip
    if chip is None:
        if n_tiles > 1:
            raise StationError(f"the network needs {n_tiles} crossbars: name them with "
                               "--crossbar (once per tile); you will be asked to move the "
                               "probes between tiles")
        return [station.cfg.crossbar]
    shape = tuple(station.cfg.shape)
    fits = [n for n, xb in chip.crossbars.items() if tuple(xb.shape) == shape]
    fits.sort(key=lambda n: n != station.cfg.crossbar)  # the station's own crossbar first
    if len(fits) < n_tiles:
        raise StationError(f"the network needs {n_tiles} crossbars of {shape[0]}x{shape[1]}, "
                           f"the chip has {len(fits)}")
    return fits[:n_tiles]
