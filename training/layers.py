"""Hardware-aware layers and MLPs with an ensemble dimension.

Shapes: K networks live side by side in one model (parameters (K, out, in) and (K, out)), so K
seeds or variants train as one batched computation. A noisy forward takes a :class:`Draws` with
T draws and returns (T, K, batch, out): T = 1 in training (one simulated transfer per step, as in
the published code), T = many in Monte-Carlo evaluation (each draw fixed across the inputs).

Noise is sampled for the whole network in one go (all tensors flattened to (K, P)) by the
network's :class:`~training.mapping.Mapping`; a single :class:`HardwareAwareLinear` holds clean
parameters and computes with whatever (noisy) weights its network hands it. For one noisy layer
on its own, build ``HardwareAwareMLP([in, out])``.

Gradients: straight-through. The forward uses the noisy weight, d(noisy)/d(w) is taken as the
identity, except for weights with a stuck device in this draw, which get a zero gradient (and
the training loop also restores their value after the optimiser step, see training.train: the
forward returns the stuck mask for that, ``return_stuck=True``).

A model carries its tile layout (``layout``, a :class:`~training.tiles.TileLayout`): the noise
model's disturbance keys, the conductance plan and the checkpoint all take it from the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from database.nonideality import NonIdealityDB
from training.defaults import DEFAULT_MAPPING
from training.errors import TrainingError
from training.mapping import Mapping, Prepared, TensorSpec
from training.noise import Draws, NoiseConfig, NoiseModel
from training.tiles import DEFAULT_LAYOUT, TileLayout

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


class _StraightThrough(torch.autograd.Function):
    """Forward: the noisy weights of every tensor. Backward: identity, zero where stuck.

    One autograd node for the whole network instead of a chain of cat/slice/arithmetic nodes
    (that chain cost more than the noise itself at this network size). Its input is the whole
    network as one (K, P) tensor: the model's flat parameter when training set one up
    (HardwareAwareMLP.flat_parameter), else a concatenation of the layer parameters (so their
    .grad is filled as usual).
    """

    @staticmethod
    def forward(ctx, model, draws, side, flat):
        noisy, stuck = model.mapping.apply(flat.detach(), draws)
        any_stuck = (any(draws.any_stuck) if isinstance(draws, Prepared)
                     else bool(stuck.any()))
        side.append(stuck)  # the mask goes back to the caller, not through autograd
        ctx.stuck, ctx.any_stuck = stuck, any_stuck
        return tuple(model.split(noisy))

    @staticmethod
    def backward(ctx, *grads):
        g = torch.cat([q.flatten(2) for q in grads], -1)  # (T, K, P)
        if ctx.any_stuck:
            g = g.masked_fill(ctx.stuck, 0.0)
        return None, None, None, g[0] if g.shape[0] == 1 else g.sum(0)


class HardwareAwareLinear(nn.Module):
    """K linear layers (out x in) side by side; computes with clean or given noisy weights."""

    def __init__(self, in_features: int, out_features: int, k: int = 1) -> None:
        super().__init__()
        self.in_features, self.out_features, self.k = in_features, out_features, k
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(k, out_features))
        self.reset_parameters([None] * k)

    def reset_parameters(self, generators: list[torch.Generator | None]) -> None:
        """xavier_uniform weights and bias 0.01 (the published initialisation), per network."""
        bound = math.sqrt(6.0 / (self.in_features + self.out_features))
        with torch.no_grad():
            for j, g in enumerate(generators):
                u = torch.rand(self.out_features, self.in_features, generator=g)
                self.weight[j].copy_((2 * u - 1) * bound)
            self.bias.fill_(0.01)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, in) or (T, K, B, in); weight (T, K, out, in) (default: clean, T = 1)."""
        w = self.weight.unsqueeze(0) if weight is None else weight
        b = self.bias.unsqueeze(0) if bias is None else bias
        if x.dim() == 2:  # shared inputs: one GEMM for every (transfer, network)
            t, k = w.shape[:2]
            y = (x @ w.reshape(-1, self.in_features).T).view(x.shape[0], t, k, -1)
            y = y.permute(1, 2, 0, 3)
        else:
            y = torch.matmul(x, w.transpose(-1, -2))
        return y + b.unsqueeze(-2)


