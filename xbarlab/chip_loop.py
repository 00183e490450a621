"""Chip in the loop: what `xbarlab infer`, `xbarlab repair`, the demo's repair step and
bench/repair.py share.

- `programmed`: the plan and crossbars of a transfer or repair run, and (simulated station)
  the station's virtual chip put back in the state committed with that run's last unit: the
  chip as the run left it;
- `calibration_of`: the periphery calibration a repair run left (applied by `xbarlab infer
  --from REPAIR.h5`);
- `prior_of`: what the programming run tells a repair (stuck devices, earlier tunings, the
  transfer's pulse count);
- `explain_gap`: on a simulated chip, why the analog accuracy differs from the read-back one,
  computed by measuring again with line resistance, device non-linearity and read noise
  switched off in turn (the chip is left exactly as it was). A simulator-only analysis: it
  measures with `SimulatedRig` (the array tester whose effects can be switched off), not
  through the station's instruments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from database.runs import list_runs, read_state
from protocols.campaigns._loop import unpack_state
from protocols.errors import ProtocolError
from protocols.inference import Calibration, InferConfig, analog_forward, predict
from protocols.plan import ConductancePlan, plan_logits
from xbarlab.errors import XbarlabError

#: protocols whose runs leave a programmed chip
PROGRAMMING = ("transfer", "repair")


@dataclass
class Programmed:
    plan: ConductancePlan
    crossbars: list[str]
    protocol: str
    path: Path
    config: dict
    run: str


def programmed(path: str | Path, station=None) -> Programmed:
    """The plan and crossbars of the transfer or repair run in `path`; with a simulated
    `station`, its chip is restored to the state committed with the run's last unit."""
    path = Path(path)
    runs = [i for i in list_runs(path) if i.protocol in PROGRAMMING]
    if not runs:
        raise XbarlabError(f"{path}: no transfer or repair run in it")
    info = runs[-1]
    plan = ConductancePlan.from_dict(info.config["plan"])
    got = Programmed(plan, list(info.config["crossbars"]), info.protocol, path, info.config,
                     info.name)
    if station is not None and station.chip is not None:
        blob = read_state(path, info.name)
        if blob is None:
            raise XbarlabError(f"{path}: no simulator state saved with the run; cannot put the "
                               "simulated chip back as it was programmed")
        want, have = info.station.get("sim", {}), station.describe()["sim"]
        keys = ("seed", "chip_sha256", "model_sha256")   # the chip and its device model
        if want and any(want.get(k) != have.get(k) for k in keys):
            raise XbarlabError(f"{path} was measured on another virtual chip (seed "
                               f"{want.get('seed')}, model {want.get('model')}) than the "
                               f"station's (seed {have['seed']}, model {have.get('model')})")
        station.chip.lab.restore_state(unpack_state(blob))
    return got


def calibration_of(prog: Programmed) -> Calibration | None:
    """The periphery calibration (per output gain and offset) the repair that programmed the
    chip fitted; None after a transfer or a repair that fitted none."""
    if prog.protocol != "repair":
        return None
    from protocols.repair import calibration_of as fitted
    from protocols.repair import load_repair

    return fitted(prog.plan, load_repair(prog.path, prog.run).tables["calibration"])


@dataclass
class Prior:
    stuck: np.ndarray          # devices known not to move
    tunings: tuple | None      # (conductance before, target, pulses) of the transfer's tunings
                               # (its re-verify tunings included)
    transfer_pulses: int | None


