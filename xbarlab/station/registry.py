"""What a station is built from: instrument kinds and rig kinds, each registered by its module.

An *instrument kind* (one module per instrument model: `k4200`, `k707b`, `b1500`, `wgfmu`) says
what its section under `instruments:` in a station file holds, which terminals (named outputs,
the vocabulary of `instruments.wiring`) it offers, how to open its driver through a station's
`Resources` (real VISA sessions and vendor libraries, or the simulated lab's emulated ones: the
driver cannot tell), how to put its emulator into a simulated lab, and what `xbarlab station
check` reports about it.

A *rig kind* (`pmu`, `wgfmu`) says what it needs of the station file, which instruments it
opens, how its roles reach the crossbar (one `Wiring`, used by the rig and by the simulated lab
alike) and how it assembles the rig from the opened drivers.

Adding an instrument or a rig is one module that calls `register` at import, plus its name in
PARTS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from instruments.wiring import Wiring
from protocols.rig import CrossbarRig, Lab

#: the modules that register the station's parts
PARTS = ("xbarlab.station.k4200", "xbarlab.station.k707b", "xbarlab.station.b1500",
         "xbarlab.station.wgfmu", "xbarlab.station.pmu_rig", "xbarlab.station.wgfmu_rig")

STRICT = ConfigDict(extra="forbid")


class InstrumentCfg(BaseModel):
    """The section of a message-based (VISA) instrument."""

    model_config = STRICT
    resource: str = Field(description="VISA resource string")
    timeout: float = Field(5.0, gt=0, le=600, description="reply timeout [s]")


@dataclass(frozen=True)
class InstrumentKind:
    key: str                                          # its section under `instruments:`
    config: type[BaseModel]                           # the fields of that section
    terminals: Callable[[Any], set[str]]              # cfg -> terminals it offers
    open: Callable[[Any, Any, Any], Any]              # (cfg, resources, limits) -> driver
    emulate: Callable[[Any, Any], None]               # (cfg, emulated resources) -> None
    report: Callable[[Any, Any, Wiring], list[str]]   # (cfg, driver, wiring) -> check lines


@dataclass(frozen=True)
class RigKind:
    key: str                                          # `rig:` in a station file
    check: Callable[[Any], None]                      # station cfg -> StationError if unfit
    instruments: Callable[[Any], tuple[str, ...]]     # station cfg -> instruments it opens
    wiring: Callable[[Any], Wiring]                   # station cfg -> how its roles are wired
    build: Callable[[Any, Mapping[str, Any], Wiring, Lab], CrossbarRig]


INSTRUMENTS: dict[str, InstrumentKind] = {}
RIGS: dict[str, RigKind] = {}


def register(kind: InstrumentKind | RigKind) -> None:
    table: dict = INSTRUMENTS if isinstance(kind, InstrumentKind) else RIGS
    if kind.key in table:
        raise ValueError(f"station part {kind.key!r} registered twice")
    table[kind.key] = kind


def load_parts() -> None:
    for name in PARTS:
        importlib.import_module(name)
