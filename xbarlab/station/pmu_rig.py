"""`rig: pmu`: the 4200A PMU + pulse-divider board + 707B crossbar rig (`instruments.rigs.PmuRig`).

Roles: drive = PMU channel 1 (`pmu1`, which also feeds the divider), sense = PMU channel 2
(`pmu2`), v3 / 2v3 = the divider's taps at 1/3 and 2/3 of channel 1, gnd = ground; each on the
707B matrix row named in the station file's `matrix.terminals`.
"""

from __future__ import annotations

from instruments.rigs import PmuRig
from instruments.wiring import Wiring
from xbarlab.errors import StationError
from xbarlab.station.registry import RigKind, register

TERMINALS = {"drive": "pmu1", "sense": "pmu2", "v3": "div_v3", "2v3": "div_2v3", "gnd": "gnd"}
DIVIDER = {"div_v3": ("pmu1", 1 / 3), "div_2v3": ("pmu1", 2 / 3)}


def _check(c) -> None:
    for field in ("k4200", "k707b"):
        if getattr(c.instruments, field) is None:
            raise StationError(f"instruments.{field}: required for rig 'pmu'")
    if c.matrix is None:
        raise StationError("matrix: required for rig 'pmu'")
    missing = set(PmuRig.ROLES) - set(c.matrix.terminals)
    if missing:
        raise StationError(f"matrix.terminals: missing {sorted(missing)}")


def _wiring(c) -> Wiring:
    m = c.matrix
    return Wiring(tuple(tuple(x) for x in m.rows), tuple(tuple(x) for x in m.cols),
                  letters=dict(m.terminals), terminals=TERMINALS, dividers=DIVIDER)


def _build(c, drivers, wiring: Wiring, lab) -> PmuRig:
    return PmuRig(drivers["k4200"], drivers["k707b"], wiring, limits=c.limits,
                  read=c.read.settings(), lab=lab, edge=c.pulse.edge, read_scheme=c.read.scheme,
                  width=c.pulse.width)


register(RigKind("pmu", _check, lambda c: ("k707b", "k4200"), _wiring, _build))
