"""A trained network as a conductance plan, and numpy inference from measured conductances.

The plan itself (`protocols.plan`) is plain numpy and JSON, so `protocols.transfer` and the
demo use it on a lab PC without torch. Only :func:`conductance_plan` touches a torch model,
and only through ``.detach().cpu().numpy()``.

The plan uses the ``physical`` mapping of `training.mapping` and the layout of `training.tiles`,
exactly what the hardware-aware training assumed:

* per layer one read-out scale ``s = max|w|`` over its weights *and* bias;
  ``G+ = Gmin + (Gmax - Gmin) max(w, 0) / s`` and ``G- = Gmin + (Gmax - Gmin) max(-w, 0) / s``
  (the unused device of a pair at Gmin);
* the layer's device matrix has one row per input (plus the bias row when ``share_bias``) and
  two columns per output (G+ in column ``2o``, G- in ``2o + 1``), cut into
  ``tile_rows x tile_cols`` tiles numbered row-major; tiles of later layers follow those of
  earlier ones (global tile number = layer offset + tile number in the layer);
* inside a tile, devices are programmed down a column, then the next column to the right; ``k``
  = devices programmed after a device in its own tile (the disturbance key).

The published code's ``reference`` mapping puts unused devices at -400 uS, which no device can
be programmed to; it cannot be exported (train with ``mapping="physical"`` for a transfer).

Inference (:func:`plan_forward`) rebuilds the effective weights from read-back conductances,
``w = (G+ - G-) s / (Gmax - Gmin)``, and runs the MLP in numpy: "conductances read back and
multiplied", not column currents (docs/guide.md explains the choice).
"""

from __future__ import annotations

import numpy as np

from protocols.plan import (  # noqa: F401  (re-exported: the plan is built here)
    ACTIVATIONS,
    BIAS,
    DEVICE_FIELDS,
    MINUS,
    PLAN_KIND,
    PLAN_VERSION,
    PLUS,
    WEIGHT,
    ConductancePlan,
    clean_forward,
    plan_forward,
    plan_logits,
    plan_weights,
    station_g_range,
)
from protocols.tuning import TuneConfig
from training.errors import TrainingError
from training.tiles import DEFAULT_LAYOUT, tile_order

# -- building a plan ------------------------------------------------------------------------------

def _layer_layout(n_out: int, n_in: int, tile_rows: int, tile_cols: int, share_bias: bool):
    """Per device of one layer: (param, out, inp, sign, tile, row, col, k), tile ids local."""
    cols = []

    def block(n_rows: int, is_bias: bool, tile_base: int):
        tile, k = tile_order(n_rows, 2 * n_out, tile_rows, tile_cols)
        r = np.arange(n_rows)[:, None].repeat(2 * n_out, 1)
        c = np.arange(2 * n_out)[None, :].repeat(n_rows, 0)
        inp = np.where(is_bias | (r >= n_in), -1, r)
        param = np.where(inp < 0, BIAS, WEIGHT)
        cols.append((param, c // 2, inp, c % 2, tile + tile_base, r % tile_rows,
                     c % tile_cols, k))
        return int(tile.max()) + 1

    n_tiles = block(n_in + (1 if share_bias else 0), False, 0)
    if not share_bias:
        n_tiles += block(1, True, n_tiles)
    arrays = [np.concatenate([b[i].reshape(-1) for b in cols]) for i in range(8)]
    return arrays, n_tiles


