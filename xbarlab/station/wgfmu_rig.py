"""`rig: wgfmu`: the B1500A + B1530A WGFMU rig (`instruments.rigs.WgfmuRig`).

A single crosspoint (shape [1, 1]) sits on a probe card: the top channel on the word line, the
bottom channel (0 V, sense) on the bit line. A crossbar is routed by the 707B: roles top and
bottom are the WGFMU channels, v3 and 2v3 the B1500 SMUs named in `instruments.b1500`.
"""

from __future__ import annotations

from instruments.rigs import WgfmuRig
from instruments.wiring import Wiring
from xbarlab.errors import StationError
from xbarlab.station.registry import RigKind, register

ROLES = ("top", "bottom", "v3", "2v3")


def _routed(c) -> bool:
    return tuple(c.shape) != (1, 1)


def _check(c) -> None:
    if c.instruments.wgfmu is None:
        raise StationError("instruments.wgfmu: required for rig 'wgfmu'")
    if c.read.scheme != "grounded":
        raise StationError(f"read.scheme: {c.read.scheme!r} needs the PMU rig's pulse "
                           "divider; a wgfmu station reads grounded")
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


def _terminals(c) -> dict[str, str]:
    w, b = c.instruments.wgfmu, c.instruments.b1500
    out = {"top": f"wgfmu{w.top}", "bottom": f"wgfmu{w.bottom}", "gnd": "gnd"}
    if b is not None:
        out |= {"v3": f"smu{b.smu_v3}", "2v3": f"smu{b.smu_2v3}"}
    return out


def _wiring(c) -> Wiring:
    t = _terminals(c)
    if not _routed(c):
        return Wiring(terminals=t, fixed={("row", 0): t["top"], ("col", 0): t["bottom"]})
    m = c.matrix
    return Wiring(tuple(tuple(x) for x in m.rows), tuple(tuple(x) for x in m.cols),
                  letters=dict(m.terminals), terminals=t)


def _build(c, drivers, wiring: Wiring, lab) -> WgfmuRig:
    w, b = c.instruments.wgfmu, c.instruments.b1500
    smus = {"smu_v3": b.smu_v3, "smu_2v3": b.smu_2v3} if b is not None else {}
    return WgfmuRig(drivers["wgfmu"], w.address, b1500=drivers.get("b1500"),
                    matrix=drivers.get("k707b"), wiring=wiring if wiring.routed else None,
                    top=w.top, bottom=w.bottom, limits=c.limits, read=c.read.settings(),
                    lab=lab, edge=c.pulse.edge, compliance=c.limits.i_compliance, **smus)


register(RigKind("wgfmu", _check,
                 lambda c: ("k707b", "b1500", "wgfmu") if _routed(c) else ("wgfmu",),
                 _wiring, _build))
