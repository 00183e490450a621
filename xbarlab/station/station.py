"""A loaded station: its file, its parts, the rigs it opens and what a run on it is bound to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from instruments.limits import SafetyLimits
from protocols.rig import CrossbarRig, ReadSettings
from xbarlab.errors import StationError
from xbarlab.station.config import check_consistency, station_model
from xbarlab.station.registry import INSTRUMENTS, RIGS
from xbarlab.station.resources import Resources, SimulatedLab
from xbarlab.yamlfiles import read_mapping, validate

#: the station files shipped with xbarlab; `load_station("sim-pmu")` finds them by name
SHIPPED_STATIONS = Path(__file__).resolve().parents[1] / "stations"


def resolve_station(path: str | Path) -> Path:
    """A station file path, or the name of a shipped station (``sim-pmu``, ``sim-wgfmu``...)."""
    p = Path(path)
    if not p.exists() and p.parent == Path(".") and p.suffix == "":
        shipped = SHIPPED_STATIONS / f"{p.name}.yaml"
        if shipped.exists():
            return shipped
    return p


def load_station(path: str | Path, *, chip=None) -> Station:
    """The station of a file; `chip`: a VirtualChip to put behind a simulated station instead
    of the one its file describes (a bench that makes and programs its own chips and measures
    them through the station's instruments)."""
    path = resolve_station(path)
    raw = read_mapping(path, "station file", StationError)
    cfg = validate(station_model(), raw, path.name, StationError)
    check_consistency(cfg)
    if cfg.sim.latency:
        from simulator.config import LatencyConfig  # validated now, used when opening
        try:
            LatencyConfig(**cfg.sim.latency)
        except ValidationError as e:
            err = e.errors()[0]
            raise StationError(f"{path.name}: sim.latency.{err['loc'][0]}: {err['msg']}") \
                from None
    if cfg.sim.model:
        from simulator.errors import SimulatorError
        from xbarlab.calibrate import load_chip_model
        try:
            load_chip_model(beside(path, cfg.sim.model))
        except SimulatorError as e:
            raise StationError(f"{path.name}: sim.model: {e}") from None
    if cfg.sim.crossbars:
        _layout(cfg.sim, path.name)  # validated now, used when the chip is built
    if chip is not None and not cfg.simulated:
        raise StationError(f"{path.name}: a virtual chip goes only behind a simulated station")
    return Station(cfg, path, chip=chip)


def _layout(sim, where: str, model=None):
    """The chip's crossbars (with the chip model's device parameters when given) and the
    station file's overrides (`sim.crossbars`)."""
    from simulator.chip import default_layout
    from simulator.config import CrossbarConfig

    layout = default_layout(model)
    for name, over in sim.crossbars.items():
        if sim.chip_file:
            raise StationError(f"{where}: sim.crossbars: overrides apply to a chip built from "
                               "the seed, not to sim.chip_file")
        if name not in layout:
            raise StationError(f"{where}: sim.crossbars.{name}: no such crossbar on the chip "
                               f"({', '.join(layout)})")
        try:
            layout[name] = CrossbarConfig.model_validate(
                layout[name].model_dump() | dict(over))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise StationError(f"{where}: sim.crossbars.{name}.{loc}: {err['msg']}") from None
    return layout


def beside(station_path: Path | None, name: str) -> Path:
    """A path named in a station file, relative to the file's folder."""
    f = Path(name)
    return f if f.is_absolute() or station_path is None else station_path.parent / f


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Station:
    """A loaded station. A simulated one owns its virtual chip (`chip`); `resources` are what
    the last opened rig's drivers connect through (`world`, `visa_library` and `wgfmu_library`
    show the simulated lab's insides to tests and benches)."""

    def __init__(self, cfg, path: Path | None = None, chip=None):
        """`cfg`: a validated station file (`station_model()`); `chip`: the VirtualChip of a
        simulated station (default: built from the file's `sim` section on first use)."""
        self.cfg = cfg
        self.path = path
        self._chip = chip
        self._chip_sha256: str | None = None
        self.resources: Resources | None = None if cfg.simulated else Resources()

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def limits(self) -> SafetyLimits:
        return self.cfg.limits

    @property
    def read_settings(self) -> ReadSettings:
        return self.cfg.read.settings()

    @property
    def chip(self):
        """The VirtualChip of a sim station (built on first use), else None."""
        if not self.cfg.simulated:
            return None
        if self._chip is None:
            from simulator.chip import VirtualChip
            sim = self.cfg.sim
            if sim.chip_file:
                f = beside(self.path, sim.chip_file)
                self._chip = VirtualChip.load(f)
                self._chip_sha256 = _sha256(f)
            else:
                model = None
                if sim.model:
                    from xbarlab.calibrate import load_chip_model
                    model = load_chip_model(beside(self.path, sim.model))
                self._chip = VirtualChip(_layout(sim, self.name, model), seed=sim.seed)
        return self._chip

    @property
    def world(self):
        return None if self.resources is None else self.resources.world

    @property
    def visa_library(self):
        return None if self.resources is None else self.resources.visa_library

    @property
    def wgfmu_library(self):
        return None if self.resources is None else self.resources.libraries.get("wgfmu")

    # -- run binding -------------------------------------------------------------------------
    def describe(self, crossbars: str | Sequence[str] | None = None) -> dict[str, Any]:
        """What a run on this station is bound to, as one JSON-able dict: the station file's
        settings (rig kind, shape, instruments, wiring, limits, read and pulse settings), the
        crossbars actually used (`crossbars`, default the station's own; on a real station the
        labels of the crossbars under the probes, as the operator names them) and, on a simulated
        station, the chip really used (its seed, chip file and that file's SHA-256) and the
        full latency model. Stored with every run; `path` (where the file was read from) is the
        only key that may change between a run and its resume."""
        if crossbars is None or isinstance(crossbars, str):
            crossbars = [crossbars]
        c = self.cfg
        d = json.loads(c.model_dump_json(exclude={"crossbar", "sim"}))
        d["crossbars"] = [self._crossbar(n) if c.simulated or n is None else n
                          for n in crossbars]
        if c.simulated:
            from simulator.config import LatencyConfig

            d["sim"] = {"seed": self.chip.seed, "chip_file": c.sim.chip_file,
                        "chip_sha256": self._chip_sha256, "model": c.sim.model,
                        "model_sha256": _sha256(beside(self.path, c.sim.model))
                        if c.sim.model else None,
                        "latency": LatencyConfig(**c.sim.latency).model_dump(mode="json")}
            if c.sim.crossbars:
                d["sim"]["crossbars"] = c.sim.crossbars
        d["path"] = str(self.path) if self.path else None
        return d

    # -- rigs ----------------------------------------------------------------------------------
    def _crossbar(self, name: str | None) -> str:
        """The crossbar `name` (None: the station's), checked against what the station has."""
        c = self.cfg
        if not c.simulated:
            if name not in (None, c.crossbar):
                raise StationError(f"crossbar: this station is wired to {c.crossbar!r}")
            return c.crossbar
        name = name or c.crossbar
        chip = self.chip
        if name not in chip.crossbars:
            raise StationError(f"crossbar: {name!r} is not on the chip "
                               f"({', '.join(chip.crossbars)})")
        shape = tuple(chip[name].shape)
        if shape != tuple(c.shape):
            raise StationError(f"shape: station says {c.shape[0]}x{c.shape[1]}, crossbar "
                               f"{name!r} is {shape[0]}x{shape[1]}")
        return name

    def open_rig(self, crossbar: str | None = None) -> CrossbarRig:
        """The station's rig on `crossbar` (sim stations: any crossbar of the chip with the
        station's shape; real ones: the crossbar they are wired to), instruments connected."""
        return self._open(crossbar)[0]

    def tile_opener(self) -> Callable[[str], CrossbarRig]:
        """`open_rig` for a protocol that names the crossbar of each tile (transfer, inference,
        repair): a simulated station opens that crossbar of its chip, a real one the crossbar
        it is wired to (the name is not its business)."""
        return lambda name: self.open_rig(name if self.chip is not None else None)

    def _open(self, crossbar: str | None) -> tuple[CrossbarRig, dict[str, Any]]:
        c = self.cfg
        name = self._crossbar(crossbar)
        kind = RIGS[c.rig]
        wiring = kind.wiring(c)
        if c.simulated:
            lab = SimulatedLab(self.chip, name, wiring, c.sim.latency)
            for key, part in INSTRUMENTS.items():
                if getattr(c.instruments, key) is not None:
                    part.emulate(getattr(c.instruments, key), lab)
            self.resources = lab
        res = self.resources
        drivers: dict[str, Any] = {}
        try:
            for key in kind.instruments(c):
                drivers[key] = INSTRUMENTS[key].open(getattr(c.instruments, key), res, c.limits)
            return kind.build(c, drivers, wiring, res.lab()), drivers
        except BaseException:
            for inst in drivers.values():
                try:
                    inst.close()
                except Exception:
                    pass
            raise

    def check(self) -> list[str]:
        """Open every instrument the rig uses and say what answered (`xbarlab station check`),
        then leave everything safe."""
        c = self.cfg
        out = [f"station   {c.name}  ({'simulated' if c.simulated else 'real'} {c.rig} rig, "
               f"file {self.path})",
               f"crossbar  {c.crossbar}: {c.shape[0]} x {c.shape[1]}"]
        wiring = RIGS[c.rig].wiring(c)
        rig, drivers = self._open(None)
        try:
            for key, part in INSTRUMENTS.items():
                if key in drivers:
                    out += part.report(getattr(c.instruments, key), drivers[key], wiring)
            if wiring.routed:
                out.append("wiring    matrix rows: " + ", ".join(
                    f"{role}={letter} ({wiring.terminals.get(role, '?')})"
                    for role, letter in wiring.letters.items()))
                out.append("          word lines on " + " ".join(f"{s}:{col:02d}"
                                                             for s, col in wiring.rows))
                out.append("          bit lines on  " + " ".join(f"{s}:{col:02d}"
                                                             for s, col in wiring.cols))
            else:
                out.append("wiring    probe card: " + ", ".join(
                    f"{kind} {i} on {term}" for (kind, i), term in wiring.fixed.items()))
            lim = c.limits
            out.append(f"limits    SET <= +{lim.v_set_max:g} V, RESET >= -{lim.v_reset_max:g} V, "
                       f"read/bias <= {lim.v_read_max:g} V, width {lim.width_min:g}.."
                       f"{lim.width_max:g} s, compliance {lim.i_compliance:g} A")
            out.append(f"read      {c.read.volts:g} V for {c.read.seconds:g} s, saturates at "
                       f"{c.read.ceiling_S * 1e6:g} uS; pulse {c.pulse.width:g} s, "
                       f"edges {c.pulse.edge:g} s")
            rig.safe_state()
            out.append("state     outputs 0 V, relays open: OK")
        finally:
            rig.close()
        return out
