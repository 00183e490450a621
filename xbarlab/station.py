"""Station files: which rig, which instruments at which addresses, the matrix wiring, the safety
limits and read/pulse defaults. One YAML file per set-up; `simulated: true` builds the same rig
over emulated instruments and a virtual chip.

    station = load_station("xbarlab/stations/sim-pmu.yaml")
    with station.open_rig() as rig:
        rig.pulse_and_read(0, 0, 1.2, 200e-9)

A bad file raises StationError with one line naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from instruments.limits import SafetyLimits
from instruments.rig import CrossbarRig, ReadSettings
from xbarlab.errors import StationError
from xbarlab.yamlfiles import read_mapping, validate

_STRICT = ConfigDict(extra="forbid")


class InstrumentCfg(BaseModel):
    model_config = _STRICT
    resource: str = Field(description="VISA resource string")
    timeout: float = Field(5.0, gt=0, le=600, description="reply timeout [s]")


class K707BCfg(InstrumentCfg):
    cards: dict[int, str] = Field(default_factory=lambda: {1: "7174A"},
                                  description="slot -> card model (emulated 707B)")


class B1500Cfg(InstrumentCfg):
    smu_v3: int = Field(2, ge=1, le=10, description="SMU channel holding V/3 lines")
    smu_2v3: int = Field(3, ge=1, le=10, description="SMU channel holding 2V/3 lines")
    modules: list[str] = Field(default_factory=lambda: ["B1530A", "B1517A", "B1517A"],
                               description="module per slot (emulated B1500)")


class WgfmuCfg(BaseModel):
    model_config = _STRICT
    address: str = Field(description="VISA address the WGFMU library opens")
    top: int = Field(101, description="channel on the top electrode (drive)")
    bottom: int = Field(102, description="channel on the bottom electrode (0 V, sense)")
    library: str | None = Field(None, description="path of Keysight's wgfmu library")


class Instruments(BaseModel):
    model_config = _STRICT
    k4200: InstrumentCfg | None = None
    k707b: K707BCfg | None = None
    b1500: B1500Cfg | None = None
    wgfmu: WgfmuCfg | None = None


class MatrixCfg(BaseModel):
    """707B wiring: crossbar line -> [slot, column]; terminal role -> matrix row letter."""

    model_config = _STRICT
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
    model_config = _STRICT
    volts: float = Field(0.2, description="read voltage [V]")
    seconds: float = Field(10e-6, gt=0, le=1e-3, description="read plateau [s]")
    ceiling_S: float = Field(500e-6, gt=0, description="conductance where the range saturates [S]")
    floor_S: float = Field(ReadSettings.floor_S, gt=0, description="smallest conductance a read "
                           "resolves [S] (instruments.rig.ReadSettings); tuning targets must lie "
                           "between floor_S and ceiling_S")

    @model_validator(mode="after")
    def _range(self) -> ReadCfg:
        if self.floor_S >= self.ceiling_S:
            raise ValueError("floor_S must be below ceiling_S")
        return self


class PulseCfg(BaseModel):
    model_config = _STRICT
    width: float = Field(200e-9, gt=0, le=1, description="default write pulse width [s] (inside "
                         "the limits' width_min..width_max)")
    # An edge is a small part of a write pulse (the PMU's shortest is 20 ns, the WGFMU's 10 ns);
    # 1 us is generous and refuses a unit slip (10 s edges: 20 s per "200 ns" pulse).
    edge: float = Field(10e-9, ge=0, le=1e-6, description="rise = fall time [s] (PMU: at least "
                        "20 ns; at most 1 us)")


class SimCfg(BaseModel):
    model_config = _STRICT
    seed: int = Field(0, ge=0, description="master seed of the virtual chip")
    chip_file: str | None = Field(None, description="saved VirtualChip to start from")
    latency: dict[str, float] = Field(default_factory=dict,
                                      description="LatencyConfig overrides [s]")


class StationCfg(BaseModel):
    model_config = _STRICT
    name: str
    rig: Literal["pmu", "wgfmu"]
    simulated: bool = False
    crossbar: str = Field("xbar0", description="crossbar (name on the chip) this station wires")
    shape: tuple[int, int] = Field((8, 8), description="rows, columns")
    instruments: Instruments
    matrix: MatrixCfg | None = None
    limits: SafetyLimits = Field(default_factory=SafetyLimits)
    read: ReadCfg = Field(default_factory=ReadCfg)
    pulse: PulseCfg = Field(default_factory=PulseCfg)
    sim: SimCfg = Field(default_factory=SimCfg)


def _consistency(c: StationCfg) -> None:
    ins = c.instruments
    if c.rig == "pmu":
        for field in ("k4200", "k707b"):
            if getattr(ins, field) is None:
                raise StationError(f"instruments.{field}: required for rig 'pmu'")
        if c.matrix is None:
            raise StationError("matrix: required for rig 'pmu'")
        need = {"drive", "sense", "v3", "2v3", "gnd"}
    else:
        if ins.wgfmu is None:
            raise StationError("instruments.wgfmu: required for rig 'wgfmu'")
        if c.shape != (1, 1):
            for field in ("b1500", "k707b"):
                if getattr(ins, field) is None:
                    raise StationError(f"instruments.{field}: required for a wgfmu crossbar")
            if c.matrix is None:
                raise StationError("matrix: required for a wgfmu crossbar (shape != [1, 1])")
        need = {"top", "bottom", "v3", "2v3"}
    if c.matrix is not None and (c.rig == "pmu" or c.shape != (1, 1)):
        missing = need - set(c.matrix.terminals)
        if missing:
            raise StationError(f"matrix.terminals: missing {sorted(missing)}")
        if len(c.matrix.rows) != c.shape[0] or len(c.matrix.cols) != c.shape[1]:
            raise StationError(f"matrix.rows/cols: {len(c.matrix.rows)}x{len(c.matrix.cols)} "
                               f"lines wired, shape is {c.shape[0]}x{c.shape[1]}")
        used = set(c.matrix.rows) & set(c.matrix.cols)
        if used:
            raise StationError(f"matrix: column {sorted(used)[0]} wired to a row and a column")
    try:
        c.limits.check_bias(c.read.volts, where="read.volts")
    except Exception as e:
        raise StationError(f"read.volts: {e}") from None
    if not c.limits.width_min <= c.pulse.width <= c.limits.width_max:
        raise StationError(f"pulse.width: {c.pulse.width:g} s outside the limits "
                           f"[{c.limits.width_min:g}, {c.limits.width_max:g}] s")


#: the station files shipped with xbarlab; `load_station("sim-pmu")` finds them by name
SHIPPED_STATIONS = Path(__file__).resolve().parent / "stations"


def resolve_station(path: str | Path) -> Path:
    """A station file path, or the name of a shipped station (``sim-pmu``, ``sim-wgfmu``...)."""
    p = Path(path)
    if not p.exists() and p.parent == Path(".") and p.suffix == "":
        shipped = SHIPPED_STATIONS / f"{p.name}.yaml"
        if shipped.exists():
            return shipped
    return p


def load_station(path: str | Path) -> Station:
    path = resolve_station(path)
    raw = read_mapping(path, "station file", StationError)
    cfg = validate(StationCfg, raw, path.name, StationError)
    _consistency(cfg)
    if cfg.sim.latency:
        from simulator.config import LatencyConfig  # validated now, used when opening
        try:
            LatencyConfig(**cfg.sim.latency)
        except ValidationError as e:
            err = e.errors()[0]
            raise StationError(f"{path.name}: sim.latency.{err['loc'][0]}: {err['msg']}") \
                from None
    return Station(cfg, path)


class Station:
    """A loaded station. Sim stations own their virtual chip (`chip`)."""

    def __init__(self, cfg: StationCfg, path: Path | None = None):
        self.cfg = cfg
        self.path = path
        self._chip = None
        self.visa_library = None   # the emulated pyvisa library, on sim stations
        self.world = None          # the simulated lab world, on sim stations
        self.wgfmu_library = None  # the WgfmuLibrary backend in use

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def limits(self) -> SafetyLimits:
        return self.cfg.limits

    @property
    def read_settings(self) -> ReadSettings:
        r = self.cfg.read
        return ReadSettings(volts=r.volts, seconds=r.seconds, ceiling_S=r.ceiling_S,
                            floor_S=r.floor_S)

    @property
    def chip(self):
        """The VirtualChip of a sim station (built on first use), else None."""
        if not self.cfg.simulated:
            return None
        if self._chip is None:
            from simulator.chip import VirtualChip
            if self.cfg.sim.chip_file:
                f = Path(self.cfg.sim.chip_file)
                if not f.is_absolute() and self.path is not None:
                    f = self.path.parent / f
                self._chip = VirtualChip.load(f)
            else:
                self._chip = VirtualChip(seed=self.cfg.sim.seed)
        return self._chip

    def describe(self) -> dict[str, Any]:
        """JSON-able description (stored with every run)."""
        d = json.loads(self.cfg.model_dump_json())
        d["path"] = str(self.path) if self.path else None
        return d

    # -- rigs ----------------------------------------------------------------------------------
    def _wiring(self):
        from instruments.rigs import MatrixWiring
        m = self.cfg.matrix
        return MatrixWiring(tuple(tuple(x) for x in m.rows), tuple(tuple(x) for x in m.cols),
                            dict(m.terminals))

    def open_rig(self, crossbar: str | None = None) -> CrossbarRig:
        if self.cfg.simulated:
            rm, clock = self._sim_setup(crossbar or self.cfg.crossbar)
        else:
            if crossbar not in (None, self.cfg.crossbar):
                raise StationError(f"crossbar: this station is wired to {self.cfg.crossbar!r}")
            import pyvisa
            try:
                rm = pyvisa.ResourceManager()
            except Exception as e:
                raise StationError(f"no VISA library on this PC: {e}") from None
            clock = None
        return self._build(rm, clock)

    def _sim_setup(self, name: str):
        import pyvisa

        from simulator.config import LatencyConfig
        from simulator.emulators import (
            B1500Emulator,
            EmulatedWgfmuLibrary,
            K707BEmulator,
            K4200Emulator,
            LabWorld,
            Wiring,
        )
        from simulator.visa_backend import EmulatedVisaLibrary

        chip, c = self.chip, self.cfg
        try:
            xb = chip[name]
        except KeyError:
            raise StationError(f"crossbar: {name!r} is not on the chip "
                               f"({', '.join(chip.crossbars)})") from None
        if tuple(xb.shape) != tuple(c.shape):
            raise StationError(f"shape: station says {c.shape[0]}x{c.shape[1]}, crossbar "
                               f"{name!r} is {xb.shape[0]}x{xb.shape[1]}")
        wiring = Wiring()
        if c.matrix is not None and (c.rig == "pmu" or c.shape != (1, 1)):
            roles = {"drive": "pmu1", "sense": "pmu2", "v3": "div_v3", "2v3": "div_2v3",
                     "gnd": "gnd"}
            if c.rig == "wgfmu":
                w, b = c.instruments.wgfmu, c.instruments.b1500
                roles = {"top": f"wgfmu{w.top}", "bottom": f"wgfmu{w.bottom}",
                         "v3": f"smu{b.smu_v3}", "2v3": f"smu{b.smu_2v3}", "gnd": "gnd"}
            wiring.matrix_rows = {c.matrix.terminals[r]: t for r, t in roles.items()
                                  if r in c.matrix.terminals}
            wiring.matrix_lines = {("row", i): tuple(x) for i, x in enumerate(c.matrix.rows)}
            wiring.matrix_lines |= {("col", j): tuple(x) for j, x in enumerate(c.matrix.cols)}
            if c.rig == "pmu":
                wiring.dividers = {"div_v3": ("pmu1", 1 / 3), "div_2v3": ("pmu1", 2 / 3)}
        elif c.rig == "wgfmu":
            w = c.instruments.wgfmu
            wiring.fixed = {("row", 0): f"wgfmu{w.top}", ("col", 0): f"wgfmu{w.bottom}"}
        world = LabWorld(xb, wiring, LatencyConfig(**c.sim.latency))
        lib = EmulatedVisaLibrary()
        ins = c.instruments
        if ins.k707b:
            lib.add(ins.k707b.resource, K707BEmulator(world, cards=dict(ins.k707b.cards)))
        if ins.k4200:
            lib.add(ins.k4200.resource, K4200Emulator(world))
        if ins.b1500:
            lib.add(ins.b1500.resource, B1500Emulator(world, modules=list(ins.b1500.modules)))
        if ins.wgfmu:
            self.wgfmu_library = EmulatedWgfmuLibrary(world, channels=(ins.wgfmu.top,
                                                                       ins.wgfmu.bottom),
                                                      address=ins.wgfmu.address)
        self.visa_library, self.world = lib, world
        return pyvisa.ResourceManager(lib), (lambda: chip.clock.now)

    def _build(self, rm, clock) -> CrossbarRig:
        from instruments.b1500 import B1500
        from instruments.k707b import K707B
        from instruments.k4200 import K4200
        from instruments.rigs import PmuRig, WgfmuRig
        from instruments.wgfmu import Wgfmu

        c, ins, lim = self.cfg, self.cfg.instruments, self.cfg.limits
        opened: list[Any] = []
        try:
            matrix = None
            if ins.k707b and (c.rig == "pmu" or c.shape != (1, 1)):
                matrix = K707B.open(rm, ins.k707b.resource, limits=lim,
                                    timeout=ins.k707b.timeout)
                opened.append(matrix)
            if c.rig == "pmu":
                pmu = K4200.open(rm, ins.k4200.resource, limits=lim, timeout=ins.k4200.timeout)
                opened.append(pmu)
                return PmuRig(pmu, matrix, self._wiring(), limits=lim, read=self.read_settings,
                              clock=clock, edge=c.pulse.edge)
            b1500 = None
            if ins.b1500 and c.shape != (1, 1):
                b1500 = B1500.open(rm, ins.b1500.resource, limits=lim,
                                   timeout=ins.b1500.timeout)
                opened.append(b1500)
                b1500.connect()
            lib = self.wgfmu_library
            if lib is None:
                from instruments.wgfmu_ctypes import CtypesWgfmuLibrary
                lib = self.wgfmu_library = CtypesWgfmuLibrary(ins.wgfmu.library)
            return WgfmuRig(Wgfmu(lib, limits=lim), ins.wgfmu.address, b1500=b1500,
                            matrix=matrix, wiring=self._wiring() if matrix else None,
                            top=ins.wgfmu.top, bottom=ins.wgfmu.bottom,
                            smu_v3=ins.b1500.smu_v3 if ins.b1500 else 2,
                            smu_2v3=ins.b1500.smu_2v3 if ins.b1500 else 3,
                            limits=lim, read=self.read_settings, clock=clock,
                            edge=c.pulse.edge, compliance=lim.i_compliance)
        except BaseException:
            for inst in opened:
                try:
                    inst.close()
                except Exception:
                    pass
            raise
