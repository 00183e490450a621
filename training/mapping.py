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

from training.errors import TrainingError
from training.noise import Draws, NoiseModel
from training.tiles import layer_devices, reference_visit_keys

MAPPINGS = ("physical", "reference")


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
                 tile_rows: int = 8, tile_cols: int = 8, share_bias: bool = True) -> None:
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
                lay = layer_devices(w.shape[0], w.shape[1], tile_rows=tile_rows,
                                    tile_cols=tile_cols, share_bias=share_bias)
                keys[:, a:b] = (lay.weight_k if s.kind == "weight" else lay.bias_k).reshape(2, -1)
            sign = [1.0, 1.0]
        else:
            for s, a, b in zip(specs, self.offsets[:-1], self.offsets[1:], strict=False):
                keys[:, a:b] = reference_visit_keys(s.shape).reshape(1, -1)
                four[:, a:b] = len(s.shape) == 2
                free[a:b] = b - a == 1
            sign = [1.0, 1.0, -1.0]  # the single-column path subtracts the offset
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
    def apply(self, theta: torch.Tensor, d: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy weights (T, K, P) and stuck mask (T, K, P) for clean weights theta (K, P).

        Runs without autograd: the caller adds the straight-through gradient.
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

    def draw(self, t: int, k: int, cfg, generator: torch.Generator | None) -> Draws:
        return self.noise.draw(self.keys, t, k, cfg, generator, four_sigma=self.four_sigma,
                               offset_sign=self.offset_sign)