def prior_of(prog: Programmed) -> Prior:
    """Stuck devices, earlier tunings and the transfer's pulse count from the transfer (or
    the repair of a transfer) that programmed the chip."""
    n = prog.plan.n_devices
    if prog.protocol == "transfer":
        from protocols.transfer import load_transfer

        tr = load_transfer(prog.path)
        dev = tr.tables["devices"].sort_values("device")
        if len(dev) != n:
            raise XbarlabError(f"{prog.path}: the transfer is not complete")
        rv = tr.tables.get("reverify")
        stuck = ~dev.converged.to_numpy()
        if rv is not None:   # a device re-verify could not tune is stuck too
            stuck[rv.device[~rv.converged].to_numpy()] = True
        # the transfer's pulses: re-verify included (a repair budget of 20 % is of them all)
        tunings = [dev.g_initial, dev.target, dev.pulses]
        if rv is not None:
            tunings = [np.concatenate([a, b]) for a, b in
                       zip(tunings, (rv.g_read, rv.target, rv.pulses), strict=True)]
        # (not a programming cut off on hardware, `pulses_cut`: only its cap is known, and
        # counted at that it would raise the budget and flatter the repair's share)
        return Prior(stuck, tuple(np.asarray(a, float) for a in tunings),
                     int(dev.pulses.sum()) + (int(rv.pulses.sum()) if rv is not None else 0))
    stuck = np.zeros(n, bool)
    stuck[prog.config["stuck"]] = True
    return Prior(stuck, None, prog.config.get("transfer_pulses"))


#: the measurements of `explain_gap`: effects switched off
VARIANTS = {"measured": (), "no line resistance": ("lines",),
            "linear devices": ("nonlinearity",),
            "ideal array": ("lines", "nonlinearity", "noise", "stress")}


def explain_gap(plan: ConductancePlan, chip, crossbars: Sequence[str], x: np.ndarray,
                y: np.ndarray, cfg: InferConfig | None = None, *, latency=None,
                limits=None) -> dict:
    """Accuracy of the network on the simulated `chip` (a VirtualChip) measured as is and with
    each array effect switched off, beside the read-back estimate; and how much of the analog
    outputs' deviation from the ideal array (the exact matrix product of the devices' true
    conductances) each effect accounts for: ``share_lines`` = the fraction of the mean squared
    deviation that disappears without line and source resistance, ``share_nonlinearity``
    without the sinh I-V (with both the rest is read noise; shares of interacting effects need
    not add up to 1; the ideal array also holds the devices still, without the read-out's DC
    stress). The chip is restored afterwards."""
    from simulator.direct_rig import SimulatedRig

    saved = chip.lab.save_state()
    y = np.asarray(y).astype(np.int64)
    z, acc = {}, {}
    try:
        for name, off in VARIANTS.items():
            chip.lab.restore_state(saved)

            def opener(n, off=off):
                return SimulatedRig(chip[n], lab=chip.lab, ideal=off, latency=latency,
                                    limits=limits)

            z[name] = analog_forward(plan, opener, crossbars, x, cfg)[-1]
            acc[name] = float(np.mean(predict(z[name]) == y))
        chip.lab.restore_state(saved)
        g = np.empty(plan.n_devices)
        for t, name in enumerate(crossbars):
            d = plan.tile_devices(t)
            rig = SimulatedRig(chip[name], lab=chip.lab, latency=latency, limits=limits)
            g[d] = rig.read_array()[plan.row[d], plan.col[d]]
        z_rb = plan_logits(plan, g, x)
    finally:
        chip.lab.restore_state(saved)
    acc["read-back"] = float(np.mean(predict(z_rb) == y))
    ideal = z["ideal array"]

    def ms(a):
        return float(np.mean((a - ideal) ** 2))

    dev = ms(z["measured"])
    return {"accuracy": acc,
            "rms_deviation": {k: float(np.sqrt(ms(v))) for k, v in
                              {**z, "read-back": z_rb}.items()},
            "share_lines": 1.0 - ms(z["no line resistance"]) / dev if dev > 0 else 0.0,
            "share_nonlinearity": 1.0 - ms(z["linear devices"]) / dev if dev > 0 else 0.0}


def test_sets(plan: ConductancePlan) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The refit, repair and test sets of the plan's dataset (its `meta["dataset"]`)."""
    from database.datasets import chip_in_the_loop_sets

    name = plan.meta.get("dataset")
    if name not in ("moons", "digits"):
        raise ProtocolError("the plan does not say which dataset it was trained on (meta "
                            "'dataset'); export it with --model, which records it")
    return chip_in_the_loop_sets(name)
