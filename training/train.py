"""Training loop (hardware-aware and regular), checkpoints, device selection.

Defaults are the paper's (training.defaults, half-moons): 2-8-1 sigmoid MLP, Adam lr 0.1,
weight decay 1e-4 for the hardware-aware network and none for the regular one, batch 256, BCE
with logits, 10,000 epochs (4 mini-batches of the 875 training points each: 40,000 steps);
:func:`train_config` gives another dataset's defaults. The regular network is trained by the
same loop with every non-ideality off.

Speed: all variates for a block of ``draw_block`` steps are drawn at once (training.noise) and
folded into per-weight coefficients once per block (Mapping.prepare), so the noisy weights of
the whole network are about ten element-wise operations on one (K, P) tensor per step; the
optimiser sees the network as that one (K, P) parameter (HardwareAwareMLP.flat_parameter); torch
runs on one thread for these tiny tensors (thread start-up costs more than the work).

Seeds: network j of the ensemble is initialised from ``seed + j`` and draws its noise (and its
validation transfers) from generators of its own seeded from ``seed + j``; the mini-batch order
comes from ``data_seed`` (default: ``seed``) and is shared by the K networks. So an ensemble of
K equals K separate runs with seeds seed + j and the same data_seed, noise on or off, up to
floating-point rounding of the batched matrix products (tested).

Convergence-aware training (``patience``) is off by default; see TrainConfig.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from database.nonideality import NonIdealityDB
from training.defaults import DEFAULT_MAPPING, LABELS, MAPPINGS, dataset_defaults, network_name
from training.errors import TrainingError
from training.layers import ACTIVATIONS, HardwareAwareMLP
from training.noise import NoiseConfig
from training.tiles import DEFAULT_LAYOUT, TileLayout

CHECKPOINT_KIND = "xbarlab-model"
CHECKPOINT_VERSION = 1
NOISE_SEED_OFFSET = 1_000_003  # keeps the noise stream apart from the init streams
VAL_SEED_OFFSET = 3_000_017  # validation draws and the held-out split
DRAW_BLOCK_ELEMENTS = 1 << 18  # pre-drawn variates per field and network in one block


_MOONS = dataset_defaults("moons")


@dataclass
class TrainConfig:
    sizes: tuple[int, ...] = _MOONS.sizes()
    activation: str = _MOONS.activation
    hardware_aware: bool = True
    epochs: int = _MOONS.epochs
    batch_size: int = _MOONS.batch_size
    lr: float = _MOONS.lr
    weight_decay: float | None = None  # None: 1e-4 hardware-aware, 0 regular (the paper's)
    seed: int = 0
    data_seed: int | None = None  # None: seed
    k: int = 1  # networks trained side by side (seeds seed .. seed + k - 1)
    # explicit seeds of the K networks instead of seed .. seed + k - 1 (e.g. 0, 2, 3)
    seed_list: tuple[int, ...] | None = None
    mapping: str = DEFAULT_MAPPING
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    tile_rows: int = DEFAULT_LAYOUT.rows
    tile_cols: int = DEFAULT_LAYOUT.cols
    share_bias: bool = DEFAULT_LAYOUT.share_bias
    dataset: str = "moons"
    draw_block: int = 1000  # steps whose variates are drawn in one call (capped by size)
    freeze_stuck: bool = True  # restore weights that had a stuck device after each step
    # convergence-aware training (off by default: the paper's fixed number of epochs). Every
    # eval_every epochs the validation loss (under noise for a hardware-aware network: averaged
    # over val_transfers transfers, the same ones at every check; clean for a regular one) is
    # measured; a network stops when it has not improved by more than min_delta for `patience`
    # epochs. It then keeps its weights of that check while the others go on.
    patience: int | None = None  # epochs; None: off
    min_delta: float = 0.0
    eval_every: int = 50  # epochs between validation checks
    val_transfers: int = 32
    val_fraction: float = 0.125  # held out of the training data when no validation set given

    def __post_init__(self) -> None:
        if isinstance(self.noise, dict):
            self.noise = NoiseConfig(**self.noise)
        self.sizes = tuple(int(s) for s in self.sizes)
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise TrainingError(f"sizes must be two or more layer widths >= 1, got {self.sizes}")
        if self.activation not in ACTIVATIONS:
            raise TrainingError(f"unknown activation {self.activation!r}; choose one of "
                                f"{tuple(ACTIVATIONS)}")
        if self.mapping not in MAPPINGS:
            raise TrainingError(f"unknown mapping {self.mapping!r}; choose one of {MAPPINGS}")
        if self.epochs < 0 or self.batch_size < 1 or self.k < 1:
            raise TrainingError("epochs >= 0, batch_size >= 1 and k >= 1 required")
        if self.tile_rows < 1 or self.tile_cols < 1:
            raise TrainingError(f"tile size must be at least 1 x 1, got {self.tile_rows} x "
                                f"{self.tile_cols}")
        if self.seed_list is not None:
            self.seed_list = tuple(int(s) for s in self.seed_list)
            if len(self.seed_list) != self.k:
                raise TrainingError(f"{len(self.seed_list)} seeds in seed_list for k = {self.k}")
        if self.patience is not None and (self.patience < 1 or self.eval_every < 1
                                          or self.val_transfers < 1
                                          or not 0 < self.val_fraction < 1):
            raise TrainingError("early stopping needs patience, eval_every, val_transfers >= 1 "
                                "and 0 < val_fraction < 1")

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 1e-4 if self.hardware_aware else 0.0

    @property
    def seeds(self) -> list[int]:
        if self.seed_list is not None:
            return list(self.seed_list)
        return [self.seed + j for j in range(self.k)]

    @property
    def layout(self) -> TileLayout:
        return TileLayout(self.tile_rows, self.tile_cols, self.share_bias)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        return d


def train_config(dataset: str = "moons", *, hidden: tuple[int, ...] | list[int] | None = None,
                 **settings) -> TrainConfig:
    """A TrainConfig for `dataset`: its defaults (training.defaults.DATASETS: network, epochs,
    lr, batch size) wherever `hidden` or `settings` leave a value unset (None is unset)."""
    d = dataset_defaults(dataset)
    kw = {"sizes": d.sizes(hidden), "activation": d.activation, "epochs": d.epochs,
          "lr": d.lr, "batch_size": d.batch_size, "dataset": dataset}
    kw.update({name: v for name, v in settings.items() if v is not None})
    return TrainConfig(**kw)


def pick_device(device: str | None = None) -> torch.device:
    """'auto' / None: CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise TrainingError(f"bad device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("CUDA requested but not available")
    return dev


def set_threads(device: torch.device) -> None:
    """One intra-op thread on CPU: these tensors are far too small to gain from more."""
    if device.type == "cpu":
        torch.set_num_threads(1)


def db_hash(db: NonIdealityDB) -> str:
    """Content hash of a non-ideality database (which DB a checkpoint was trained with).

    An optional part the database does not have (None) leaves the hash as it was before that
    part existed, so a checkpoint keeps matching the database it was trained with."""
    h = hashlib.sha256()

    def feed(obj) -> None:
        for name in sorted(vars(obj)):
            v = getattr(obj, name)
            if v is None:
                continue
            h.update(name.encode())
            if isinstance(v, np.ndarray):
                h.update(np.ascontiguousarray(v).tobytes())
            elif is_dataclass(v):
                feed(v)
            else:
                h.update(repr(v).encode())

    feed(db)
    return h.hexdigest()[:16]


def build_model(cfg: TrainConfig, db: NonIdealityDB | None, device: torch.device,
                *, noisy: bool | None = None) -> HardwareAwareMLP:
    """Model initialised from cfg's seeds; noise attached when noisy (default: hardware-aware)."""
    model = HardwareAwareMLP(cfg.sizes, cfg.k, cfg.activation, seeds=cfg.seeds,
                             layout=cfg.layout).to(device)
    if noisy is None:
        noisy = cfg.hardware_aware
    if noisy:
        if db is None:
            raise TrainingError("a non-ideality database is needed for hardware-aware training")
        model.attach_noise(db, mapping=cfg.mapping, cfg=cfg.noise)
    return model


def _adam_kwargs(device: torch.device) -> dict:
    """The fused Adam kernel: one call for all tensors (3-4x faster than the default here)."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return {}
    return {"fused": True}


def loss_per_network(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss of each network (K,) over draws and points; logits (T, K, B, out)."""
    t, k, b, out = logits.shape
    if out == 1:
        per = F.binary_cross_entropy_with_logits(logits[..., 0], y.expand(t, k, b),
                                                 reduction="none")
    else:
        per = F.cross_entropy(logits.reshape(-1, out), y.repeat(t * k),
                              reduction="none").view(t, k, b)
    return per.mean((0, 2))


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over networks of each network's mean loss (so each gets its own gradient).

    logits (T, K, B, out); y (B,) float {0,1} for one output (BCE with logits), int64 classes
    for several outputs (cross-entropy).
    """
    t, k, b, out = logits.shape
    if out == 1:
        return F.binary_cross_entropy_with_logits(logits[..., 0], y.expand(t, k, b)) * (t * k)
    return F.cross_entropy(logits.reshape(-1, out), y.repeat(t * k)) * (t * k)


@dataclass
class TrainResult:
    model: HardwareAwareMLP
    config: TrainConfig
    seconds: float
    steps: int  # optimiser steps run (the longest-running network's)
    loss_history: list[float]  # mean loss per network, every `log_every` steps
    db_hash: str | None
    steps_per_network: list[int] = field(default_factory=list)  # where each network stopped
    stopped_early: list[bool] = field(default_factory=list)
    val_history: list[tuple[int, list[float]]] = field(default_factory=list)  # (step, losses)


def _draw_block(cfg: TrainConfig, model: HardwareAwareMLP) -> int:
    """Steps per pre-drawn block: cfg.draw_block, capped so one network's block stays small.

    The cap depends on one network's size only (never on K), so that network j draws the same
    variates in the same order whether it trains alone or in an ensemble.
    """
    per_step = len(model.mapping.keys) * model.mapping.p  # devices per network
    return max(1, min(cfg.draw_block, DRAW_BLOCK_ELEMENTS // per_step))


def _split_validation(cfg: TrainConfig, x: np.ndarray, y: np.ndarray):
    """Hold out cfg.val_fraction of (x, y) (seeded by data_seed) when no validation set given."""
    n = len(y)
    n_val = max(1, int(round(cfg.val_fraction * n)))
    seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    perm = np.random.default_rng(seed + VAL_SEED_OFFSET).permutation(n)
    va, tr = perm[:n_val], perm[n_val:]
    return x[tr], y[tr], (x[va], y[va])


class _EarlyStopping:
    """Per-network patience on the validation loss (under noise for hardware-aware networks)."""

    def __init__(self, cfg: TrainConfig, model: HardwareAwareMLP, val, noisy: bool,
                 dev: torch.device, per_epoch: int) -> None:
        self.cfg, self.model, self.noisy, self.per_epoch = cfg, model, noisy, per_epoch
        xv, yv = val
        self.xv = torch.as_tensor(np.asarray(xv), dtype=torch.float32, device=dev)
        yv = torch.as_tensor(np.asarray(yv), device=dev)
        self.yv = yv.float() if cfg.sizes[-1] == 1 else yv.long()
        # the same val_transfers transfers at every check (the loss then changes only with the
        # weights), drawn per network from its own seed: they do not depend on K
        self.draws = None
        if noisy:
            gens = [torch.Generator(device=dev).manual_seed(s + VAL_SEED_OFFSET)
                    for s in cfg.seeds]
            self.draws = model.mapping.prepare(model.draw(cfg.val_transfers, gens))
        self.best = torch.full((cfg.k,), math.inf, dtype=torch.float64)
        self.best_epoch = torch.zeros(cfg.k, dtype=torch.long)
        self.done = torch.zeros(cfg.k, dtype=torch.bool)
        self.stop_step = [0] * cfg.k
        self.history: list[tuple[int, list[float]]] = []

    @torch.no_grad()
    def losses(self) -> torch.Tensor:
        """Validation loss of each network (K,), averaged over val_transfers transfers."""
        m = self.model
        if self.noisy:
            logits = m(self.xv, self.draws)
        else:
            logits = m(self.xv)
        return loss_per_network(logits, self.yv).double().cpu()

    def check(self, epoch: int, step: int) -> torch.Tensor:
        """After `epoch` epochs: update; returns the networks that just stopped (bool (K,))."""
        val = self.losses()
        self.history.append((step, [float(v) for v in val]))
        better = (val < self.best - self.cfg.min_delta) & ~self.done
        self.best = torch.where(better, val, self.best)
        self.best_epoch = torch.where(better, torch.full_like(self.best_epoch, epoch),
                                      self.best_epoch)
        newly = ~self.done & ~better & (epoch - self.best_epoch >= self.cfg.patience)
        for j in torch.nonzero(newly).flatten().tolist():
            self.stop_step[j] = step
        self.done |= newly
        return newly


def train(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, db: NonIdealityDB | None = None, *,
          device: str | torch.device | None = None,
          progress: Callable[[int, int], None] | None = None,
          log_every: int = 400,
          val: tuple[np.ndarray, np.ndarray] | None = None) -> TrainResult:
    """Train K networks per cfg on (x, y). progress(step, total) is called every log_every.

    val: validation set for early stopping (cfg.patience); when None and early stopping is on,
    cfg.val_fraction of (x, y) is held out (seeded by data_seed) and not trained on.
    """
    dev = device if isinstance(device, torch.device) else pick_device(device)
    set_threads(dev)
    model = build_model(cfg, db, dev)
    early = cfg.patience is not None
    if early and val is None:
        x, y, val = _split_validation(cfg, np.asarray(x), np.asarray(y))
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev)
    yt = torch.as_tensor(np.asarray(y), device=dev)
    yt = yt.float() if cfg.sizes[-1] == 1 else yt.long()
    n = xt.shape[0]
    noisy = cfg.hardware_aware and cfg.noise.any()
    # the optimiser sees the whole network as one contiguous (K, P) parameter (one fused Adam
    # tensor, one-op restores); the regular single network keeps its layer parameters
    params = [model.flat_parameter()] if noisy or cfg.k > 1 else model.tensors()
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.effective_weight_decay,
                           **_adam_kwargs(dev))
    g_data = torch.Generator().manual_seed(cfg.seed if cfg.data_seed is None else cfg.data_seed)
    # one noise generator per network, seeded from the network's own seed: network j draws the
    # same variates whether it trains alone or with others (k = 1: the generator of before)
    g_noise = [torch.Generator(device=dev).manual_seed(s + NOISE_SEED_OFFSET) for s in cfg.seeds]
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch
    freeze = noisy and cfg.freeze_stuck and cfg.noise.stuck
    stopper = (_EarlyStopping(cfg, model, val, cfg.hardware_aware and db is not None
                              and model.mapping is not None and cfg.noise.any(), dev, per_epoch)
               if early else None)
    block_len = _draw_block(cfg, model) if noisy else 0
    history: list[float] = []
    acc_loss = torch.zeros((), device=dev)
    block = None
    frozen: list[torch.Tensor] | None = None  # parameters of networks that stopped early
    step = last_log = 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g_data).to(dev)
        for b in range(per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = xt[idx], yt[idx]
            restore = False  # weights with a stuck device this step go back after the step
            if noisy:
                i = step % block_len
                if i == 0:
                    # always a full block: the random stream must not depend on the run length
                    block = model.mapping.prepare(model.draw(block_len, g_noise)).steps()
                logits, stuck = model(xb, block[i], return_stuck=True)
                # about half the steps of the 2-8-1 network have a stuck device
                restore = freeze and block[i].any_stuck[0]
            else:
                logits = model(xb)
            loss = loss_fn(logits, yb)
            if restore:  # the optimiser updates the buffer in place: keep a copy of before
                clean = model.flat_weights().clone()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if restore:
                with torch.no_grad():  # one buffer behind every parameter
                    flat = model.flat_weights()
                    flat.copy_(torch.where(stuck[0], clean, flat))
            if frozen is not None:  # networks that stopped keep their weights
                with torch.no_grad():
                    flat = model.flat_weights()
                    flat[stopper.done] = frozen[stopper.done]
            acc_loss += loss.detach()
            step += 1
            if step % log_every == 0 or step == total:
                history.append(float(acc_loss) / (cfg.k * (step - last_log)))
                acc_loss.zero_()
                last_log = step
                if progress is not None:
                    progress(step, total)
        if stopper is not None and (epoch + 1) % cfg.eval_every == 0:
            if stopper.check(epoch + 1, step).any():
                if bool(stopper.done.all()):
                    break
                frozen = model.flat_weights().clone()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if stopper is not None:
        steps_each = [s if d else step for s, d in zip(stopper.stop_step,
                                                       stopper.done.tolist(), strict=True)]
        stopped = stopper.done.tolist()
        val_hist = stopper.history
    else:
        steps_each, stopped, val_hist = [step] * cfg.k, [False] * cfg.k, []
    if step and step % log_every and step != total:  # stopped early: log the tail
        history.append(float(acc_loss) / (cfg.k * (step - last_log)))
    return TrainResult(model, cfg, seconds, step, history,
                       db_hash(db) if db is not None else None, steps_each, stopped, val_hist)


def train_with_bar(cfg: TrainConfig, x: np.ndarray, y: np.ndarray,
                   db: NonIdealityDB | None = None, *, show: bool = True, **kw) -> TrainResult:
    """train() behind the project's progress bar (protocols.progress), titled by the network."""
    from protocols.progress import Bar

    title = f"train {LABELS[network_name(cfg.hardware_aware)]}"
    with Bar(title, None, enabled=show, unit="steps", pulses=False) as bar:
        res = train(cfg, x, y, db, progress=bar.update, **kw)
        bar.update(res.steps, res.steps)  # an early stop ends the bar where training ended
    return res


# -- checkpoints ----------------------------------------------------------------------------------


def save_checkpoint(result: TrainResult, path: str | Path) -> Path:
    """Config + weights + DB hash + history; reloads to an identical model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "kind": CHECKPOINT_KIND,
        "version": CHECKPOINT_VERSION,
        "config": result.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "db_hash": result.db_hash,
        "train_seconds": result.seconds,
        "steps": result.steps,
        "steps_per_network": list(result.steps_per_network),
        "stopped_early": list(result.stopped_early),
        "val_history": [[int(st), [float(v) for v in ls]] for st, ls in result.val_history],
        "loss_history": result.loss_history,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device | None = None
                    ) -> tuple[HardwareAwareMLP, TrainConfig, dict]:
    """(model without noise attached, its TrainConfig, the rest of the checkpoint).

    Everything is checked before it is used: the config (no unknown key, valid values), the
    tensors (each one the network needs, of its shape, finite). Any problem is a TrainingError
    of one line naming what is wrong, so nothing downstream (an evaluation, a conductance plan)
    is computed from a damaged file.
    """
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise TrainingError(f"{path}: not a readable xbarlab checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise TrainingError(f"{path}: not an xbarlab model checkpoint")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise TrainingError(f"{path}: checkpoint version {payload['version']} is newer than "
                            f"this xbarlab reads")
    cfg = _checkpoint_config(path, payload.get("config"))
    model = HardwareAwareMLP(cfg.sizes, cfg.k, cfg.activation, layout=cfg.layout)
    _check_tensors(path, payload.get("state_dict"), model.state_dict())
    model.load_state_dict(payload["state_dict"])
    dev = device if isinstance(device, torch.device) else pick_device(device)
    meta = {k: v for k, v in payload.items() if k not in ("config", "state_dict")}
    return model.to(dev), cfg, meta


def _checkpoint_config(path: Path, config) -> TrainConfig:
    if not isinstance(config, dict):
        raise TrainingError(f"{path}: the checkpoint's config is not a mapping")
    unknown = sorted(set(config) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise TrainingError(f"{path}: the checkpoint's config has an unknown key {unknown[0]!r}")
    try:
        return TrainConfig(**config)
    except (TrainingError, TypeError, ValueError) as e:
        raise TrainingError(f"{path}: the checkpoint's config is invalid: {e}") from None


def _check_tensors(path: Path, state, want: dict[str, torch.Tensor]) -> None:
    """Every tensor the config's network needs, of its shape, finite; nothing else."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise TrainingError(f"{path}: the checkpoint's state_dict is not a mapping of tensors")
    for name in want:
        if name not in state:
            raise TrainingError(f"{path}: the checkpoint lacks tensor {name!r}")
    for name in state:
        if name not in want:
            raise TrainingError(f"{path}: the checkpoint holds an unexpected tensor {name!r}")
    for name, ref in want.items():
        t = state[name]
        if t.shape != ref.shape:
            raise TrainingError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}; the "
                                f"config's network needs {tuple(ref.shape)}")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise TrainingError(f"{path}: tensor {name!r} holds NaN, inf or non-float values")
