"""Analog inference: the programmed network computing on its crossbars.

For each input, each layer's tiles are driven on their rows with voltages proportional to the
layer's inputs (and the bias input), every column held at virtual ground; each used column's
current is measured (`CrossbarRig.column_currents`), the differential pairs are subtracted,
the partial sums of a layer's tiles are added, the result is scaled back to the weights' units
and the activation is applied in software before the next layer's tiles are driven. Every
sneak path, line resistance and device non-linearity of the array is in the result.

Encoding (per input pattern and layer). The plan's layout (`training.tiles`): device-matrix row
= input (the bias is an input of constant 1), column 2o = G+ of output o, 2o+1 = G-, cut into
tiles. With ``a = max(1, max_i |h_i|)`` over the layer's input vector h, word line of input i
is driven at ``v_i = v_in h_i / a`` and the bias row at ``v_in / a``, so the largest level of a
pattern is exactly ``v_in`` and nothing ever exceeds it. Column currents give the
pre-activation

    z_o = sum over the layer's tiles (I[G+ column of o] - I[G- column of o]) * a / v_in * s / (Gmax - Gmin)

(s: the layer's read-out scale), which equals the plan's numpy inference (`plan_logits`) when
the devices are linear and the lines ideal: then I = sum_i G_i v_i.

Read range. Inputs are DC levels in [-v_in, v_in]; ``v_in`` (default 0.1 V) must stay below
``v_switch / margin``: v_switch is the devices' lowest switching threshold (0.75 V: the TiO2
model's SET threshold 1.05 V at 100 uS and RESET threshold 1.15 V at 400 uS less 3 sigma of
their device-to-device spread; physics.md §3.3), margin 3. The station's read limit is checked
by the rig seam on every level. Below the thresholds is not enough: a read-out pattern is a DC
level held for the SMU's settling and integration (2.7 ms on the 4200), not a 10 us verify
read, and on the simulator (its DC stress law and stress-stimulated fluctuators) each pattern
at 0.2 V ages a device's slow fluctuators about as much as a V/3 half-select pulse; a repair
measures thousands of patterns per device. The SET drive falls by e per 80 mV (V0 of the SET
branch), so 0.1 V cuts that stress to 0.29 of 0.2 V's, at half the signal (the read noise of a
0.1 PLC current stays far below it): on three half-moons chips per network the repair through
sim-pmu's SMUs ended 94.2 / 92.2 % (regular / hardware-aware) at 0.1 V against 86.3 / 92.5 %
at 0.2 V (docs/chip-in-the-loop.md).

Channel counts. A call drives at most ``channels.sources`` rows and measures at most
``channels.meters`` columns, both together at most ``channels.lines`` (on a station: its pool
of SMUs; the 4200's four SMUs on an 8x8 crossbar: 1 to 3 rows and 3 to 1 columns per call).
More columns than meters: the same patterns are applied again for each group of columns (exact:
every column is at 0 V either way). More rows than sources: rows are driven in groups and the
currents added (superposition: exact for linear devices, and for any devices on ideal lines,
where each device sees only its own row's level; with line resistance and the sinh I-V
together approximate, 0.04 % rms on the half-moons tiles). Every column group drives each
device of the tile's rows with every pattern again, a DC stress that moves the devices, while
a row group drives only its own rows: `read_out_split` takes, per tile, the split of a shared
pool with the fewest column groups, then the fewest calls (a 3x8 tile on the 4200: 1 row + 3
columns per call, 9 calls, each device driven 3 times per pattern; 3 + 1 took 8 calls and
drove each device 8 times).
Each group is one call, which on a station is one DC pass (matrix routing, SMUs prepared,
every pattern forced and measured again): the run logs how many row and column groups each
tile needs and records the largest counts in its summary (``row_groups``, ``col_groups``).

Storage (database.runs, protocol "inference"): the plan and the encoding are the run config;
units of work = (tile, batch of test points), tile by tile in the plan's order (so a station that
reaches one crossbar at a time moves its probes once per tile); tables

- ``readback``     each tile's devices read back (grounded reads) before its analog read-out;
- ``drive``        point, tile, row, volts: every level applied;
- ``currents``     point, tile, col, current [A]: every column current measured;
- ``outputs``      point, layer, out, value: pre-activations z from the currents (the run
                   config's ``calibration`` applied: identity unless a repair fitted one);
- ``predictions``  point, label, predicted (analog), predicted_readback (the numpy inference
                   from the read-back conductances), predicted_software (the plan's weights);
- ``timing``       per unit: instrument time by category [s] (NaN categories on hardware).

A killed run resumes at the next unit; on a simulated station the chip is restored to the state
committed with the last unit, so the resumed file equals an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from database.display import Metric
from database.runs import RunWriter
from protocols import interrupts
from protocols.campaigns._loop import commit_state, restore_progress
from protocols.errors import ProtocolError
from protocols.plan import MINUS, ConductancePlan, activate, check_crossbar, plan_forward
from protocols.progress import Bar
from protocols.rig import Channels, CrossbarRig
from protocols.transfer import data_digest, measured_conductances, stored_plan_run

log = logging.getLogger("xbarlab.inference")

PROTOCOL = "inference"
#: instrument-time categories kept per unit ("other": whatever the rig books elsewhere)
TIME_CATEGORIES = ("round_trip", "command", "relay", "pulse", "read", "dc", "dc_settle",
                   "dc_integration", "other")
ANALOG, READBACK = 0, 1  # `timing.kind`

#: the summary's metrics (``protocols.summaries``)
SUMMARY = {
    "points": Metric("test points"),
    "tiles": Metric("tiles (one crossbar each)"),
    "row_groups": Metric("row groups driven one after the other per tile"),
    "col_groups": Metric("column groups measured one after the other per tile"),
    "accuracy": Metric("test accuracy on the crossbars (column currents)", "fraction"),
    "accuracy_readback": Metric("test accuracy estimated from read-back conductances",
                                "fraction"),
    "accuracy_software": Metric("test accuracy in software (the plan's weights)", "fraction"),
    "agreement_readback": Metric("points where the analog and read-back predictions agree",
                                 "fraction"),
    "instrument_time_s": Metric("instrument time", "s"),
    "readback_time_s": Metric("instrument time of the read-back maps", "s"),
    "analog_time_s": Metric("instrument time of the analog read-out", "s"),
    "per_inference_s": Metric("instrument time per inference", "s"),
    "per_inference_by_category_s": Metric("per inference, by category", "s"),
}

READBACK_COLUMNS = {"device": ("i4", "1"), "tile": ("i4", "1"), "row": ("i4", "1"),
                    "col": ("i4", "1"), "target": ("f8", "S"), "g": ("f8", "S")}
DRIVE_COLUMNS = {"point": ("i4", "1"), "tile": ("i4", "1"), "row": ("i4", "1"),
                 "volts": ("f8", "V")}
CURRENT_COLUMNS = {"point": ("i4", "1"), "tile": ("i4", "1"), "col": ("i4", "1"),
                   "current": ("f8", "A")}
OUTPUT_COLUMNS = {"point": ("i4", "1"), "layer": ("i4", "1"), "out": ("i4", "1"),
                  "value": ("f8", "1")}
PREDICTION_COLUMNS = {"point": ("i4", "1"), "label": ("i8", "1"), "predicted": ("i8", "1"),
                      "predicted_readback": ("i8", "1"), "predicted_software": ("i8", "1")}
TIMING_COLUMNS = {"unit": ("i4", "1"), "tile": ("i4", "1"), "kind": ("i1", "0=analog, 1=read-back"),
                  "points": ("i4", "1"), "seconds": ("f8", "s"),
                  **{c: ("f8", "s") for c in TIME_CATEGORIES}}
TABLES = {"readback": READBACK_COLUMNS, "drive": DRIVE_COLUMNS, "currents": CURRENT_COLUMNS,
          "outputs": OUTPUT_COLUMNS, "predictions": PREDICTION_COLUMNS, "timing": TIMING_COLUMNS}


class InferConfig(BaseModel):
    """How inputs become voltages. SI units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v_in: float = Field(0.1, gt=0, le=1.0, description="full-scale input level [V]: the largest "
                        "|input| of each pattern (or the bias input) is driven at this voltage "
                        "(low: each pattern's DC stress disturbs the devices)")
    v_switch: float = Field(0.75, gt=0, le=5.0, description="lowest switching threshold of the "
                            "devices [V] (TiO2: 1.05 V SET at 100 uS less 3 sigma of the "
                            "device-to-device spread)")
    margin: float = Field(3.0, ge=1.0, le=100.0, description="v_in must stay below v_switch / "
                          "margin (non-disturbing read range)")
    batch: int = Field(50, ge=1, le=100_000, description="test points per unit of work")

    @model_validator(mode="after")
    def _read_range(self) -> InferConfig:
        if self.v_in * self.margin > self.v_switch:
            raise ValueError(f"v_in {self.v_in} V is not a non-disturbing read level: it must stay "
                             f"below v_switch / margin = {self.v_switch / self.margin:.3f} V")
        return self


