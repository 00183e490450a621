"""Keithley 707B switching matrix (TSP): routes lines, offers no terminal of its own."""

from __future__ import annotations

from pydantic import Field

from instruments.k707b import K707B
from xbarlab.station.registry import InstrumentCfg, InstrumentKind, register


class K707BCfg(InstrumentCfg):
    cards: dict[int, str] = Field(default_factory=lambda: {1: "7174A"},
                                  description="slot -> card model (emulated 707B)")


def _open(cfg: K707BCfg, resources, limits):
    return K707B.open(resources.visa(), cfg.resource, limits=limits, timeout=cfg.timeout)


def _emulate(cfg: K707BCfg, lab) -> None:
    from simulator.emulators import K707BEmulator

    lab.add_visa(cfg.resource, K707BEmulator(lab.world, cards=dict(cfg.cards)))


def _report(cfg: K707BCfg, matrix, wiring) -> list[str]:
    out = [f"707B      {cfg.resource}: {matrix.idn()}"]
    # the card in every slot the wiring uses, as the instrument reports it
    for slot in sorted({s for s, _ in wiring.rows + wiring.cols}):
        out.append(f"          slot {slot}: {matrix.slot(slot).idn()}")
    closed = matrix.closed_channels()
    out.append(f"          closed now: {', '.join(closed) if closed else 'none'}")
    return out


register(InstrumentKind("k707b", K707BCfg, lambda cfg: set(), _open, _emulate, _report))
