"""The resumable loop of work units shared by every campaign.

A campaign is a list of work units in a fixed order derived from the config and the seed, and a
function that measures one unit and returns its rows. A unit is whatever the campaign says it is
(a descriptor the loop passes back to the campaign): a device as a (row, col) pair for most
campaigns, one tuning of one device for tuning/untuning, the programming of a device or one
scheduled read for retention. A unit is the most that a crash can lose, so long work is cut into
short units. The loop:

- starts at the store's first unfinished unit, so a re-run continues where a killed one stopped;
- gives the rig back the state committed with the last finished unit (`rig.restore_state`): on
  a simulated station the chip, its RNGs and clock, so the continued run sees exactly what the
  uninterrupted run would have seen (bit-identical results). A real rig has nothing to restore
  (`rig.restorable` is False): the devices are where the interrupted run left them, which is what
  a lab would measure anyway; this is logged;
- commits each unit's rows together with `rig.save_state()` in one store commit;
- leaves the rig in its safe state whatever happens (Ctrl-C included) and stops at the next
  unit when a Ctrl-C was lost in a finaliser (`protocols.interrupts`);
- shows a rich progress bar (units done / total, pulses, ETA, the current unit) and logs.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from database.runs import RunWriter
from protocols import interrupts
from protocols.errors import ProtocolError
from protocols.progress import Bar
from protocols.rig import CrossbarRig

log = logging.getLogger("xbarlab.campaign")


# -- saved rig state -------------------------------------------------------------------------

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


# -- the loop --------------------------------------------------------------------------------

@dataclass
class UnitResult:
    rows: dict[str, dict[str, np.ndarray]]
    pulses: int = 0


def restore_progress(title: str, store: RunWriter, total: int, rig: CrossbarRig,
                     unit: str = "devices") -> int:
    """Units already committed in `store`; a restorable rig (simulated station) gets back the
    state saved with the last commit, so the continuation equals an uninterrupted run."""
    start = store.units_done
    if not start or start >= total:
        return start
    if rig.restorable:
        blob = store.saved_state()
        if blob is None:
            raise ProtocolError(f"{store.path}: {start} units done but no simulator state "
                                "saved; cannot resume identically (pass --overwrite)")
        try:
            state = unpack_state(blob)
        except Exception as e:  # a format-1 file has no checksum on it
            raise ProtocolError(f"{store.path}: the saved simulator state is damaged ({e}); "
                                "cannot resume identically (pass --overwrite)") from None
        rig.restore_state(state)
        log.info("%s: resuming after %d of %d %s with the saved simulator state",
                 title, start, total, unit)
    else:
        log.warning("%s: resuming after %d of %d %s on hardware: devices are as the "
                    "interrupted run left them", title, start, total, unit)
    return start


def commit_state(rig: CrossbarRig) -> bytes | None:
    """What to store with a commit: the rig's saved state, packed (None on hardware)."""
    state = rig.save_state()
    return None if state is None else pack_state(state)


U = TypeVar("U")


def device_label(rc: tuple[int, int]) -> str:
    """What the progress bar and the log call a (row, col) unit."""
    return f"device ({rc[0]},{rc[1]})"


def run_units(*, title: str, rig: CrossbarRig, store: RunWriter, units: Sequence[U],
              work: Callable[[int, U], UnitResult], progress: bool = True,
              label: Callable[[U], str] = device_label, unit: str = "devices") -> None:
    """Measure units[store.units_done:] in order, committing after each one.

    `units` are the campaign's descriptors ((row, col) pairs unless the campaign says
    otherwise), `label` names one for the progress bar and the log, `unit` names them all
    ("devices", "tunings", ...)."""
    if store.info.units_total != len(units):
        raise ProtocolError(f"{title}: store expects {store.info.units_total} units, "
                            f"campaign has {len(units)}")
    start = restore_progress(title, store, len(units), rig, unit)
    bar = Bar(title, len(units), start, enabled=progress, unit=unit)
    try:
        with bar:
            for i in range(start, len(units)):
                interrupts.check()  # a Ctrl-C lost in a finaliser (e.g. during the commit)
                where = label(units[i])
                bar.current(where)
                res = work(i, units[i])
                store.commit(i, res.rows, commit_state(rig))
                bar.advance(res.pulses)
                log.debug("%s: unit %d, %s done, %d pulses", title, i, where, res.pulses)
            interrupts.check()  # the run is not complete if the last commit lost a Ctrl-C
    except BaseException:
        # whatever ended the loop (Ctrl-C too), nothing stays biased; the original error is
        # what the user must see, so a safe-state failure (a lost instrument) is only logged
        try:
            rig.safe_state()
        except Exception as e:
            log.error("%s: could not make every instrument safe after the error: %s", title, e)
        store.close()  # publishes what is committed, releases the file
        raise
    rig.safe_state()


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