# -- the encoding: which line carries what ---------------------------------------------------

@dataclass(frozen=True)
class TileMap:
    """What the used lines of one tile carry: ``inputs[i]`` is the layer input on row i (-1:
    the bias input), ``outs[j]`` / ``signs[j]`` the output and sign (0 G+, 1 G-) on column j."""

    tile: int
    layer: int
    inputs: np.ndarray
    outs: np.ndarray
    signs: np.ndarray

    @property
    def rows(self) -> np.ndarray:
        return np.arange(self.inputs.size)

    @property
    def cols(self) -> np.ndarray:
        return np.arange(self.outs.size)


def tile_maps(plan: ConductancePlan) -> list[TileMap]:
    """One TileMap per tile of the plan (rows and columns from 0 up to the tile's used size)."""
    out = []
    for t in range(plan.n_tiles):
        d = plan.tile_devices(t)
        h, w = (int(v) for v in plan.tile_shape[t])
        inputs = np.full(h, -2, np.int64)
        outs = np.full(w, -1, np.int64)
        signs = np.full(w, -1, np.int64)
        inputs[plan.row[d]] = plan.inp[d]
        outs[plan.col[d]] = plan.out[d]
        signs[plan.col[d]] = plan.sign[d]
        if (inputs == -2).any() or (outs < 0).any():
            raise ProtocolError(f"conductance plan: tile {t} has an unused line inside its "
                                f"{h}x{w} block")
        out.append(TileMap(t, int(plan.tile_layer[t]), inputs, outs, signs))
    return out


