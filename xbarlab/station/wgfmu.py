"""Keysight B1530A WGFMU through Keysight's instrument library: channels `top` and `bottom`
are terminals `wgfmu<channel>` (e.g. `wgfmu101`). `rsu_smus` names the B1500 SMU cabled to each
channel's RSU: in SMU mode the RSU passes it through to the channel's cable (the DC path of a
single crosspoint on a probe card)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from instruments.wgfmu import Wgfmu
from xbarlab.station.registry import STRICT, InstrumentKind, register


class WgfmuCfg(BaseModel):
    model_config = STRICT
    address: str = Field(description="VISA address the WGFMU library opens")
    top: int = Field(101, description="channel on the top electrode (drive)")
    bottom: int = Field(102, description="channel on the bottom electrode (0 V, sense)")
    library: str | None = Field(None, description="path of Keysight's wgfmu library")
    rsu_smus: dict[int, int] = Field(default_factory=dict, description="channel -> B1500 SMU "
                                     "slot cabled to its RSU's SMU input (DC through the RSU)")


def _open(cfg: WgfmuCfg, resources, limits):
    def load():
        from instruments.wgfmu_ctypes import CtypesWgfmuLibrary

        return CtypesWgfmuLibrary(cfg.library)

    return Wgfmu(resources.library("wgfmu", load), limits=limits)


def _emulate(cfg: WgfmuCfg, lab) -> None:
    from simulator.emulators import EmulatedWgfmuLibrary

    lab.add_library("wgfmu", EmulatedWgfmuLibrary(
        lab.world, channels=(cfg.top, cfg.bottom), address=cfg.address,
        smu_inputs={ch: f"smu{slot}" for ch, slot in cfg.rsu_smus.items()}))


def _report(cfg: WgfmuCfg, wg, _wiring) -> list[str]:
    wg.open(cfg.address)  # a session proves the library and the instrument answer
    wg.close()
    return [f"WGFMU     {cfg.address}: session opened and closed, channels {cfg.top} (top), "
            f"{cfg.bottom} (bottom, sense)"]


register(InstrumentKind("wgfmu", WgfmuCfg, lambda cfg: {f"wgfmu{cfg.top}",
                                                        f"wgfmu{cfg.bottom}"},
                        _open, _emulate, _report))
