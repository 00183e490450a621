"""Virtual instrument clock: adds up the instrument time a real station would have spent.

The physics never advances the clock by itself; rigs and instrument emulators do, from a
`LatencyConfig` (physics.md §6). Volatile relaxation reads `now`, so the clock is part of a
crossbar's state.
"""

from __future__ import annotations

import math

from simulator.errors import SimulatorError


class VirtualClock:
    """Seconds of instrument time since start, with a breakdown per category."""

    def __init__(self, now: float = 0.0):
        self.now: float = float(now)
        self.totals: dict[str, float] = {}

    def advance(self, seconds: float, category: str = "other") -> None:
        """Move time forward by `seconds` (>= 0) and book it under `category`."""
        if not (seconds >= 0.0 and math.isfinite(seconds)):
            raise SimulatorError(f"clock cannot advance by {seconds!r} s")
        self.now += seconds
        self.totals[category] = self.totals.get(category, 0.0) + seconds

    def state_dict(self) -> dict:
        return {"now": self.now, "totals": dict(self.totals)}

    def load_state_dict(self, d: dict) -> None:
        self.now = float(d["now"])
        self.totals = {str(k): float(v) for k, v in d.get("totals", {}).items()}

    def __repr__(self) -> str:
        return f"VirtualClock(now={self.now:.6g} s)"
