"""`rig: wgfmu`: the B1500A + B1530A WGFMU rig (`instruments.rigs.WgfmuRig`).

A single crosspoint (shape [1, 1]) sits on a probe card: the top channel on the word line, the
bottom channel (0 V, sense) on the bit line. A crossbar is routed by the 707B: roles top and
bottom are the WGFMU channels, v3 and 2v3 the B1500 SMUs named in `instruments.b1500`.

DC: on a crossbar the v3 and 2v3 SMUs, plus any `smu<n>` role (B1500 slot n on a matrix row of
its own), with an optional `gnd` row; on a single crosspoint the SMUs that `wgfmu.rsu_smus`
cables to the channels' RSUs (needs `instruments.b1500`).
"""

from __future__ import annotations

from instruments.dc import SmuPort
from instruments.rigs import WgfmuRig
from instruments.wiring import Wiring
from xbarlab.errors import StationError
from xbarlab.station.registry import RigKind, register

ROLES = ("top", "bottom", "v3", "2v3")


def _routed(c) -> bool:
    return tuple(c.shape) != (1, 1)


def _extra_smus(c) -> dict[str, int]:
    """Roles `smu<n>` of the matrix: B1500 SMU slot n on a row of its own."""
    if c.matrix is None:
        return {}
    return {r: int(r[3:]) for r in c.matrix.terminals if r.startswith("smu") and r[3:].isdigit()}


def _check(c) -> None:
    w = c.instruments.wgfmu
    if w is None:
        raise StationError("instruments.wgfmu: required for rig 'wgfmu'")
    if c.read.scheme != "grounded":
        raise StationError(f"read.scheme: {c.read.scheme!r} needs the PMU rig's pulse "
                           "divider; a wgfmu station reads grounded")
    b = c.instruments.b1500
    if w.rsu_smus:
        if b is None:
            raise StationError("instruments.wgfmu.rsu_smus: needs instruments.b1500 (the SMUs)")
        bad = [ch for ch in w.rsu_smus if ch not in (w.top, w.bottom)]
        if bad:
            raise StationError(f"instruments.wgfmu.rsu_smus: channel {bad[0]} is neither top "
                               f"({w.top}) nor bottom ({w.bottom})")
    if not _routed(c):
        return
    for field in ("b1500", "k707b"):
        if getattr(c.instruments, field) is None:
            raise StationError(f"instruments.{field}: required for a wgfmu crossbar")
    if c.matrix is None:
        raise StationError("matrix: required for a wgfmu crossbar (shape != [1, 1])")
    missing = set(ROLES) - set(c.matrix.terminals)
    if missing:
        raise StationError(f"matrix.terminals: missing {sorted(missing)}")
    unknown = set(c.matrix.terminals) - set(ROLES) - {"gnd"} - set(_extra_smus(c))
    if unknown:
        raise StationError(f"matrix.terminals: unknown role {sorted(unknown)[0]!r} (the wgfmu "
                           "rig has top, bottom, v3, 2v3, gnd and smu<slot>)")


def _terminals(c) -> dict[str, str]:
    w, b = c.instruments.wgfmu, c.instruments.b1500
    out = {"top": f"wgfmu{w.top}", "bottom": f"wgfmu{w.bottom}", "gnd": "gnd"}
    if b is not None:
        out |= {"v3": f"smu{b.smu_v3}", "2v3": f"smu{b.smu_2v3}"}
        out |= {role: f"smu{slot}" for role, slot in _extra_smus(c).items()}
    return out


def _wiring(c) -> Wiring:
    t = _terminals(c)
    if not _routed(c):
        return Wiring(terminals=t, fixed={("row", 0): t["top"], ("col", 0): t["bottom"]})
    m = c.matrix
    return Wiring(tuple(tuple(x) for x in m.rows), tuple(tuple(x) for x in m.cols),
                  letters=dict(m.terminals), terminals=t)


def _smus(c, b1500, wiring: Wiring) -> list[SmuPort]:
    if b1500 is None:
        return []
    w, b = c.instruments.wgfmu, c.instruments.b1500
    if not _routed(c):
        lines = {w.top: (("row", 0),), w.bottom: (("col", 0),)}
        return [SmuPort(b1500.smu(slot), lines=lines[ch]) for ch, slot in w.rsu_smus.items()]
    roles = {"v3": b.smu_v3, "2v3": b.smu_2v3} | _extra_smus(c)
    return [SmuPort(b1500.smu(slot), letter=wiring.letters[role]) for role, slot in roles.items()]


def _instruments(c) -> tuple[str, ...]:
    if _routed(c):
        return ("k707b", "b1500", "wgfmu")
    return ("b1500", "wgfmu") if c.instruments.wgfmu.rsu_smus else ("wgfmu",)


def _build(c, drivers, wiring: Wiring, lab) -> WgfmuRig:
    w, b = c.instruments.wgfmu, c.instruments.b1500
    b1500 = drivers.get("b1500")
    kw = {"smu_v3": b.smu_v3, "smu_2v3": b.smu_2v3} if b is not None else {}
    return WgfmuRig(drivers["wgfmu"], w.address, b1500=b1500,
                    matrix=drivers.get("k707b"), wiring=wiring if wiring.routed else None,
                    top=w.top, bottom=w.bottom, limits=c.limits, read=c.read.settings(),
                    lab=lab, edge=c.pulse.edge, compliance=c.limits.i_compliance,
                    smus=_smus(c, b1500, wiring), rsu_smus=w.rsu_smus, **kw)


register(RigKind("wgfmu", _check, _instruments, _wiring, _build))