def input_scale(h: np.ndarray) -> np.ndarray:
    """Per pattern, the value driven at full scale: max(1, max |h|) (1 is the bias input)."""
    return np.maximum(1.0, np.abs(h).max(axis=1, initial=0.0))


def drive_levels(tm: TileMap, h: np.ndarray, scale: np.ndarray, v_in: float) -> np.ndarray:
    """Voltages (k, rows of the tile) for layer inputs h (k, n_in) with per-pattern scale."""
    x = np.where(tm.inputs[None, :] < 0, 1.0, h[:, np.maximum(tm.inputs, 0)])
    return v_in * x / scale[:, None]


def layer_output(plan: ConductancePlan, layer: int, maps: Sequence[TileMap],
                 currents: dict[int, np.ndarray], scale: np.ndarray, v_in: float) -> np.ndarray:
    """Pre-activations z (k, n_out) of `layer` from its tiles' column currents (k, cols)."""
    n_out = plan.sizes[layer + 1]
    acc = np.zeros((scale.size, n_out))
    for tm in maps:
        if tm.layer != layer:
            continue
        signed = currents[tm.tile] * np.where(tm.signs == MINUS, -1.0, 1.0)[None, :]
        np.add.at(acc.T, tm.outs, signed.T)
    return acc * (scale[:, None] / v_in) * (plan.scales[layer] / (plan.g_max - plan.g_min))


