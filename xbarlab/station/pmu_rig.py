"""`rig: pmu`: the 4200A PMU + pulse divider board + 707B crossbar rig (`instruments.rigs.PmuRig`).

Roles: drive = PMU channel 1 (`pmu1`, which also feeds the divider), sense = PMU channel 2
(`pmu2`), v3 / 2v3 = the divider's taps at 1/3 and 2/3 of channel 1, gnd = ground; each on the
707B matrix row named in the station file's `matrix.terminals`.

DC: SMU1 and SMU2 of the 4200 reach the drive and sense rows through the RPMs; SMU n >= 3 is the
optional role `smu<n>` (terminal `ksmu<n>`) on a matrix row of its own. Every SMU the 4200
section installs and the wiring reaches is one source of the rig's DC path.
"""

from __future__ import annotations

from instruments.dc import SmuPort
from instruments.rigs import PmuRig
from instruments.wiring import Wiring
from xbarlab.errors import StationError
from xbarlab.station.registry import RigKind, register

TERMINALS = {"drive": "pmu1", "sense": "pmu2", "v3": "div_v3", "2v3": "div_2v3", "gnd": "gnd"}
DIVIDER = {"div_v3": ("pmu1", 1 / 3), "div_2v3": ("pmu1", 2 / 3)}
#: SMUs behind the RPMs: SMU n on the row of the PMU channel n's role
RPM_ROLES = {1: "drive", 2: "sense"}


def _check(c) -> None:
    for field in ("k4200", "k707b"):
        if getattr(c.instruments, field) is None:
            raise StationError(f"instruments.{field}: required for rig 'pmu'")
    if c.matrix is None:
        raise StationError("matrix: required for rig 'pmu'")
    missing = set(PmuRig.ROLES) - set(c.matrix.terminals)
    if missing:
        raise StationError(f"matrix.terminals: missing {sorted(missing)}")
    extra = set(c.matrix.terminals) - set(PmuRig.ROLES)
    unknown = [r for r in extra if not (r.startswith("smu") and r[3:].isdigit()
                                        and int(r[3:]) >= 3)]
    if unknown:
        raise StationError(f"matrix.terminals: unknown role {sorted(unknown)[0]!r} (the pmu rig "
                           "has drive, sense, v3, 2v3, gnd and smu3, smu4...)")


def _wiring(c) -> Wiring:
    m = c.matrix
    terms = dict(TERMINALS)
    terms.update({r: f"ksmu{r[3:]}" for r in m.terminals if r.startswith("smu")})
    return Wiring(tuple(tuple(x) for x in m.rows), tuple(tuple(x) for x in m.cols),
                  letters=dict(m.terminals), terminals=terms, dividers=DIVIDER)


def _smus(c, k4200, wiring: Wiring) -> list[SmuPort]:
    ports = []
    for n in range(1, c.instruments.k4200.smus + 1):
        role = RPM_ROLES.get(n, f"smu{n}")
        if role in wiring.letters:
            ports.append(SmuPort(k4200.smu(n), letter=wiring.letters[role]))
    return ports


def _build(c, drivers, wiring: Wiring, lab) -> PmuRig:
    k4200 = drivers["k4200"]
    return PmuRig(k4200, drivers["k707b"], wiring, limits=c.limits, read=c.read.settings(),
                  lab=lab, edge=c.pulse.edge, read_scheme=c.read.scheme, width=c.pulse.width,
                  smus=_smus(c, k4200, wiring))


register(RigKind("pmu", _check, lambda c: ("k707b", "k4200"), _wiring, _build))