class HardwareAwareMLP(nn.Module):
    """An MLP of HardwareAwareLinear layers (K networks), e.g. sizes (2, 8, 1)."""

    def __init__(self, sizes: tuple[int, ...] | list[int], k: int = 1,
                 activation: str = "sigmoid", seeds: list[int] | None = None,
                 layout: TileLayout = DEFAULT_LAYOUT) -> None:
        super().__init__()
        if len(sizes) < 2 or min(sizes) < 1:
            raise TrainingError(f"bad layer sizes {sizes}")
        if activation not in ACTIVATIONS:
            raise TrainingError(f"unknown activation {activation!r}; choose {list(ACTIVATIONS)}")
        self.sizes, self.k, self.activation = tuple(int(s) for s in sizes), int(k), activation
        self.layout = layout
        self.layers = nn.ModuleList(HardwareAwareLinear(a, b, k)
                                    for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=False))
        if seeds is not None:
            self.init_from_seeds(seeds)
        self.mapping: Mapping | None = None
        self.noise_cfg = NoiseConfig.off()
        self._pack()

    # -- one buffer for all parameters ------------------------------------------------------------
    def _pack(self) -> None:
        """Make every parameter a view into one (K, P) buffer (``self._flat``).

        The noisy forward then reads all weights without a concatenation, and the training loop
        restores stuck weights with one operation on the buffer. Parameter names, shapes and
        the state dict are unchanged (views, not new parameters). With K > 1 the views are
        not contiguous, and torch's fused Adam mis-updates non-contiguous parameters (it treats
        them as contiguous; seen with torch 2.13): optimise ``flat_parameter()`` instead (the
        training loop does), or the layer parameters with the non-fused Adam.
        """
        params = self.tensors()
        flat = torch.cat([p.detach().flatten(1) for p in params], 1)
        self._flat = None
        self._flat_param = None
        a = 0
        for p in params:
            n = p[0].numel()
            p.data = flat[:, a:a + n].view(p.shape)
            a += n
        self._flat = flat

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .double() ... may re-allocate
        out = super()._apply(fn, recurse)
        if hasattr(self, "_flat"):
            self._pack()
        return out

    @property
    def packed(self) -> bool:
        """Do the parameters share the one buffer (K = 1, not re-allocated since)?"""
        f = self._flat
        if f is None:
            return False
        p0, p1 = self.layers[0].weight, self.layers[-1].bias
        return (p0.data_ptr() == f.data_ptr() and f.dtype == p0.dtype
                and p1.data_ptr() + p1.element_size() * p1.shape[-1]
                == f.data_ptr() + f.element_size() * f.shape[1])

    def flat_parameter(self) -> nn.Parameter:
        """A (K, P) leaf parameter on the shared buffer, for the optimiser (one contiguous tensor).

        From now on every forward (clean or noisy) computes with views of it, so gradients
        land in its .grad (not in the layer parameters'), and its in-place updates are the
        layer parameters' updates.
        """
        if not self.packed:
            self._pack()
        # a plain attribute, not a registered parameter: the state dict stays per layer
        self.__dict__["_flat_param"] = nn.Parameter(self._flat)
        return self._flat_param

    def flat_weights(self) -> torch.Tensor:
        """All parameters as one (K, P) tensor, detached: the shared buffer when packed (writes
        to it change the parameters), else a concatenated copy."""
        if self.packed:
            return self._flat
        return torch.cat([p.detach().flatten(1) for p in self.tensors()], 1)

    def init_from_seeds(self, seeds: list[int]) -> None:
        """Network j initialised from its own generator seeded with seeds[j]."""
        if len(seeds) != self.k:
            raise TrainingError(f"{len(seeds)} seeds for {self.k} networks")
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        for layer in self.layers:
            layer.reset_parameters(gens)

    def specs(self) -> list[TensorSpec]:
        out = []
        for i, layer in enumerate(self.layers):
            out.append(TensorSpec(f"layers.{i}.weight", (layer.out_features, layer.in_features),
                                  i, "weight"))
            out.append(TensorSpec(f"layers.{i}.bias", (layer.out_features,), i, "bias"))
        return out

    def tensors(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in (layer.weight, layer.bias)]

    # -- noise ------------------------------------------------------------------------------------
    def attach_noise(self, db: NonIdealityDB | NoiseModel, *, mapping: str = DEFAULT_MAPPING,
                     cfg: NoiseConfig | None = None) -> HardwareAwareMLP:
        """Sample non-idealities from db with the given mapping (on this model's tile layout)
        on noisy forwards."""
        dev = self.layers[0].weight.device
        nm = db if isinstance(db, NoiseModel) else NoiseModel(db, device=dev)
        self.mapping = Mapping(self.specs(), mapping, nm, layout=self.layout)
        self.noise_cfg = cfg if cfg is not None else NoiseConfig()
        return self

    def draw(self, t: int, generator: torch.Generator | Sequence[torch.Generator] | None = None,
             cfg: NoiseConfig | None = None, *, shared: bool = False) -> Draws:
        """T independent transfers' worth of variates for all K networks.

        generator: one for all networks, or one per network (network j's draws then do not
        depend on K). shared: one set of variates used by every network (K = 1 in the draw,
        broadcast): each network sees the same transfers it would see evaluated alone.
        """
        if self.mapping is None:
            raise TrainingError("no non-ideality model attached (attach_noise first)")
        return self.mapping.draw(t, 1 if shared else self.k, cfg or self.noise_cfg, generator)

    def effective(self, draws: Draws | Prepared) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Noisy weights [(T, K, *shape)] with straight-through gradients, stuck mask (T, K, P)."""
        side: list[torch.Tensor] = []
        fp = self._flat_param if self.packed else None
        flat = fp if fp is not None else torch.cat([p.flatten(1) for p in self.tensors()], 1)
        outs = _StraightThrough.apply(self, draws, side, flat)
        return list(outs), side[0]

    def forward(self, x: torch.Tensor, draws: Draws | Prepared | None = None,
                return_stuck: bool = False):
        """Logits (T, K, B, out); clean (T = 1) when draws is None."""
        act = ACTIVATIONS[self.activation]
        stuck = None
        if draws is None:
            fp = self._flat_param if self.packed else None
            ws = [None] * (2 * len(self.layers)) if fp is None else \
                [w.unsqueeze(0) for w in self.split(fp)]
        else:
            ws, stuck = self.effective(draws)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, ws[2 * i], ws[2 * i + 1])
            if i < len(self.layers) - 1:
                h = act(h)
        return (h, stuck) if return_stuck else h

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(..., K, P) -> per-tensor views (..., K, *shape) in self.tensors() order."""
        shapes = [p.shape[1:] for p in self.tensors()]
        parts = flat.split([s.numel() for s in shapes], -1)
        lead = flat.shape[:-1]
        return [q.view(*lead, *s) for q, s in zip(parts, shapes, strict=True)]
