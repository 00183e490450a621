"""What the SMU drivers share: one spot reading with its status, as both instruments report it.

A spot reply of the 4200 (`XYZ+N.NNNNE+NN`, 4200RM p.9-53) and of the B1500 in FMT1
(`ABC+DDD.DDDE+XX`, E52PG p.1-25) is one status letter, one channel letter, one type letter (I or
V) and the value (dc-commands.md §1.2, §2.4). Status letters both use: N normal, C this channel in
compliance, T another channel in compliance, V overflow (A/D saturated or over range; the B1500
then writes 199.999E+99), X oscillation. The 4200 adds L (interval too short); the B1500 F (force
saturation), G/S (search, quasi-pulsed spot).
"""

from __future__ import annotations

from dataclasses import dataclass

#: statuses whose value is not a measurement of the device
_INVALID = ("V", "X", "F")


@dataclass(frozen=True)
class Spot:
    """One spot measurement: `value` [A or V] and the instrument's status letter."""

    value: float
    status: str = "N"
    kind: str = "I"

    @property
    def compliance(self) -> bool:
        """This channel is in compliance (the value is the compliance, not the device's)."""
        return self.status == "C"

    @property
    def overflow(self) -> bool:
        """The reading is over range (or saturated): its value is not a measurement."""
        return self.status == "V"

    @property
    def valid(self) -> bool:
        return self.status not in _INVALID


def parse_spot(reply: str, kind: str) -> Spot:
    """`NAI+000.005E-09` (B1500) / `NAI+1.2340E-06` (4200) -> Spot; ValueError if it is not one
    element of type `kind` (I or V). An overflow's number is not used (4200: unconfirmed)."""
    part = reply.strip().split(",")[0]
    if len(part) < 5 or not part[:2].isalpha() or part[2] != kind:
        raise ValueError(f"not a spot {kind} reading: {reply!r}")
    status = part[0]
    value = float(part[3:])
    if status == "V" or abs(value) > 1e37:
        return Spot(float("nan"), "V", kind)
    return Spot(value, status, kind)