def plan_from_weights(weights: list[np.ndarray], biases: list[np.ndarray], *, g_min: float,
                      g_max: float, activation: str = "sigmoid",
                      tile_rows: int = DEFAULT_LAYOUT.rows, tile_cols: int = DEFAULT_LAYOUT.cols,
                      share_bias: bool = DEFAULT_LAYOUT.share_bias,
                      meta: dict | None = None) -> ConductancePlan:
    """The plan of an MLP given as numpy weights [(out, in)] and biases [(out,)]."""
    if len(weights) != len(biases) or not weights:
        raise TrainingError("need one bias per weight matrix and at least one layer")
    weights = [np.asarray(w, float) for w in weights]
    biases = [np.asarray(b, float).reshape(-1) for b in biases]
    sizes = [weights[0].shape[1]]
    for w, b in zip(weights, biases, strict=True):
        if w.ndim != 2 or w.shape[1] != sizes[-1] or b.shape != (w.shape[0],):
            raise TrainingError(f"layer shapes do not chain: weight {w.shape}, bias {b.shape}")
        sizes.append(w.shape[0])
    if not 0 < g_min < g_max:
        raise TrainingError(f"need 0 < g_min < g_max, got {g_min}, {g_max}")
    span = g_max - g_min
    parts: dict[str, list] = {f: [] for f in DEVICE_FIELDS}
    scales, tile_layer, tile_shape = [], [], []
    tile_base = 0
    for li, (w, b) in enumerate(zip(weights, biases, strict=True)):
        n_out, n_in = w.shape
        s = max(float(np.abs(w).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-30)
        scales.append(s)
        (param, out, inp, sign, tile, row, col, k), n_tiles = _layer_layout(
            n_out, n_in, tile_rows, tile_cols, share_bias)
        value = np.where(param == WEIGHT, w[out, np.maximum(inp, 0)], b[out])
        part = np.where(sign == PLUS, np.maximum(value, 0.0), np.maximum(-value, 0.0))
        target = g_min + span * part / s
        # programming order: tile by tile, then column-major inside the tile (k counts down)
        order = np.lexsort((-k, tile))
        for f, a in zip(DEVICE_FIELDS, (np.full(k.size, li), param, out, inp, sign,
                                        tile + tile_base, row, col, k, target), strict=True):
            parts[f].append(np.asarray(a)[order])
        for t in range(n_tiles):
            m = tile == t
            tile_layer.append(li)
            tile_shape.append((int(row[m].max()) + 1, int(col[m].max()) + 1))
        tile_base += n_tiles
    arrays = {f: np.concatenate(v) for f, v in parts.items()}
    for f in DEVICE_FIELDS:
        if f != "target":
            arrays[f] = arrays[f].astype(np.int64)
    plan = ConductancePlan(sizes=tuple(sizes), activation=activation, g_min=float(g_min),
                           g_max=float(g_max), tile_rows=int(tile_rows),
                           tile_cols=int(tile_cols), share_bias=bool(share_bias),
                           scales=np.asarray(scales), weights=weights, biases=biases,
                           tile_layer=np.asarray(tile_layer, np.int64),
                           tile_shape=np.asarray(tile_shape, np.int64).reshape(-1, 2),
                           meta=dict(meta or {}), **arrays)
    plan.validate()
    return plan


def clip_weights(model, percentile: float):
    """A copy of a trained HardwareAwareMLP whose weights and biases are clipped, per network
    of the ensemble and per layer, at the `percentile`-th percentile of their magnitudes
    (weights and bias together).

    Why: the physical mapping sets a layer's read-out scale at its largest weight, and a
    regularly trained layer has a few large weights (regular digits, first layer: the median
    |w| is 9 % of the largest, the 95th percentile 30 %), so most devices sit within a few
    percent of the range above Gmin, where a conductance error of a few uS is a large weight
    error. Clipped at the 95th percentile, the first layer's scale is three times smaller and
    the output layer's 1.7 times: every weight is written with that much more conductance
    swing, and its errors weigh that much less. The regular digits network loses 0.2 points of
    clean accuracy (97.3 -> 97.1 %) and its Monte-Carlo prediction rises from 70.7 to 92.0 %
    (docs/training.md). Check the clean accuracy before programming a clipped network: a
    small layer has few weights to spare (half-moons at p95: 97.5 -> 96.5 %).

    The copy's largest weight in each layer is the clip, so the physical mapping of the copy
    is the clipped mapping: `conductance_plan` and the Monte-Carlo evaluation need nothing
    else. percentile 100 returns an unchanged copy."""
    import copy

    if not 50.0 <= float(percentile) <= 100.0:
        raise TrainingError(f"clip percentile {percentile} outside [50, 100]")
    out = copy.deepcopy(model)
    for layer in out.layers:
        w, b = layer.weight.data, layer.bias.data         # (K, out, in), (K, out): views
        for k in range(w.shape[0]):
            mags = np.abs(np.concatenate([w[k].cpu().numpy().ravel(), b[k].cpu().numpy()]))
            s = float(np.percentile(mags, percentile))
            w[k].clamp_(-s, s)
            b[k].clamp_(-s, s)
    return out


def replicate_hidden(model, copies: int):
    """A copy of a trained HardwareAwareMLP that computes the same function with every hidden
    unit computed `copies` times on devices of its own: each hidden layer's weight rows and
    biases repeated `copies` times (the copies as whole blocks: copy c of unit j is unit
    ``c * width + j``), each later layer's weights from those units repeated with them and
    divided by `copies`. The output layer's biases stay one pair each.

    Why: the transfer's errors are independent from device to device (the tuning band, the
    V/3 disturbance, the slow fluctuators every pulse in a tile re-rolls), so a weight written
    on `copies` device pairs, each carrying 1/copies of it at the layer's full conductance
    swing, has 1/sqrt(copies) of the error (multi-device synapses, Boybat et al., Nat. Commun.
    2018), and so have the hidden activations the next layer averages over the copies. As
    whole blocks, the copies land on different tiles (columns of the hidden layer, rows of
    the next) and so on different crossbars. The price: `copies` times the devices, pulses and
    instrument time of every layer but the output layer's biases (regular digits, 64-32-10:
    87 crossbars, at 2 copies 171). Only a network whose transfer errors cost it accuracy
    gains: the regular digits network clipped at p95 goes from a Monte-Carlo prediction of
    92.0 % to 94.5 % at 2 copies and 95.2 % at 3 (docs/training.md).

    The later layers' weights are divided by `copies`, their biases are not: where a bias is
    larger than every divided weight, it sets the layer's scale (`conductance_plan`) and the
    weights get less swing. Clip after replicating (`clip_weights`), so that the clip sees
    the layer as it is programmed. copies 1 returns an unchanged copy."""
    import copy

    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise TrainingError(f"copies must be a whole number >= 1, got {copies!r}")
    if copies == 1 or len(model.sizes) < 3:
        return copy.deepcopy(model)
    sizes = [model.sizes[0], *(s * copies for s in model.sizes[1:-1]), model.sizes[-1]]
    out = type(model)(sizes, model.k, model.activation, layout=model.layout)
    last = len(model.layers) - 1
    for i, (src, dst) in enumerate(zip(model.layers, out.layers, strict=True)):
        w, b = src.weight.detach(), src.bias.detach()     # (K, out, in), (K, out)
        if i > 0:                         # inputs: the previous layer's copies, averaged
            w = w.repeat(1, 1, copies) / copies
        if i < last:                      # outputs: this hidden layer's units, repeated
            w, b = w.repeat(1, copies, 1), b.repeat(1, copies)
        dst.weight.data.copy_(w)
        dst.bias.data.copy_(b)
    return out


def conductance_plan(model, db, mapping: str = "physical", *, member: int = 0,
                     read=None, tolerance: float | None = None) -> ConductancePlan:
    """The conductance plan of member `member` of a trained HardwareAwareMLP, on the model's
    own tile layout (``model.layout``).

    db: the NonIdealityDB the network was trained with (its g_min, g_max), or a (g_min, g_max)
    pair [S]. mapping: must be "physical" (the only programmable one). read: the read settings
    of the station it is meant for (a ``protocols.rig.ReadSettings``) and tolerance its
    write-verify band (default: TuneConfig's): the range is narrowed to what that station can
    verify (``protocols.plan.station_g_range``; the published 100-500 uS puts targets at the
    500 uS read ceiling), the reason in ``plan.meta["g_range_note"]``. The network computes
    the same; only the conductances it is written with change.
    """
    if mapping != "physical":
        raise TrainingError(f"mapping {mapping!r} cannot be programmed (the published "
                            "'reference' frame puts unused devices at -400 uS); export with "
                            "mapping='physical'")
    if isinstance(db, tuple | list):
        g_min, g_max = float(db[0]), float(db[1])
    else:
        g_min, g_max = float(db.g_min), float(db.g_max)
    note = ""
    if read is not None:
        tol = TuneConfig().tolerance if tolerance is None else tolerance
        g_min, g_max, note = station_g_range(g_min, g_max, tol, read)
    k = model.k
    if not 0 <= member < k:
        raise TrainingError(f"member {member} outside the ensemble of {k} networks")
    weights, biases = [], []
    for layer in model.layers:
        weights.append(layer.weight.detach().cpu().numpy()[member].astype(float))
        biases.append(layer.bias.detach().cpu().numpy()[member].astype(float))
    layout = model.layout
    meta = {"member": member, "ensemble": k, "mapping": mapping}
    if note:
        meta["g_range_note"] = note
    return plan_from_weights(weights, biases, g_min=g_min, g_max=g_max,
                             activation=model.activation, tile_rows=layout.rows,
                             tile_cols=layout.cols, share_bias=layout.share_bias, meta=meta)