@dataclass(frozen=True)
class Calibration:
    """The periphery's digital calibration: per output o of each layer, a gain and an offset
    applied to the pre-activation measured from the column currents before the activation,
    ``z' = gain[o] * z + offset[o]``. It moves no conductance (no pulse): a repair fits it
    (`protocols.repair`, `RepairConfig.calibrate`) and stores it with its run; whatever uses the
    repaired chip afterwards (`xbarlab infer --from REPAIR.h5`) applies it."""

    gain: tuple[np.ndarray, ...]
    offset: tuple[np.ndarray, ...]

    @classmethod
    def identity(cls, plan: ConductancePlan) -> Calibration:
        n = plan.sizes[1:]
        return cls(tuple(np.ones(k) for k in n), tuple(np.zeros(k) for k in n))

    def apply(self, layer: int, z: np.ndarray) -> np.ndarray:
        return self.gain[layer] * z + self.offset[layer]

    def raw(self, layer: int, z: np.ndarray) -> np.ndarray:
        """The measured pre-activation that `apply` turned into z."""
        return (z - self.offset[layer]) / self.gain[layer]

    def with_layer(self, layer: int, gain: np.ndarray, offset: np.ndarray) -> Calibration:
        g, o = list(self.gain), list(self.offset)
        g[layer], o[layer] = np.asarray(gain, float), np.asarray(offset, float)
        return Calibration(tuple(g), tuple(o))

    def flipped(self, layer: int, unit: int) -> Calibration:
        """The calibration with output `unit` of `layer` negated, ``z' = -(gain z + offset)``:
        the periphery subtracts that unit's column pair the other way round (no pulse). Under a
        sigmoid (s(-z) = 1 - s(z)) or tanh (odd) activation, the next layer's weights from that
        unit can then change sign (with its biases), so a pair whose stuck device makes the
        wanted sign unreachable reaches the flipped weight (`protocols.repair`, "flip")."""
        g, o = self.gain[layer].copy(), self.offset[layer].copy()
        g[unit], o[unit] = -g[unit], -o[unit]
        return self.with_layer(layer, g, o)

    def to_dict(self) -> dict:
        return {"gain": [a.tolist() for a in self.gain],
                "offset": [a.tolist() for a in self.offset]}


def activation(plan: ConductancePlan, z: np.ndarray) -> np.ndarray:
    """The hidden layers' activation, as the plan's numpy inference applies it."""
    return activate(plan.activation, z)


def predict(z_last: np.ndarray) -> np.ndarray:
    """Classes from the last layer's pre-activations (logit > 0 for one output, else argmax)."""
    return (z_last[:, 0] > 0).astype(np.int64) if z_last.shape[1] == 1 else \
        z_last.argmax(1).astype(np.int64)


