"""The station file's fields (pydantic) and the checks that span several of them.

The `instruments:` section and the `rig:` choices come from the registered parts
(`registry`), so a new instrument brings its own section without an edit here: the model is
built from the registry when a station file is first read (`station_model`).
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from instruments.limits import SafetyLimits
from protocols.rig import ReadSettings
from xbarlab.errors import StationError
from xbarlab.station.registry import INSTRUMENTS, RIGS, STRICT, load_parts


class MatrixCfg(BaseModel):
    """707B wiring: crossbar line -> [slot, column]; terminal role -> matrix row letter."""

    model_config = STRICT
    terminals: dict[str, str]
    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]

    @field_validator("terminals")
    @classmethod
    def _letters(cls, v: dict[str, str]) -> dict[str, str]:
        for role, letter in v.items():
            if len(letter) != 1 or letter.upper() not in "ABCDEFGH":
                raise ValueError(f"terminal {role}: matrix row must be a letter A-H")
        return {k: x.upper() for k, x in v.items()}

    @field_validator("rows", "cols")
    @classmethod
    def _channels(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for slot, col in v:
            if not (1 <= slot <= 6 and 1 <= col <= 12):
                raise ValueError(f"[{slot}, {col}]: slot must be 1-6 and column 1-12")
        if len(set(v)) != len(v):
            raise ValueError("a matrix column is used twice")
        return v


class ReadCfg(BaseModel):
    model_config = STRICT
    volts: float = Field(0.2, description="read voltage [V]")
    seconds: float = Field(10e-6, gt=0, le=1e-3, description="read plateau [s]")
    ceiling_S: float = Field(500e-6, gt=0, description="conductance where the range saturates [S]")
    floor_S: float = Field(ReadSettings.floor_S, gt=0, description="smallest conductance a read "
                           "resolves [S] (protocols.rig.ReadSettings); tuning targets must lie "
                           "between floor_S and ceiling_S")
    scheme: Literal["grounded", "write-routing"] = Field(
        "grounded", description="verify read after a pulse (PMU rig): 'grounded' reroutes the "
        "707B for every read; 'write-routing' reads in the pulse's own execution and routing, "
        "corrected against grounded reads per device (instruments/rigs.py PmuRig)")

    @model_validator(mode="after")
    def _range(self) -> ReadCfg:
        if self.floor_S >= self.ceiling_S:
            raise ValueError("floor_S must be below ceiling_S")
        return self

    def settings(self) -> ReadSettings:
        return ReadSettings(volts=self.volts, seconds=self.seconds, ceiling_S=self.ceiling_S,
                            floor_S=self.floor_S)


class PulseCfg(BaseModel):
    model_config = STRICT
    width: float = Field(200e-9, gt=0, le=1, description="default write pulse width [s] (inside "
                         "the limits' width_min..width_max)")
    # An edge is a small part of a write pulse (the PMU's shortest is 20 ns, the WGFMU's 10 ns);
    # 1 us is generous and refuses a unit slip (10 s edges: 20 s per "200 ns" pulse).
    edge: float = Field(10e-9, ge=0, le=1e-6, description="rise = fall time [s] (PMU: at least "
                        "20 ns; at most 1 us)")


class SimCfg(BaseModel):
    model_config = STRICT
    seed: int = Field(0, ge=0, description="master seed of the virtual chip")
    chip_file: str | None = Field(None, description="saved VirtualChip to start from")
    model: str | None = Field(None, description="chip model (YAML from `xbarlab sim calibrate`) "
                              "a fresh chip is built from; default: the shipped calibration")
    latency: dict[str, float] = Field(default_factory=dict,
                                      description="LatencyConfig overrides [s]")
    crossbars: dict[str, dict] = Field(default_factory=dict, description="crossbar name -> "
                                       "CrossbarConfig overrides (line faults, unformed "
                                       "devices...) for a chip built from the seed")


@cache
def station_model() -> type[BaseModel]:
    """The model of a station file, from the parts registered by now (all of PARTS)."""
    load_parts()
    # one optional section per registered instrument kind, in registration order
    instruments = create_model(
        "Instruments", __config__=STRICT,
        **{k: (kind.config | None, None) for k, kind in INSTRUMENTS.items()})
    rigs = Literal[tuple(RIGS)]

    class StationCfg(BaseModel):
        model_config = STRICT
        name: str
        rig: rigs
        simulated: bool = False
        crossbar: str = Field("xbar0", description="crossbar (name on the chip) this station "
                                                   "wires")
        shape: tuple[int, int] = Field((8, 8), description="rows, columns")
        instruments: instruments
        matrix: MatrixCfg | None = None
        limits: SafetyLimits = Field(default_factory=SafetyLimits)
        read: ReadCfg = Field(default_factory=ReadCfg)
        pulse: PulseCfg = Field(default_factory=PulseCfg)
        sim: SimCfg = Field(default_factory=SimCfg)

    return StationCfg


def check_consistency(c) -> None:
    """What the field types cannot say: the rig's needs, wiring vs shape, terminals that exist,
    settings inside the limits. StationError naming the field."""
    kind = RIGS[c.rig]
    kind.check(c)
    wiring = kind.wiring(c)
    if wiring.routed:
        if len(wiring.rows) != c.shape[0] or len(wiring.cols) != c.shape[1]:
            raise StationError(f"matrix.rows/cols: {len(wiring.rows)}x{len(wiring.cols)} "
                               f"lines wired, shape is {c.shape[0]}x{c.shape[1]}")
        used = set(wiring.rows) & set(wiring.cols)
        if used:
            raise StationError(f"matrix: column {sorted(used)[0]} wired to a row and a column")
    offered = {"gnd"}
    for key, kind_i in INSTRUMENTS.items():
        sec = getattr(c.instruments, key)
        if sec is None:
            continue
        mine = kind_i.terminals(sec)
        if mine & offered:
            raise StationError(f"instruments.{key}: terminal {sorted(mine & offered)[0]} is "
                               "offered by another instrument too (terminal names must be "
                               "unique on a station)")
        offered |= mine
    offered |= {tap for tap, (src, _k) in wiring.dividers.items() if src in offered}
    for role, term in wiring.terminals.items():
        if (role in wiring.letters or term in wiring.fixed.values()) and term not in offered:
            raise StationError(f"{c.rig} rig: role {role!r} needs terminal {term}, which no "
                               f"configured instrument offers (have {', '.join(sorted(offered))})")
    try:
        c.limits.check_bias(c.read.volts, where="read.volts")
    except Exception as e:
        raise StationError(f"read.volts: {e}") from None
    if not c.limits.width_min <= c.pulse.width <= c.limits.width_max:
        raise StationError(f"pulse.width: {c.pulse.width:g} s outside the limits "
                           f"[{c.limits.width_min:g}, {c.limits.width_max:g}] s")
