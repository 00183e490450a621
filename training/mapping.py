"""Weights <-> differential conductance pairs, and noisy weights from pre-drawn variates.

Two mappings (see docs/training.md for why they differ):

``physical`` (the paper's description)
    Per layer (weight and bias together, one read-out scale), re-evaluated on every forward:
    s = max|w|. G+ = Gmin + (Gmax - Gmin) * max(w, 0) / s, G- = Gmin + (Gmax - Gmin) * max(-w, 0)
    / s: the positive part on G+, the negative part on G-, the unused device at Gmin, both in
    [Gmin, Gmax]. After noise, w = (G+' - G-') * s / (Gmax - Gmin). Every parameter (output bias
    included) is noisy; the disturbance key of each device is its true k in its tile
    (training.tiles), G+ and G- at their own positions.

``reference`` (what the published code does, defects included)
    Per tensor (weights and biases separately), re-evaluated on every forward:
    * mixed signs (double column): G+- = -(Gmax - Gmin) + 2 (Gmax - Gmin) * w+- / max|w|, i.e. the
      [-400, +400] uS frame, w = 0 at -400 uS; w = (G+' - G-') * max|w| / (2 (Gmax - Gmin));
    * all one sign (single column): G = Gmin + (Gmax - Gmin) (w - w.min) / (w.max - w.min), one
      device per weight, the offset *subtracted* (the code's sign flip), inverse afterwards;
    * tensors with one element (the output bias): no noise at all;
    * disturbance key = (devices after) + 1 in column-major order of the tensor alone, the last
      element 0; the 4-sigma -> +60 uS rule on 2-D weights only; G+ and G- drawn independently
      from the same key.

Noise order per device (as the published code): offset, then sigma(G) evaluated on the offset
conductance times eps, then the disturbance, then stuck substitution overwrites the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.defaults import MAPPINGS
from training.errors import TrainingError
from training.noise import Draws, NoiseModel
from training.tiles import DEFAULT_LAYOUT, TileLayout, layer_devices, reference_visit_keys


@dataclass
class Prepared:
    """A block of draws folded into per-weight coefficients (see Mapping.prepare), (T, K, P).

    Stored as used by Mapping.apply: d0 is divided by the mapping's full span and q multiplied
    by it. Slicing takes a sub-block (``prepared[i:i + 1]``); ``steps()`` gives all T one-draw
    blocks at once (a training loop's per-step access without per-step slicing).
    """

    t: int
    d0: torch.Tensor
    c1p: torch.Tensor
    c1m: torch.Tensor
    qp: torch.Tensor | None
    qm: torch.Tensor | None
    stuck: torch.Tensor | None  # bool: a device of the weight is stuck (double column)
    e0: torch.Tensor | None = None  # reference single column: (C0 - Gmin) / span
    e1: torch.Tensor | None = None
    e2: torch.Tensor | None = None  # C2 * span
    stuck1: torch.Tensor | None = None

    def _fields(self) -> list[torch.Tensor | None]:
        return [self.d0, self.c1p, self.c1m, self.qp, self.qm, self.stuck, self.e0, self.e1,
                self.e2, self.stuck1]

    def __getitem__(self, sl: slice) -> Prepared:
        out = Prepared(len(range(self.t)[sl]), *(None if v is None else v[sl]
                                                  for v in self._fields()))
        if hasattr(self, "_any"):
            out._any = self._any[sl]
        return out

    def steps(self) -> list[Prepared]:
        """The T draws as T one-draw Prepared (views; one unbind per field)."""
        cols = [None if v is None else v.unsqueeze(1).unbind(0) for v in self._fields()]
        anys = self.any_stuck
        out = []
        for i in range(self.t):
            p = Prepared(1, *(None if c is None else c[i] for c in cols))
            p._any = anys[i:i + 1]
            out.append(p)
        return out

    @property
    def any_stuck(self) -> list[bool]:
        """Per draw: does any weight (of any network) have a stuck device? (one sync, cached)"""
        if not hasattr(self, "_any"):
            if self.stuck is None:
                self._any = [False] * self.t
            else:
                m = self.stuck if self.stuck1 is None else self.stuck | self.stuck1
                self._any = m.flatten(1).any(1).tolist()
        return self._any


@dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor of a network: name, shape (without K), layer index, kind."""

    name: str
    shape: tuple[int, ...]
    layer: int
    kind: str  # "weight" or "bias"


class Mapping:
    """Maps a network's flattened parameters (K, P) to noisy weights (T, K, P)."""

    def __init__(self, specs: list[TensorSpec], name: str, noise: NoiseModel, *,
                 layout: TileLayout = DEFAULT_LAYOUT) -> None:
        if name not in MAPPINGS:
            raise TrainingError(f"unknown mapping {name!r}; choose one of {MAPPINGS}")
        self.name, self.specs, self.noise = name, specs, noise
        dev = noise.device
        sizes = [int(np.prod(s.shape)) for s in specs]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        self.p = self.offsets[-1]
        seg = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)])
        layer = np.concatenate([np.full(n, s.layer) for s, n in zip(specs, sizes, strict=False)])
        group = seg if name == "reference" else layer  # what shares one scale
        n_groups = int(group.max()) + 1
        self.group = torch.as_tensor(group, device=dev)
        self.group_mask = torch.as_tensor(group[None, :] == np.arange(n_groups)[:, None],
                                          device=dev)  # (G, P)
        # (G, W) gather index: the members of group g, padded by repeating its first member, so
        # one gather + aminmax gives every group's min and max
        members = [np.flatnonzero(group == g) for g in range(n_groups)]
        width = max(len(m) for m in members)
        self._gidx = torch.as_tensor(np.stack([np.concatenate([m, np.full(width - len(m), m[0])])
                                               for m in members]), device=dev)
        # devices per weight: physical G+, G-; reference G+, G- and the single-column device
        nd = 2 if name == "physical" else 3
        keys = np.zeros((nd, self.p), dtype=np.int64)
        four = np.zeros((nd, self.p), dtype=bool)
        free = np.zeros(self.p, dtype=bool)
        if name == "physical":
            by_layer: dict[int, dict[str, TensorSpec]] = {}
            for s in specs:
                by_layer.setdefault(s.layer, {})[s.kind] = s
            for s, a, b in zip(specs, self.offsets[:-1], self.offsets[1:], strict=False):
                w = by_layer[s.layer]["weight"]
                lay = layer_devices(w.shape[0], w.shape[1], tile_rows=layout.rows,
                                    tile_cols=layout.cols, share_bias=layout.share_bias)
                keys[:, a:b] = (lay.weight_k if s.kind == "weight" else lay.bias_k).reshape(2, -1)
            sign = [1.0, 1.0]
        else:
            for s, a, b in zip(specs, self.offsets[:-1], self.offsets[1:], strict=False):
                keys[:, a:b] = reference_visit_keys(s.shape).reshape(1, -1)
                four[:, a:b] = len(s.shape) == 2
                free[a:b] = b - a == 1
            sign = [1.0, 1.0, -1.0]  # the single-column path subtracts the offset
        # reference: a group (tensor) of one element is noise free as a whole
        self._free_group = torch.as_tensor([bool(free[m].all()) for m in members], device=dev)
        noise.ensure_max_key(int(keys.max()))
        self.keys = torch.as_tensor(keys, device=dev)
        self.four_sigma = torch.as_tensor(four, device=dev) if four.any() else None
        self.offset_sign = torch.as_tensor(sign, device=dev, dtype=noise.dtype)
        self.noise_free = torch.as_tensor(free, device=dev)
        span = noise.g_max - noise.g_min
        self.span = span
        # base conductance of each device row for a zero weight (reference: -400 uS frame)
        base = [noise.g_min] * 2 if name == "physical" else [-span, -span, noise.g_min]
        self._base = torch.as_tensor(base, device=dev, dtype=noise.dtype).view(nd, 1)
        self._full = span if name == "physical" else 2 * span

    # -- helpers --------------------------------------------------------------------------------
    def _minmax(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-group max and min of theta (K, P), broadcast back to (K, P)."""
        y = torch.where(self.group_mask, torch.stack((theta, -theta)).unsqueeze(-2),
                        float("-inf")).amax(-1)  # (2, K, G)
        r = y[:, :, self.group]
        return r[0], -r[1]

    def scale(self, theta: torch.Tensor) -> torch.Tensor:
        """Per-group max|w| (K, P), floored so an all-zero group maps without dividing by 0."""
        mx, mn = self._minmax(theta)
        return torch.maximum(mx, -mn).clamp_min(1e-30)

    # -- noise-free mapping (for inspection and round-trip tests) --------------------------------
    def to_conductance(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G+, G-) [S] of the double-column / physical mapping for theta (K, P)."""
        s = self.scale(theta)
        lo = float(self._base[0])
        return (lo + self._full * theta.clamp_min(0) / s,
                lo + self._full * (-theta).clamp_min(0) / s)

    def from_conductance(self, gp: torch.Tensor, gm: torch.Tensor, s: torch.Tensor
                         ) -> torch.Tensor:
        return (gp - gm) * s / self._full

    # -- the noisy forward ------------------------------------------------------------------------
    def apply_direct(self, theta: torch.Tensor, d: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """apply() computed device by device: conductances, noise, stuck, back to weights.

        The literal form of the model, kept to check the fast path (apply) against.
        """
        with torch.no_grad():
            mx, mn = self._minmax(theta)
            s = torch.maximum(mx, -mn).clamp_min(1e-30)
            if self.name == "physical":
                r = torch.stack((theta, -theta), 1).clamp_min(0)  # (K, 2, P)
                g = torch.addcmul(self._base, r, (self._full / s).unsqueeze(1))
                gn = d.apply(g)
                w = (gn[:, :, 0] - gn[:, :, 1]) * (s / self._full)
                stuck = None if d.stuck_mask is None else d.stuck_mask.any(2)
            else:
                rng = mx - mn
                rng = torch.where(rng > 0, rng, torch.ones_like(rng))  # sklearn's rule
                f = self._full / s
                r = torch.stack((theta, -theta, theta - mn), 1).clamp_min(0)  # (K, 3, P)
                g = torch.addcmul(self._base, r, torch.stack((f, f, self.span / rng), 1))
                gn = d.apply(g)
                w_double = (gn[:, :, 0] - gn[:, :, 1]) * (s / self._full)
                w_single = torch.addcmul(mn, gn[:, :, 2] - self.noise.g_min, rng / self.span)
                single = (mn >= 0) | (mx <= 0)
                w = torch.where(self.noise_free, theta, torch.where(single, w_single, w_double))
                stuck = None
                if d.stuck_mask is not None:
                    m = d.stuck_mask
                    stuck = torch.where(single, m[:, :, 2], m[:, :, 0] | m[:, :, 1])
                    stuck &= ~self.noise_free
            if stuck is None:
                stuck = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
            elif stuck.shape != w.shape:  # draws shared by the K networks (K = 1 in the draw)
                stuck = stuck.expand(w.shape)
            return w, stuck

    # -- the fast path: noisy weights as a polynomial of the clean ones ---------------------------
    def prepare(self, d: Draws) -> Prepared:
        """Fold a block of draws into per-weight coefficients (once per block, not per step).

        A device at conductance G = base + a u (u >= 0 the mapped weight part, a the per-step
        scale factor) becomes G' = G (gain + quad G) + shift = C0 + C1 a u + C2 a^2 u^2 with
        C0 = base gain + base^2 quad + shift, C1 = gain + 2 base quad, C2 = quad, and a stuck
        device is the constant C0 = stuck value, C1 = C2 = 0. For the double column only one of
        G+, G- carries the weight (the other has u = 0), so with a = full / s

            w = (s / full) (C0+ - C0-) + theta C1(sign) + (full / s) theta^2 Q(sign),
            Q = C2+ for theta >= 0, -C2- otherwise;

        and for the reference single column (u = theta - min, a = span / range)
            w = min + (C0 - Gmin) / a + u C1 + a u^2 C2.
        Weights without noise (reference one-element tensors) get C0 = 0 / Gmin, C1 = 1, C2 = 0.
        """
        with torch.no_grad():
            t = d.t
            base = self._base.view(-1, 1)  # (D, 1)
            one = torch.ones((), device=self._base.device, dtype=self._base.dtype)
            gain = d.gain if d.gain is not None else one
            quad = d.quad
            c0 = base * gain
            c1 = gain
            if quad is not None:
                c0 = torch.addcmul(c0, base * base, quad)
                c1 = torch.addcmul(gain, 2 * base, quad)
            if d.shift is not None:
                c0 = c0 + d.shift
            c2 = quad
            stuck_dev = d.stuck_mask
            if stuck_dev is not None:
                c0 = torch.where(stuck_dev, d.stuck_value, c0)
                c1 = torch.where(stuck_dev, 0.0, c1)
                if c2 is not None:
                    c2 = torch.where(stuck_dev, 0.0, c2)
            kd = d.gain.shape[1] if d.gain is not None else (
                d.shift.shape[1] if d.shift is not None else
                d.stuck_mask.shape[1] if d.stuck_mask is not None else 1)
            shape = (t, kd, len(self._base), self.p)
            c0, c1 = c0.expand(shape), c1.expand(shape)
            free = self.noise_free
            d0 = c0[:, :, 0] - c0[:, :, 1]
            c1p, c1m = c1[:, :, 0], c1[:, :, 1]
            qp = qm = None
            if c2 is not None:
                c2 = c2.expand(shape)
                qp, qm = c2[:, :, 0], -c2[:, :, 1]
            d0 = d0 / self._full  # stored as apply uses them
            if qp is not None:
                qp, qm = qp * self._full, qm * self._full
            if self.name == "physical":
                stuck = None if stuck_dev is None else stuck_dev.expand(shape).any(2)
                return Prepared(t, d0, c1p, c1m, qp, qm, stuck)
            # reference: the double-column coefficients with noise-free weights made exact
            d0 = torch.where(free, 0.0, d0)
            c1p = torch.where(free, 1.0, c1p)
            c1m = torch.where(free, 1.0, c1m)
            if qp is not None:
                qp, qm = torch.where(free, 0.0, qp), torch.where(free, 0.0, qm)
            e0 = torch.where(free, 0.0, (c0[:, :, 2] - self.noise.g_min) / self.span)
            e1 = torch.where(free, 1.0, c1[:, :, 2])
            e2 = None if c2 is None else torch.where(free, 0.0, c2[:, :, 2] * self.span)
            stuck = stuck1 = None
            if stuck_dev is not None:
                m = stuck_dev.expand(shape)
                stuck = (m[:, :, 0] | m[:, :, 1]) & ~free
                stuck1 = m[:, :, 2] & ~free
            return Prepared(t, d0, c1p, c1m, qp, qm, stuck, e0, e1, e2, stuck1)

    def apply(self, theta: torch.Tensor, d: Draws | Prepared
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy weights (T, K, P) and stuck mask (T, K, P) for clean weights theta (K, P).

        Runs without autograd: the caller adds the straight-through gradient. d: raw draws, or
        draws already folded by prepare() (the training loop prepares once per block). Written
        for few tensor operations: at this network size each costs more than its arithmetic.
        """
        c = d if isinstance(d, Prepared) else self.prepare(d)
        with torch.no_grad():
            mn, mx = torch.aminmax(theta[:, self._gidx], dim=-1)  # per group (K, G)
            s = torch.maximum(mx, -mn).clamp_min(1e-30)[:, self.group]  # (K, P)
            # double column: w = d0 s + theta (C1 + (theta / s) Q)   (d0, Q pre-scaled)
            pos = theta >= 0
            inner = torch.where(pos, c.c1p, c.c1m)
            if c.qp is not None:
                inner = torch.addcmul(inner, theta / s, torch.where(pos, c.qp, c.qm))
            w = torch.addcmul(c.d0 * s, theta, inner)
            stuck = c.stuck
            if self.name == "reference":
                single_g = ((mn >= 0) | (mx <= 0)) & ~self._free_group
                if bool(single_g.any()):  # some tensor is all of one sign: single column
                    rng = mx - mn
                    rng = torch.where(rng > 0, rng, torch.ones_like(rng))  # sklearn's rule
                    gs = torch.stack((mn, rng), -1)[:, self.group]  # (K, P, 2)
                    mn_p, rng_p = gs[..., 0], gs[..., 1]
                    u = theta - mn_p
                    # w = min + range e0 + u (e1 + (u / range) e2)   (e0, e2 pre-scaled)
                    inner = c.e1 if c.e2 is None else torch.addcmul(c.e1, u / rng_p, c.e2)
                    ws = torch.addcmul(torch.addcmul(mn_p, rng_p, c.e0), u, inner)
                    single = single_g[:, self.group]
                    w = torch.where(single, ws, w)
                    if stuck is not None:
                        stuck = torch.where(single, c.stuck1, stuck)
            if stuck is None:
                stuck = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
            elif stuck.shape != w.shape:  # draws shared by the K networks (K = 1 in the draw)
                stuck = stuck.expand(w.shape)
            return w, stuck

    def draw(self, t: int, k: int, cfg, generator: torch.Generator | None) -> Draws:
        return self.noise.draw(self.keys, t, k, cfg, generator, four_sigma=self.four_sigma,
                               offset_sign=self.offset_sign)