def read_out_split(ch: Channels, rows: int, cols: int) -> tuple[int, int]:
    """(rows driven, columns metered) per call for a tile of `rows` x `cols` on channels `ch`:
    the split that drives each device with the fewest patterns, then the fewest calls.

    Each call drives its rows with every pattern and holds every other line at 0 V, so each
    device of a driven row carries its row's level for every pattern of the call, whether its
    column is metered or not: a device sees the patterns once per column group. That DC stress
    moves the devices (the simulator: it ages their slow fluctuators as a half-select pulse
    does), so column groups cost disturbance; row groups cost none (a device is driven only
    in its own group) and their superposition measured exact to 0.04 % on the half-moons tiles
    (docs/chip-in-the-loop.md)."""
    best = None
    for m in range(1, min(cols, ch.meters) + 1):
        s = min(rows, ch.sources, (ch.lines or rows + m) - m)
        if s < 1:
            continue
        col_groups, row_groups = -(-cols // m), -(-rows // s)
        key = (col_groups, col_groups * row_groups)
        if best is None or key < best[0]:
            best = key, (s, m)
    assert best is not None   # m = 1 always fits: Channels holds at least two lines
    return best[1]


def measure_tile(rig: CrossbarRig, tm: TileMap, volts: np.ndarray) -> np.ndarray:
    """Column currents (k, used cols) of one tile for the drive `volts` (k, used rows),
    time-multiplexed over the rig's sources (superposition) and meters (exact) as
    `read_out_split` says."""
    ch = rig.channels
    if ch is None:  # let the seam raise its NotAvailableError
        return rig.column_currents(tm.rows, volts, tm.cols)
    s, m = read_out_split(ch, tm.rows.size, tm.cols.size)
    out = np.zeros((volts.shape[0], tm.cols.size))
    for c0 in range(0, tm.cols.size, m):
        cols = tm.cols[c0:c0 + m]
        for r0 in range(0, tm.rows.size, s):
            rows = tm.rows[r0:r0 + s]
            out[:, c0:c0 + cols.size] += rig.column_currents(rows, volts[:, rows], cols)
    return out


def tile_groups(rig: CrossbarRig, tm: TileMap) -> tuple[int, int]:
    """(row groups, column groups) `measure_tile` splits the tile into on `rig`: each pair is
    one `column_currents` call (on a station, one DC pass)."""
    ch = rig.channels
    if ch is None:
        return 1, 1
    s, m = read_out_split(ch, tm.rows.size, tm.cols.size)
    return -(-tm.rows.size // s), -(-tm.cols.size // m)


def analog_forward(plan: ConductancePlan, open_rig: Callable[[str], CrossbarRig],
                   crossbars: Sequence[str], x: np.ndarray,
                   cfg: InferConfig | None = None,
                   calibration: Calibration | None = None) -> list[np.ndarray]:
    """Pre-activations of every layer [(k, n_out)] for inputs x, measured on the crossbars
    layer by layer, tile by tile (one rig opened per tile), the periphery's `calibration`
    applied; nothing stored."""
    cfg = cfg or InferConfig()
    cal = calibration or Calibration.identity(plan)
    maps = tile_maps(plan)
    h = np.asarray(x, float)
    zs = []
    for layer in range(len(plan.sizes) - 1):
        scale = input_scale(h)
        cur = {}
        for tm in (m for m in maps if m.layer == layer):
            rig = open_rig(crossbars[tm.tile])
            with rig:
                check_crossbar(plan, rig, tm.tile, crossbars[tm.tile])
                cur[tm.tile] = measure_tile(rig, tm, drive_levels(tm, h, scale, cfg.v_in))
        z = cal.apply(layer, layer_output(plan, layer, maps, cur, scale, cfg.v_in))
        zs.append(z)
        h = activation(plan, z)
    return zs


# -- the stored run ---------------------------------------------------------------------------

@dataclass
class ChipRunResult:
    """A stored run on a programmed chip (inference or repair): where it is, its summary, the
    unit it resumed from, its plan and its tables."""

    path: Path
    run: str
    summary: dict
    resumed_from: int
    plan: ConductancePlan
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def instrument_times(rig: CrossbarRig, before: dict | None, t0: float) -> dict[str, float]:
    """Instrument time since (before, t0), by category (NaN on hardware) and in total."""
    total = float(rig.clock) - t0
    after = rig.time_breakdown()
    if before is None or after is None:
        return {"seconds": total, **{c: np.nan for c in TIME_CATEGORIES}}
    d = {c: after.get(c, 0.0) - before.get(c, 0.0) for c in TIME_CATEGORIES[:-1]}
    d["other"] = total - sum(d.values())
    return {"seconds": total, **d}


def check_test_data(plan: ConductancePlan, test_data) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(test_data[0], float)
    y = np.asarray(test_data[1]).astype(np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != plan.sizes[0] or x.shape[0] != y.size or y.size < 1:
        raise ProtocolError(f"test data of shape {x.shape} / {y.shape} do not fit a network with "
                            f"{plan.sizes[0]} inputs")
    return x, y


def run(plan: ConductancePlan, open_rig: Callable[[str], CrossbarRig],
        crossbars: Sequence[str], store, test_data: tuple[np.ndarray, np.ndarray], *,
        config: InferConfig | None = None, seed: int | None = None,
        station: dict | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True, on_tile: Callable[[int, str], None] | None = None,
        extra_config: dict | None = None,
        calibration: Calibration | None = None) -> ChipRunResult:
    """Run the test set through the network on its crossbars (tile t on ``crossbars[t]``).

    open_rig(name) returns an unentered rig on crossbar `name`; on_tile(t, name) is called before
    each tile (e.g. to ask an operator to move the probes). `extra_config` is stored with the run
    config (e.g. where the programmed chip came from). `calibration`: the periphery's gains and
    offsets (a repair's), applied to every layer's measured pre-activations and stored with the
    run config; the read-back and software predictions are without it.
    """
    cfg = config or InferConfig()
    cal = calibration or Calibration.identity(plan)
    crossbars = [str(c) for c in crossbars]
    if len(crossbars) != plan.n_tiles:
        raise ProtocolError(f"the plan has {plan.n_tiles} tiles but {len(crossbars)} crossbars "
                            "were given (one crossbar per tile)")
    x, y = check_test_data(plan, test_data)
    maps = tile_maps(plan)
    n_batches = -(-y.size // cfg.batch)
    units = plan.n_tiles * n_batches
    run_cfg = {"plan": plan.to_dict(), "crossbars": crossbars,
               "inference": cfg.model_dump(mode="json"),
               "test_data": {"points": int(y.size), "sha": data_digest(x, y)},
               "calibration": cal.to_dict(), **(extra_config or {})}
    writer = RunWriter.open(store, protocol=PROTOCOL, config=run_cfg, station=station or {},
                            seed=seed, tables=TABLES, units_total=units, resume=resume,
                            overwrite=overwrite)
    start = writer.units_done
    # what earlier units left: the currents of finished tiles and the outputs of finished layers
    currents: dict[int, np.ndarray] = {}
    outputs: dict[int, np.ndarray] = {}
    g_read = np.full(plan.n_devices, np.nan)
    if start:
        cur = writer.table("currents")
        for tm in maps:
            c = cur[cur.tile == tm.tile]
            if len(c):
                a = np.full((y.size, tm.cols.size), np.nan)
                a[c.point.to_numpy(), c.col.to_numpy()] = c.current.to_numpy()
                currents[tm.tile] = a
        o = writer.table("outputs")
        for layer in np.unique(o.layer.to_numpy()):
            ol = o[o.layer == layer]
            a = np.full((y.size, plan.sizes[layer + 1]), np.nan)
            a[ol.point.to_numpy(), ol.out.to_numpy()] = ol.value.to_numpy()
            outputs[int(layer)] = a
        g_read = measured_conductances(plan, writer.table("readback"))
    groups = {}

    def layer_input(layer: int, pts: np.ndarray) -> np.ndarray:
        return x[pts] if layer == 0 else activation(plan, outputs[layer - 1][pts])

    bar = Bar(f"analog inference, {y.size} points, {plan.n_tiles} tiles", units, start,
              enabled=progress, unit="units", pulses=False)
    with bar:
        for tm in maps:
            t = tm.tile
            first = t * n_batches
            if first + n_batches <= start:
                continue
            name = crossbars[t]
            if on_tile is not None:
                on_tile(t, name)
            rig = open_rig(name)
            with rig:
                check_crossbar(plan, rig, t, name)
                if max(first, start) == start:  # the first tile of this session
                    restore_progress("inference", writer, units, rig)
                groups[t] = tile_groups(rig, tm)
                if groups[t][0] > 1:
                    log.info("tile %d: %d rows driven in %d groups and the currents added "
                             "(superposition, approximate for non-linear devices on resistive "
                             "lines)", t, tm.rows.size, groups[t][0])
                if groups[t][1] > 1:
                    log.info("tile %d: %d columns measured in %d groups, each applying every "
                             "pattern again", t, tm.cols.size, groups[t][1])
                last_of_layer = not any(m.layer == tm.layer for m in maps[t + 1:])
                for b in range(max(0, start - first), n_batches):
                    interrupts.check()  # a Ctrl-C lost in a finaliser (e.g. during the commit)
                    u = first + b
                    pts = np.arange(b * cfg.batch, min((b + 1) * cfg.batch, y.size))
                    bar.current(f"tile {t} on {name}, points {pts[0]}-{pts[-1]}")
                    rows: dict[str, dict] = {}
                    timing = []
                    if b == 0:
                        rows["readback"], tim = _read_back(plan, rig, t)
                        g_read[rows["readback"]["device"]] = rows["readback"]["g"]
                        timing.append({"unit": u, "tile": t, "kind": READBACK, "points": 0,
                                       **tim})
                    h = layer_input(tm.layer, pts)
                    scale = input_scale(h)
                    volts = drive_levels(tm, h, scale, cfg.v_in)
                    before, t0 = rig.time_breakdown(), float(rig.clock)
                    cur = measure_tile(rig, tm, volts)
                    timing.append({"unit": u, "tile": t, "kind": ANALOG, "points": pts.size,
                                   **instrument_times(rig, before, t0)})
                    currents.setdefault(t, np.full((y.size, tm.cols.size), np.nan))[pts] = cur
                    k, nr, nc = pts.size, tm.rows.size, tm.cols.size
                    rows["drive"] = {"point": np.repeat(pts, nr), "tile": np.full(k * nr, t),
                                     "row": np.tile(tm.rows, k), "volts": volts.reshape(-1)}
                    rows["currents"] = {"point": np.repeat(pts, nc), "tile": np.full(k * nc, t),
                                        "col": np.tile(tm.cols, k), "current": cur.reshape(-1)}
                    rows["timing"] = {c: np.array([r[c] for r in timing]) for c in TIMING_COLUMNS}
                    if last_of_layer:
                        z = cal.apply(tm.layer, layer_output(
                            plan, tm.layer, maps, {m.tile: currents[m.tile][pts] for m in maps
                                                   if m.layer == tm.layer}, scale, cfg.v_in))
                        outputs.setdefault(tm.layer, np.full((y.size, z.shape[1]), np.nan))[
                            pts] = z
                        no = z.shape[1]
                        rows["outputs"] = {"point": np.repeat(pts, no),
                                           "layer": np.full(k * no, tm.layer),
                                           "out": np.tile(np.arange(no), k),
                                           "value": z.reshape(-1)}
                        if tm.layer == len(plan.sizes) - 2:
                            rows["predictions"] = _predictions(plan, z, g_read, x, y, pts, t)
                    writer.commit(u, rows, commit_state(rig))
                    bar.advance(0)
    interrupts.check()  # the run is not complete if the last commit lost a Ctrl-C
    tables = {name: writer.table(name) for name in TABLES}
    summary = summarize(plan, tables, groups=list(groups.values()))
    writer.finish(summary)
    log.info("inference: %s", summary)
    return ChipRunResult(writer.path, writer.run, summary, start, plan, tables)


def _read_back(plan: ConductancePlan, rig: CrossbarRig, t: int) -> tuple[dict, dict]:
    before, t0 = rig.time_breakdown(), float(rig.clock)
    gmap = rig.read_array()
    d = plan.tile_devices(t)
    rows = {"device": d, "tile": np.full(d.size, t), "row": plan.row[d], "col": plan.col[d],
            "target": plan.target[d], "g": gmap[plan.row[d], plan.col[d]]}
    return rows, instrument_times(rig, before, t0)


def _predictions(plan: ConductancePlan, z: np.ndarray, g_read: np.ndarray, x: np.ndarray,
                 y: np.ndarray, pts: np.ndarray, t: int) -> dict:
    if not np.all(np.isfinite(g_read)):
        raise ProtocolError(f"at tile {t}: a tile was not read back; cannot compare with the "
                            "read-back inference")
    return {"point": pts, "label": y[pts], "predicted": predict(z),
            "predicted_readback": plan_forward(plan, g_read, x[pts]),
            "predicted_software": plan_forward(plan, plan.target, x[pts])}


def summarize(plan: ConductancePlan, tables: dict[str, pd.DataFrame], *,
              groups: Sequence[tuple[int, int]] = ()) -> dict:
    """Accuracies (fractions) and predicted instrument time of an inference run; `groups`:
    (row groups, column groups) of the tiles this session measured."""
    p, tim = tables["predictions"], tables["timing"]
    out: dict = {"points": int(len(p)), "tiles": int(plan.n_tiles),
                 "row_groups": max((int(g[0]) for g in groups), default=1),
                 "col_groups": max((int(g[1]) for g in groups), default=1)}
    if len(p):
        out.update(accuracy=float((p.predicted == p.label).mean()),
                   accuracy_readback=float((p.predicted_readback == p.label).mean()),
                   accuracy_software=float((p.predicted_software == p.label).mean()),
                   agreement_readback=float((p.predicted == p.predicted_readback).mean()))
    an, rb = tim[tim.kind == ANALOG], tim[tim.kind == READBACK]
    out["instrument_time_s"] = float(tim.seconds.sum())
    out["readback_time_s"] = float(rb.seconds.sum())
    out["analog_time_s"] = float(an.seconds.sum())
    if len(p):
        per = an[list(TIME_CATEGORIES)].sum() / len(p)
        out["per_inference_s"] = float(an.seconds.sum() / len(p))
        out["per_inference_by_category_s"] = {c: (None if np.isnan(v) else float(v))
                                              for c, v in per.items()}
    return out


def load_inference(path, run: str | None = None) -> ChipRunResult:
    """A stored inference run: plan, tables and summary."""
    path = Path(path)
    info, plan, tables = stored_plan_run(path, PROTOCOL, run)
    summary = info.summary if info.complete else summarize(plan, tables)
    return ChipRunResult(path, info.name, summary, 0, plan, tables)

