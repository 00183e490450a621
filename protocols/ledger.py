"""Write-ahead record of the tunings of a unit still in progress, on hardware.

A campaign commits its rows once per unit (`database.runs`), so a unit is the most a crash can
lose. Where a unit tunes many devices (a repair round: up to a whole layer; the transfer's last
device of a tile, with the tile's re-verify) that is a lot, and on hardware more than data: the
pulses reached the chip, a resumed run that did not know them would spend its budget again, and
the measured tunings would be lost. On a simulated station the chip is restored to its state at the
last commit, so nothing of the lost unit happened; on a real one (`rig.restorable` False) the
devices stay where the unit left them.

So, on hardware only, every tuning is written here before its first pulse (``reserve``: unit,
device, pulse cap) and again when it ends (``done``: its whole row), each line flushed to disk
before the instrument is touched; the file is emptied once the unit is committed. A resumed run
reads back what the unit did (`recover`): the tunings that ended, with their rows, and those cut
off, whose pulses are unknown and so are booked at their cap. A line torn by the crash is the
last one and ignored (a torn ``reserve`` was never acted on; a torn ``done`` leaves its
``reserve``, booked at the cap).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from protocols.errors import ProtocolError

log = logging.getLogger("xbarlab.ledger")


@dataclass
class Recovered:
    """What the interrupted unit did: rows of tunings that ended, and (device, target, cap)
    of those cut off."""

    done: list[dict] = field(default_factory=list)
    cut: list[tuple[int, float, int]] = field(default_factory=list)
    cut_extra: list[dict] = field(default_factory=list)   # what each cut one's reserve added

    @property
    def devices(self) -> list[int]:
        return [int(r["device"]) for r in self.done] + [d for d, _t, _c in self.cut]


class Ledger:
    """The tunings of the unit in progress of run `run` of store `store` (module docstring).

    `kind` tells apart tunings of one unit that a protocol books differently (the transfer:
    a device's programming and its tile's re-verify tunings, which may tune the same
    device)."""

    def __init__(self, store: str | os.PathLike, run: str):
        self.path = Path(f"{os.fspath(store)}.{run}.tunings")
        self.run = run

    def _write(self, entry: dict) -> None:
        line = json.dumps({"run": self.run, **entry}, allow_nan=True) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise ProtocolError(f"cannot record a tuning in {self.path} before pulsing ({e}); "
                                "nothing was pulsed") from None

    def reserve(self, unit: int, device: int, target: float, cap: int, *,
                kind: str = "tuning", extra: dict | None = None) -> None:
        self._write({"unit": int(unit), "kind": kind, "device": int(device),
                     "target": float(target), "cap": int(cap),
                     **({"extra": _plain(extra)} if extra else {})})

    def done(self, unit: int, row: dict, *, kind: str = "tuning") -> None:
        self._write({"unit": int(unit), "kind": kind, "row": _plain(row)})

    def clear(self) -> None:
        """The unit is committed: nothing here is needed any more."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:   # left behind, it is ignored by unit number on a resume
            log.warning("could not remove %s: %s", self.path, e)

    def recover(self, unit: int, *, kind: str = "tuning") -> Recovered:
        """What unit `unit` (the one a resumed run starts with) did before it was cut off: its
        tunings of `kind`."""
        out = Recovered()
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        except (OSError, UnicodeDecodeError) as e:
            raise ProtocolError(f"cannot read {self.path}, the record of the tunings the "
                                f"interrupted run made ({e}); its pulses would go uncounted") \
                from None
        # the reserves not yet ended, in file order: a device cut off and tuned again in the
        # resumed unit has one reserve per attempt, and each cut attempt's pulses reached the
        # chip; a ``done`` ends its device's latest reserve
        pending: list[dict] = []
        for i, text in enumerate(lines):
            try:
                e = json.loads(text)
                if (e.get("run") != self.run or int(e["unit"]) != unit
                        or e.get("kind", "tuning") != kind):
                    continue
                if "row" in e:
                    out.done.append(e["row"])
                    d = int(e["row"]["device"])
                    mine = [k for k, p in enumerate(pending) if p["device"] == d]
                    if mine:
                        del pending[mine[-1]]
                else:
                    pending.append({"device": int(e["device"]), "target": float(e["target"]),
                                    "cap": int(e["cap"]), "extra": dict(e.get("extra", {}))})
            except (ValueError, KeyError, TypeError):
                if i == len(lines) - 1:   # torn by the crash
                    log.warning("%s: ignoring its last line, cut off by the crash", self.path)
                    continue
                raise ProtocolError(f"{self.path}: line {i + 1} is damaged; the interrupted "
                                    "run's pulses cannot be counted") from None
        out.cut = [(p["device"], p["target"], p["cap"]) for p in pending]
        out.cut_extra = [p["extra"] for p in pending]
        return out


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if hasattr(v, "tolist"):   # numpy scalars and arrays; NaN is written as NaN
        return v.tolist()
    return v
