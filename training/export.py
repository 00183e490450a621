"""A trained network as a conductance plan, and numpy inference from measured conductances.

No torch at module level: the plan is plain numpy (and JSON), so `protocols.transfer` and the
demo can use it on a lab PC without torch. Only :func:`conductance_plan` touches a torch model,
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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.errors import TrainingError
from training.tiles import tile_order

PLAN_KIND = "xbarlab-conductance-plan"
PLAN_VERSION = 1
ACTIVATIONS = ("sigmoid", "relu", "tanh")
#: per-device columns of a plan, in programming order
DEVICE_FIELDS = ("layer", "param", "out", "inp", "sign", "tile", "row", "col", "k", "target")
WEIGHT, BIAS = 0, 1  # `param` codes
PLUS, MINUS = 0, 1  # `sign` codes


@dataclass
class ConductancePlan:
    """What to program where, in which order. Conductances in S.

    Per-device arrays (all of length ``n_devices``, in programming order): ``layer``,
    ``param`` (0 weight, 1 bias), ``out``, ``inp`` (-1 for a bias), ``sign`` (0 = G+,
    1 = G-), ``tile`` (global), ``row``/``col`` (position in the tile), ``k`` (devices
    programmed after it in its tile), ``target`` [S].
    """

    sizes: tuple[int, ...]
    activation: str
    g_min: float
    g_max: float
    tile_rows: int
    tile_cols: int
    share_bias: bool
    scales: np.ndarray  # (L,) read-out scale max|w| per layer
    weights: list[np.ndarray]  # clean (out, in) per layer
    biases: list[np.ndarray]  # clean (out,) per layer
    layer: np.ndarray
    param: np.ndarray
    out: np.ndarray
    inp: np.ndarray
    sign: np.ndarray
    tile: np.ndarray
    row: np.ndarray
    col: np.ndarray
    k: np.ndarray
    target: np.ndarray
    tile_layer: np.ndarray  # (n_tiles,) layer of each tile
    tile_shape: np.ndarray  # (n_tiles, 2) rows, cols used in each tile
    meta: dict = field(default_factory=dict)

    @property
    def n_devices(self) -> int:
        return int(self.target.size)

    @property
    def n_tiles(self) -> int:
        return int(self.tile_layer.size)

    def tile_devices(self, t: int) -> np.ndarray:
        """Indices (into the per-device arrays) of tile t's devices, in programming order."""
        return np.flatnonzero(self.tile == t)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-able dict (floats round-trip exactly through json)."""
        d = {"kind": PLAN_KIND, "version": PLAN_VERSION, "sizes": list(self.sizes),
             "activation": self.activation, "g_min": float(self.g_min),
             "g_max": float(self.g_max), "tile_rows": int(self.tile_rows),
             "tile_cols": int(self.tile_cols), "share_bias": bool(self.share_bias),
             "scales": [float(s) for s in self.scales],
             "weights": [w.tolist() for w in self.weights],
             "biases": [b.tolist() for b in self.biases],
             "tile_layer": self.tile_layer.tolist(), "tile_shape": self.tile_shape.tolist(),
             "meta": self.meta}
        for f in DEVICE_FIELDS:
            d[f] = getattr(self, f).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ConductancePlan:
        if d.get("kind") != PLAN_KIND:
            raise TrainingError(f"not a conductance plan (kind={d.get('kind')!r})")
        if int(d.get("version", 0)) > PLAN_VERSION:
            raise TrainingError(f"conductance plan version {d['version']} is newer than this "
                                "xbarlab reads")
        try:
            ints = {f: np.asarray(d[f], dtype=np.int64) for f in DEVICE_FIELDS if f != "target"}
            plan = cls(sizes=tuple(int(s) for s in d["sizes"]), activation=d["activation"],
                       g_min=float(d["g_min"]), g_max=float(d["g_max"]),
                       tile_rows=int(d["tile_rows"]), tile_cols=int(d["tile_cols"]),
                       share_bias=bool(d["share_bias"]),
                       scales=np.asarray(d["scales"], float),
                       weights=[np.asarray(w, float).reshape(o, i) for w, o, i in
                                zip(d["weights"], d["sizes"][1:], d["sizes"][:-1], strict=True)],
                       biases=[np.asarray(b, float) for b in d["biases"]],
                       target=np.asarray(d["target"], float),
                       tile_layer=np.asarray(d["tile_layer"], np.int64),
                       tile_shape=np.asarray(d["tile_shape"], np.int64).reshape(-1, 2),
                       meta=dict(d.get("meta", {})), **ints)
        except (KeyError, TypeError, ValueError) as e:
            raise TrainingError(f"malformed conductance plan ({e})") from None
        plan.validate()
        return plan

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConductancePlan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise TrainingError(f"{path}: no such conductance plan") from None
        except json.JSONDecodeError as e:
            raise TrainingError(f"{path}: not JSON ({e})") from None

    def validate(self) -> None:
        n = self.target.size
        for f in DEVICE_FIELDS:
            if getattr(self, f).shape != (n,):
                raise TrainingError(f"conductance plan: {f} has shape {getattr(self, f).shape}, "
                                    f"expected ({n},)")
        if self.activation not in ACTIVATIONS:
            raise TrainingError(f"conductance plan: unknown activation {self.activation!r}")
        if not 0 < self.g_min < self.g_max:
            raise TrainingError("conductance plan: need 0 < g_min < g_max")
        if np.any(np.diff(self.tile) < 0):
            raise TrainingError("conductance plan: devices are not grouped tile by tile")


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
                      g_max: float, activation: str = "sigmoid", tile_rows: int = 8,
                      tile_cols: int = 8, share_bias: bool = True,
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


def _tile_settings(tile) -> tuple[int, int, bool]:
    if tile is None:
        return 8, 8, True
    if isinstance(tile, dict):
        get = tile.get
    else:
        def get(name, default=None):
            return getattr(tile, name, default)
    return int(get("tile_rows", 8)), int(get("tile_cols", 8)), bool(get("share_bias", True))


def conductance_plan(model, db, mapping: str = "physical", tile=None, *,
                     member: int = 0) -> ConductancePlan:
    """The conductance plan of member `member` of a trained HardwareAwareMLP.

    db: the NonIdealityDB the network was trained with (its g_min, g_max), or a (g_min, g_max)
    pair [S]. mapping: must be "physical" (the only programmable one). tile: an object or dict
    with tile_rows, tile_cols, share_bias (e.g. the TrainConfig); default 8 x 8, shared bias.
    """
    if mapping != "physical":
        raise TrainingError(f"mapping {mapping!r} cannot be programmed (the published "
                            "'reference' frame puts unused devices at -400 uS); export with "
                            "mapping='physical'")
    if isinstance(db, tuple | list):
        g_min, g_max = float(db[0]), float(db[1])
    else:
        g_min, g_max = float(db.g_min), float(db.g_max)
    k = int(getattr(model, "k", 1))
    if not 0 <= member < k:
        raise TrainingError(f"member {member} outside the ensemble of {k} networks")
    weights, biases = [], []
    for layer in model.layers:
        weights.append(layer.weight.detach().cpu().numpy()[member].astype(float))
        biases.append(layer.bias.detach().cpu().numpy()[member].astype(float))
    rows, cols, share = _tile_settings(tile)
    meta = {"member": member, "ensemble": k, "mapping": mapping}
    return plan_from_weights(weights, biases, g_min=g_min, g_max=g_max,
                             activation=getattr(model, "activation", "sigmoid"),
                             tile_rows=rows, tile_cols=cols, share_bias=share, meta=meta)


# -- numpy inference --------------------------------------------------------------------------

def plan_weights(plan: ConductancePlan, g: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Effective (W, b) per layer from conductances g (..., n_devices) [S] in plan order.

    W has shape (..., out, in), b (..., out): w = (G+ - G-) * s / (Gmax - Gmin).
    """
    g = np.asarray(g, float)
    if g.shape[-1] != plan.n_devices:
        raise TrainingError(f"{g.shape[-1]} conductances for a plan of {plan.n_devices} devices")
    lead = g.shape[:-1]
    out = []
    span = plan.g_max - plan.g_min
    for li, (n_in, n_out) in enumerate(zip(plan.sizes[:-1], plan.sizes[1:], strict=True)):
        w = np.zeros((*lead, n_out, n_in))
        b = np.zeros((*lead, n_out))
        for sgn, factor in ((PLUS, 1.0), (MINUS, -1.0)):
            # each (out, in) has exactly one G+ and one G- device: plain fancy assignment
            m = (plan.layer == li) & (plan.param == WEIGHT) & (plan.sign == sgn)
            w[..., plan.out[m], plan.inp[m]] += factor * g[..., m]
            mb = (plan.layer == li) & (plan.param == BIAS) & (plan.sign == sgn)
            b[..., plan.out[mb]] += factor * g[..., mb]
        f = plan.scales[li] / span
        out.append((w * f, b * f))
    return out


def _act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    if name == "relu":
        return np.maximum(x, 0.0)
    return np.tanh(x)


def plan_logits(plan: ConductancePlan, g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Network outputs (..., B, out) for inputs x (B, in) with conductances g (..., n_devices)."""
    h = np.asarray(x, float)
    layers = plan_weights(plan, g)
    for i, (w, b) in enumerate(layers):
        h = np.matmul(h, np.swapaxes(w, -1, -2)) + b[..., None, :]
        if i < len(layers) - 1:
            h = _act(plan.activation, h)
    return h


def plan_forward(plan: ConductancePlan, g_measured: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Predicted classes (..., B): logit > 0 for one output, argmax otherwise."""
    logits = plan_logits(plan, g_measured, x)
    return (logits[..., 0] > 0).astype(np.int64) if logits.shape[-1] == 1 else \
        logits.argmax(-1).astype(np.int64)


def clean_forward(plan: ConductancePlan, x: np.ndarray) -> np.ndarray:
    """Predictions of the clean (software) weights stored in the plan."""
    return plan_forward(plan, plan.target, x)
