"""A virtual die: several simulated crossbars sharing one clock and one master seed.

Per-crossbar generators come from `numpy.random.SeedSequence(seed).spawn(k)` in the order of the
crossbar names, so adding a crossbar at the end leaves the earlier ones unchanged.

Chip file: a numpy `.npz` archive (no pickles). Key `meta` holds one JSON document
(format, seed, clock, and per crossbar its config, the states of its two RNGs and the relaxation
time stamp); the arrays of crossbar NAME are stored under `NAME.G`, `NAME.Gv`, `NAME.stuck`,
`NAME.ds`, `NAME.dr`, `NAME.g0s`, `NAME.g0r`, `NAME.psi` (rows x cols) and the slow
fluctuators `NAME.rtn_amp`, `NAME.rtn_tau`, `NAME.rtn_state`, `NAME.rtn_next` (rows x cols x
fluctuators per device; SI units: S, V, s; psi and rtn_amp are fractions). Files written before
psi existed lack it, and then every device gets the config's volatile_cap; files written before
the fluctuators existed load without fluctuators.
Loading it gives a chip whose next operations are identical to those the saved chip would have
done.

`ChipLab` is what the rigs of a simulated station see behind their instruments (the
`protocols.rig.Lab` seam): the virtual clock, and the state of every crossbar on the die (incl.
RNGs) to commit with each unit of a campaign.
"""

from __future__ import annotations

import json
import os

import numpy as np

from protocols.rig import Lab
from simulator.clock import VirtualClock
from simulator.config import CrossbarConfig
from simulator.crossbar import _LATE_ARRAYS, _STATE_ARRAYS, Crossbar
from simulator.errors import SimulatorError

CHIP_FORMAT = "xbarlab-chip/1"


class ChipLab(Lab):
    """Crossbars sharing one virtual clock: waiting advances the clock, and the saved state is
    every crossbar's (arrays, RNG, relaxation time stamp) plus the clock."""

    restorable = True

    def __init__(self, crossbars: dict[str, Crossbar], clock: VirtualClock):
        self.crossbars, self.clock = crossbars, clock

    def now(self) -> float:
        return self.clock.now

    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds, "wait")

    def breakdown(self) -> dict[str, float]:
        return dict(self.clock.totals)

    def save_state(self) -> dict:
        return {"crossbars": {name: xb.state_dict(include_clock=False)
                              for name, xb in self.crossbars.items()},
                "clock": self.clock.state_dict()}

    def restore_state(self, state: dict) -> None:
        try:
            saved = state["crossbars"]
            if set(saved) != set(self.crossbars):
                raise KeyError(f"crossbars {sorted(saved)}, expected {sorted(self.crossbars)}")
            for name, xb in self.crossbars.items():
                xb.load_state_dict(saved[name])
            self.clock.load_state_dict(state["clock"])
        except (KeyError, TypeError, ValueError) as e:
            raise SimulatorError(f"saved simulator state does not fit this chip ({e})") from None


def default_layout(model: CrossbarConfig | None = None) -> dict[str, CrossbarConfig]:
    """Four 8x8 crossbars and four single crosspoints (1x1), all with the physics of `model`
    (a chip model: device parameters, line resistances, stuck rates; default: the shipped
    defaults)."""
    base = model or CrossbarConfig()
    out = {f"xbar{k}": base.model_copy(update={"rows": 8, "cols": 8}) for k in range(4)}
    out.update({f"dev{k}": base.model_copy(update={"rows": 1, "cols": 1}) for k in range(4)})
    return out


class VirtualChip:
    """Named crossbars on one die, one virtual clock, one seed."""

    def __init__(self, crossbars: dict[str, CrossbarConfig] | None = None, seed: int = 0,
                 clock: VirtualClock | None = None):
        layout = default_layout() if crossbars is None else dict(crossbars)
        if not layout:
            raise SimulatorError("a virtual chip needs at least one crossbar")
        self.seed = int(seed)
        self.clock = clock if clock is not None else VirtualClock()
        children = np.random.SeedSequence(self.seed).spawn(len(layout))
        self.crossbars: dict[str, Crossbar] = {
            name: Crossbar(cfg, seed=child, clock=self.clock)
            for (name, cfg), child in zip(layout.items(), children, strict=True)
        }
        self.lab = ChipLab(self.crossbars, self.clock)

    def __getitem__(self, name: str) -> Crossbar:
        try:
            return self.crossbars[name]
        except KeyError:
            raise SimulatorError(f"no crossbar {name!r} on this chip "
                                 f"(have {', '.join(self.crossbars)})") from None

    def __iter__(self):
        return iter(self.crossbars)

    def __len__(self) -> int:
        return len(self.crossbars)

    # -- chip file ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the whole chip state (incl. RNG states and clock) to an .npz chip file."""
        meta = {"format": CHIP_FORMAT, "seed": self.seed, "clock": self.clock.state_dict(),
                "crossbars": {}}
        arrays: dict[str, np.ndarray] = {}
        for name, xb in self.crossbars.items():
            if "." in name:
                raise SimulatorError(f"crossbar name {name!r} must not contain '.'")
            d = xb.state_dict(include_clock=False)
            meta["crossbars"][name] = {"config": d["config"], "rng": d["rng"],
                                       "rng_rtn": d["rng_rtn"], "t_gv": d["t_gv"]}
            for k in _STATE_ARRAYS:
                arrays[f"{name}.{k}"] = d[k]
        arrays["meta"] = np.array(json.dumps(meta))
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VirtualChip:
        """Read a chip file written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except (OSError, ValueError, KeyError) as e:
            raise SimulatorError(f"cannot read chip file {os.fspath(path)!r}: {e}") from e
        if meta.get("format") != CHIP_FORMAT:
            raise SimulatorError(f"{os.fspath(path)!r} is not a chip file "
                                 f"(format {meta.get('format')!r}, expected {CHIP_FORMAT!r})")
        chip = cls.__new__(cls)
        chip.seed = int(meta["seed"])
        chip.clock = VirtualClock()
        chip.clock.load_state_dict(meta["clock"])
        chip.crossbars = {}
        for name, m in meta["crossbars"].items():
            d = dict(m)
            try:
                for k in _STATE_ARRAYS:
                    if f"{name}.{k}" in arrays or k not in _LATE_ARRAYS:
                        d[k] = arrays[f"{name}.{k}"]
            except KeyError as e:
                raise SimulatorError(f"chip file {os.fspath(path)!r} lacks array {e}") from e
            chip.crossbars[name] = Crossbar.from_state_dict(d, clock=chip.clock)
        chip.lab = ChipLab(chip.crossbars, chip.clock)
        return chip

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}:{xb.shape[0]}x{xb.shape[1]}" for n, xb in self.crossbars.items())
        return f"VirtualChip(seed={self.seed}, {parts}, t={self.clock.now:.6g} s)"
