"""The conductance plan: a trained network as what to program where, in which order.

This is the seam between training and the lab: `training.export` writes a plan from a trained
model; `protocols.transfer` programs it through a rig and evaluates the transferred network from
the conductances it reads back. Plain numpy and JSON, so a lab PC needs no torch.

Semantics (the ``physical`` mapping the hardware-aware training assumed):

* per layer one read-out scale ``s = max|w|`` over its weights *and* bias;
  ``G+ = Gmin + (Gmax - Gmin) max(w, 0) / s`` and ``G- = Gmin + (Gmax - Gmin) max(-w, 0) / s``
  (the unused device of a pair at Gmin);
* each device carries its tile, its (row, col) in the tile and ``k``, the number of devices
  programmed after it in its tile (the disturbance key), listed in programming order.

Inference (:func:`plan_forward`) rebuilds the effective weights from read-back conductances,
``w = (G+ - G-) s / (Gmax - Gmin)``, and runs the MLP in numpy: "conductances read back and
multiplied", not column currents (docs/guide.md explains the choice).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocols.errors import ConfigError, ProtocolError
from protocols.tuning import describe_range, verifiable_range

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
            raise ProtocolError(f"not a conductance plan (kind={d.get('kind')!r})")
        if int(d.get("version", 0)) > PLAN_VERSION:
            raise ProtocolError(f"conductance plan version {d['version']} is newer than this "
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
            raise ProtocolError(f"malformed conductance plan ({e})") from None
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
            raise ProtocolError(f"{path}: no such conductance plan") from None
        except json.JSONDecodeError as e:
            raise ProtocolError(f"{path}: not JSON ({e})") from None

    def validate(self) -> None:
        n = self.target.size
        for f in DEVICE_FIELDS:
            if getattr(self, f).shape != (n,):
                raise ProtocolError(f"conductance plan: {f} has shape {getattr(self, f).shape}, "
                                    f"expected ({n},)")
        if self.activation not in ACTIVATIONS:
            raise ProtocolError(f"conductance plan: unknown activation {self.activation!r}")
        if not 0 < self.g_min < self.g_max < np.inf:
            raise ProtocolError("conductance plan: need 0 < g_min < g_max")
        # every number that reaches a target or the inference: finite, targets in the range
        for name, values in (("scales", [self.scales]), ("weights", self.weights),
                             ("biases", self.biases), ("target", [self.target])):
            if not all(np.all(np.isfinite(v)) for v in values):
                raise ProtocolError(f"conductance plan: {name} contains NaN or inf")
        if np.any(self.scales <= 0):
            raise ProtocolError("conductance plan: scales must be > 0")
        tol = 1e-9 * self.g_max
        if np.any(self.target < self.g_min - tol) or np.any(self.target > self.g_max + tol):
            raise ProtocolError(f"conductance plan: target outside [g_min, g_max] = "
                                f"[{self.g_min:g}, {self.g_max:g}] S")
        if np.any(np.diff(self.tile) < 0):
            raise ProtocolError("conductance plan: devices are not grouped tile by tile")


# -- what a station can verify -------------------------------------------------------------------

def station_g_range(g_min: float, g_max: float, tolerance: float, read
                    ) -> tuple[float, float, str]:
    """The part of [g_min, g_max] [S] a station reading with `read` (a ReadSettings) can
    verify with a band of +-`tolerance`, and why it differs ('' when it does not). The top is
    rounded down to 0.1 uS below the verifiable limit, so that targets at g_max stay below it
    after the mapping's rounding."""
    lo, hi = verifiable_range(tolerance, read)
    top = math.floor(hi * 1e7 * (1 - 1e-6)) / 1e7
    bottom = math.ceil(lo * 1e7 * (1 + 1e-6)) / 1e7
    new_min, new_max = max(g_min, bottom), min(g_max, top)
    if not new_min < new_max:
        raise ConfigError(f"the conductance range [{g_min * 1e6:.4g}, {g_max * 1e6:.4g}] uS lies "
                          f"outside what the station can verify: {describe_range(tolerance, read)}")
    if (new_min, new_max) == (g_min, g_max):
        return g_min, g_max, ""
    why = (f"mapped into [{new_min * 1e6:.4g}, {new_max * 1e6:.4g}] uS instead of "
           f"[{g_min * 1e6:.4g}, {g_max * 1e6:.4g}] uS: the station can verify only that "
           f"({describe_range(tolerance, read)})")
    return new_min, new_max, why


def check_verifiable(plan: ConductancePlan, tolerance: float, read, *,
                     whole_range: bool = False) -> None:
    """ConfigError unless the station can verify every target of `plan` (with a band of
    +-`tolerance`, reads as `read`); with `whole_range` also every conductance in
    [g_min, g_max], the targets a correction may set. Called before anything is programmed."""
    lo, hi = verifiable_range(tolerance, read)
    bad = int(np.count_nonzero(~((plan.target >= lo) & (plan.target < hi))))
    span_bad = whole_range and not (lo <= plan.g_min and plan.g_max < hi)
    if not bad and not span_bad:
        return
    what = f"{bad} of the plan's {plan.n_devices} targets"
    if span_bad:
        what += (f" and its range [{plan.g_min * 1e6:.4g}, {plan.g_max * 1e6:.4g}] uS (what a "
                 "correction may set)")
    raise ConfigError(f"{what} lie outside what the station can verify: "
                      f"{describe_range(tolerance, read)}; map the network with g_max below "
                      f"{hi * 1e6:.5g} uS (`xbarlab transfer --model` maps it for the station) "
                      "or use a station with a wider read range")


def check_reads(rig, read) -> None:
    """ProtocolError when `rig` reads otherwise than the settings its plan was checked against
    (`check_verifiable`), before it is used."""
    if rig.read_settings != read:
        raise ProtocolError(f"{rig.name} rig reads with {rig.read_settings}, but the plan was "
                            f"checked against {read}: pass the station's read settings")


# -- numpy inference --------------------------------------------------------------------------

def plan_weights(plan: ConductancePlan, g: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Effective (W, b) per layer from conductances g (..., n_devices) [S] in plan order.

    W has shape (..., out, in), b (..., out): w = (G+ - G-) * s / (Gmax - Gmin).
    """
    g = np.asarray(g, float)
    if g.shape[-1] != plan.n_devices:
        raise ProtocolError(f"{g.shape[-1]} conductances for a plan of {plan.n_devices} devices")
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


def activate(name: str, x: np.ndarray) -> np.ndarray:
    """The hidden layers' activation `name` applied to x."""
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
            h = activate(plan.activation, h)
    return h


def plan_forward(plan: ConductancePlan, g_measured: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Predicted classes (..., B): logit > 0 for one output, argmax otherwise."""
    logits = plan_logits(plan, g_measured, x)
    return (logits[..., 0] > 0).astype(np.int64) if logits.shape[-1] == 1 else \
        logits.argmax(-1).astype(np.int64)


def clean_forward(plan: ConductancePlan, x: np.ndarray) -> np.ndarray:
    """Predictions of the clean (software) weights stored in the plan."""
    return plan_forward(plan, plan.target, x)


def check_crossbar(plan: ConductancePlan, rig, t: int, name: str) -> None:
    """Refuse a crossbar too small for tile `t` of the plan (one line, before any pulse)."""
    rows, cols = rig.shape
    used = plan.tile_shape[t]
    if used[0] > rows or used[1] > cols:
        raise ProtocolError(f"tile {t} needs {used[0]}x{used[1]} devices, crossbar {name!r} is "
                            f"{rows}x{cols}")
