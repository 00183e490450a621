"""Keithley 4200A-SCS (KXCI): the 4225-PMU's two channels are terminals `pmu1` and `pmu2`."""

from __future__ import annotations

from instruments.k4200 import K4200
from xbarlab.station.registry import InstrumentCfg, InstrumentKind, register


def _open(cfg: InstrumentCfg, resources, limits):
    return K4200.open(resources.visa(), cfg.resource, limits=limits, timeout=cfg.timeout)


def _emulate(cfg: InstrumentCfg, lab) -> None:
    from simulator.emulators import K4200Emulator

    lab.add_visa(cfg.resource, K4200Emulator(lab.world))


def _report(cfg: InstrumentCfg, pmu, _wiring) -> list[str]:
    return [f"4200A     {cfg.resource}: {pmu.idn()}",
            f"          options: {', '.join(pmu.options())}"]


register(InstrumentKind("k4200", InstrumentCfg, lambda cfg: {"pmu1", "pmu2"}, _open, _emulate,
                        _report))
