"""Keysight B1500A (FLEX): SMU channel N (the module in slot N) is terminal `smuN`."""

from __future__ import annotations

from pydantic import Field

from instruments.b1500 import B1500, SMU_MODELS
from xbarlab.station.registry import InstrumentCfg, InstrumentKind, register


class B1500Cfg(InstrumentCfg):
    smu_v3: int = Field(2, ge=1, le=10, description="SMU channel holding V/3 lines")
    smu_2v3: int = Field(3, ge=1, le=10, description="SMU channel holding 2V/3 lines")
    modules: list[str] = Field(default_factory=lambda: ["B1530A", "B1517A", "B1517A"],
                               description="module per slot (its SMUs are the terminals; "
                                           "the emulated B1500 installs these)")


def _terminals(cfg: B1500Cfg) -> set[str]:
    return {f"smu{slot}" for slot, m in enumerate(cfg.modules, 1) if m in SMU_MODELS}


def _open(cfg: B1500Cfg, resources, limits):
    b1500 = B1500.open(resources.visa(), cfg.resource, limits=limits, timeout=cfg.timeout)
    try:
        b1500.connect()
    except BaseException:
        b1500.close()
        raise
    return b1500


def _emulate(cfg: B1500Cfg, lab) -> None:
    from simulator.emulators import B1500Emulator

    lab.add_visa(cfg.resource, B1500Emulator(lab.world, modules=list(cfg.modules)))


def _report(cfg: B1500Cfg, b1500, _wiring) -> list[str]:
    mods = b1500.modules()
    return [f"B1500A    {cfg.resource}: {b1500.idn()}",
            "          modules (UNT?): " + ", ".join(
                f"slot {i + 1} {m}" for i, (m, _) in enumerate(mods) if m != "0")]


register(InstrumentKind("b1500", B1500Cfg, _terminals, _open, _emulate, _report))
