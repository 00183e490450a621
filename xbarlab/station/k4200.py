"""Keithley 4200A-SCS (KXCI): the 4225-PMU's two channels are terminals `pmu1` and `pmu2`; its SMUs
are `ksmu<n>` (names other than the B1500's `smu<n>`). SMU1 and SMU2 reach the cables of PMU
channels 1 and 2 through the 4225-RPMs (so they offer no terminal of their own); SMU3 and up are
cabled to matrix rows of their own (`smu3`, `smu4` in the station file's `matrix.terminals`)."""

from __future__ import annotations

from pydantic import Field

from instruments.k4200 import K4200
from xbarlab.station.registry import InstrumentCfg, InstrumentKind, register


class K4200Cfg(InstrumentCfg):
    smus: int = Field(4, ge=0, le=8, description="SMUs installed (SMU1..SMUn; SMU1 and SMU2 "
                      "behind the RPMs)")


def _terminals(cfg: K4200Cfg) -> set[str]:
    return {"pmu1", "pmu2"} | {f"ksmu{n}" for n in range(3, cfg.smus + 1)}


def _open(cfg: K4200Cfg, resources, limits):
    return K4200.open(resources.visa(), cfg.resource, limits=limits, timeout=cfg.timeout,
                      smus=cfg.smus)


def _emulate(cfg: K4200Cfg, lab) -> None:
    from simulator.emulators import K4200Emulator

    lab.add_visa(cfg.resource, K4200Emulator(lab.world, smus=cfg.smus))


def _report(cfg: K4200Cfg, pmu, _wiring) -> list[str]:
    return [f"4200A     {cfg.resource}: {pmu.idn()}",
            f"          options: {', '.join(pmu.options())}"]


register(InstrumentKind("k4200", K4200Cfg, _terminals, _open, _emulate, _report))
