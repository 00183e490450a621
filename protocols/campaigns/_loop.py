"""The resumable device loop shared by every campaign.

A campaign is a list of work units (devices, in a fixed order derived from the config and the
seed) and a function that measures one unit and returns its rows. The loop:

- starts at the store's first unfinished unit, so a re-run continues where a killed one stopped;
- on a simulated station, restores the chip state committed with the last finished unit, so the
  continued run sees exactly the devices, RNG and clock the uninterrupted run would have seen
  (bit-identical results). On real hardware there is nothing to restore: the devices are where
  the interrupted run left them, which is what a lab would measure anyway; this is logged;
- commits each unit's rows together with the chip state in one store commit;
- leaves the rig in its safe state whatever happens (Ctrl-C included) and stops at the next
  unit when a Ctrl-C was lost in a finaliser (`instruments.interrupts`);
- shows a rich progress bar (units done / total, pulses, ETA, current device) and logs.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from database.runs import RunWriter
from instruments import interrupts
from protocols.errors import ProtocolError
from protocols.progress import Bar

log = logging.getLogger("xbarlab.campaign")


# -- simulated chip state --------------------------------------------------------------------

def _enc(o: Any):
    if isinstance(o, np.ndarray):
        return {"__nd__": base64.b64encode(np.ascontiguousarray(o).tobytes()).decode(),
                "dtype": o.dtype.str, "shape": list(o.shape)}
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _dec(d: dict):
    if "__nd__" in d:
        return np.frombuffer(base64.b64decode(d["__nd__"]), dtype=np.dtype(d["dtype"])).reshape(
            d["shape"]).copy()
    return d


def pack_state(state: dict) -> bytes:
    """A state dict (numpy arrays, numbers, strings, nested dicts) as compact bytes."""
    return zlib.compress(json.dumps(state, default=_enc).encode())


def unpack_state(blob: bytes) -> dict:
    return json.loads(zlib.decompress(blob).decode(), object_hook=_dec)


@dataclass
class SimHooks:
    """How to save and restore the simulated hardware behind a rig, and to let time pass."""

    get: Callable[[], dict]
    set: Callable[[dict], None]
    clock: Any = None   # a VirtualClock-like object with advance(seconds, category)


def sim_hooks(rig, chip=None) -> SimHooks | None:
    """Hooks for a simulated station, or None for real hardware.

    `chip` (a VirtualChip: `.crossbars` dict and `.clock`) covers the instrument-backed sim
    stations; a rig with a `.crossbar` having `state_dict()` covers `SimulatedRig`. A rig may
    also provide `sim_state_dict()` / `load_sim_state_dict()` itself.
    """
    if hasattr(rig, "sim_state_dict") and hasattr(rig, "load_sim_state_dict"):
        return SimHooks(rig.sim_state_dict, rig.load_sim_state_dict, getattr(rig, "sim_clock", None))
    if chip is not None and hasattr(chip, "crossbars"):
        def get_chip() -> dict:
            d = {name: xb.state_dict(include_clock=False) for name, xb in chip.crossbars.items()}
            return {"crossbars": d, "clock": chip.clock.state_dict()}

        def set_chip(d: dict) -> None:
            for name, xb in chip.crossbars.items():
                xb.load_state_dict(d["crossbars"][name])
            chip.clock.load_state_dict(d["clock"])

        return SimHooks(get_chip, set_chip, chip.clock)
    xb = getattr(rig, "crossbar", None)
    if xb is not None and hasattr(xb, "state_dict") and hasattr(xb, "load_state_dict"):
        return SimHooks(xb.state_dict, xb.load_state_dict, getattr(xb, "clock", None))
    return None


def let_time_pass(rig, seconds: float, sim: SimHooks | None) -> None:
    """Wait `seconds` of instrument time: virtual on a simulator, real on hardware."""
    if seconds <= 0:
        return
    if hasattr(rig, "wait"):
        rig.wait(seconds)
    elif sim is not None and sim.clock is not None:
        sim.clock.advance(seconds, "wait")
    else:
        time.sleep(seconds)


# -- the loop --------------------------------------------------------------------------------

@dataclass
class UnitResult:
    rows: dict[str, dict[str, np.ndarray]]
    pulses: int = 0


def restore_progress(title: str, store: RunWriter, total: int, sim: SimHooks | None) -> int:
    """Devices already committed in `store`; on a sim station the chip state saved with the last
    commit is put back, so the continuation equals an uninterrupted run."""
    start = store.devices_done
    if not start or start >= total:
        return start
    if sim is not None:
        blob = store.saved_state()
        if blob is None:
            raise ProtocolError(f"{store.path}: {start} devices done but no simulator state "
                                "saved; cannot resume identically (pass --overwrite)")
        sim.set(unpack_state(blob))
        log.info("%s: resuming at device %d/%d with the saved simulator state",
                 title, start + 1, total)
    else:
        log.warning("%s: resuming at device %d/%d on hardware: devices are as the "
                    "interrupted run left them", title, start + 1, total)
    return start


def run_units(*, title: str, rig, store: RunWriter, units: Sequence[tuple[int, int]],
              work: Callable[[int, tuple[int, int]], UnitResult], sim: SimHooks | None,
              progress: bool = True) -> None:
    """Measure units[store.devices_done:] in order, committing after each one."""
    if store.info.devices_total != len(units):
        raise ProtocolError(f"{title}: store expects {store.info.devices_total} devices, "
                            f"campaign has {len(units)}")
    start = restore_progress(title, store, len(units), sim)
    bar = Bar(title, len(units), start, enabled=progress)
    try:
        with bar:
            for i in range(start, len(units)):
                interrupts.check()  # a Ctrl-C lost in a finaliser (e.g. during the commit)
                rc = units[i]
                bar.current(f"device ({rc[0]},{rc[1]})")
                res = work(i, rc)
                state = _pack(sim)
                store.commit_device(i, res.rows, state)
                bar.advance(res.pulses)
                log.debug("%s: device %d (%d,%d) done, %d pulses", title, i, *rc, res.pulses)
            interrupts.check()  # the run is not complete if the last commit lost a Ctrl-C
    except BaseException:
        # whatever ended the loop (Ctrl-C too), nothing stays biased; the original error is
        # what the user must see, so a safe-state failure (a lost instrument) is only logged
        try:
            rig.safe_state()
        except Exception as e:
            log.error("%s: could not make every instrument safe after the error: %s", title, e)
        raise
    rig.safe_state()


def _pack(sim: SimHooks | None) -> bytes | None:
    return None if sim is None else pack_state(sim.get())



def raster(shape: tuple[int, int], devices: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """The configured devices, or every device row by row (top to bottom, left to right)."""
    rows, cols = shape
    if devices is None:
        return [(r, c) for r in range(rows) for c in range(cols)]
    out = [(int(d[0]), int(d[1])) for d in devices]
    for r, c in out:
        if not (0 <= r < rows and 0 <= c < cols):
            raise ProtocolError(f"device ({r},{c}) is outside the {rows}x{cols} crossbar")
    if len(set(out)) != len(out):
        raise ProtocolError("the device list names a device twice")
    return out


def unit_rng(seed: int | None, index: int) -> np.random.Generator:
    """A generator for unit `index` that does not depend on how many units ran before."""
    return np.random.default_rng(np.random.SeedSequence([0 if seed is None else seed, index]))
