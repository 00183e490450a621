"""Training loop (hardware-aware and regular), checkpoints, device selection.

Defaults are the paper's: 2-8-1 sigmoid MLP, Adam lr 0.1, weight decay 1e-4 for the
hardware-aware network and none for the regular one, batch 256, BCE with logits, 10,000 epochs
(4 mini-batches of the 875 training points each: 40,000 steps). The regular network is trained
by the same loop with every non-ideality off.

Speed: all variates for a block of ``draw_block`` steps are drawn at once (training.noise), the
noisy weights of the whole network are a few element-wise operations on one (K, P) tensor, and
torch runs on one thread for these tiny tensors (thread start-up costs more than the work).

Seeds: network j of the ensemble is initialised from ``seed + j``; the mini-batch order comes
from ``data_seed`` (default: ``seed``) and is shared by the K networks; the noise from its own
generator derived from ``seed``. With the noise off, an ensemble of K equals K separate runs with
seeds seed + j and the same data_seed. With noise on, member j sees different (equally
distributed) draws than a separate run would.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from database.nonideality import NonIdealityDB
from training.errors import TrainingError
from training.layers import HardwareAwareMLP
from training.mapping import MAPPINGS
from training.noise import NoiseConfig

CHECKPOINT_KIND = "xbarlab-model"
CHECKPOINT_VERSION = 1
NOISE_SEED_OFFSET = 1_000_003  # keeps the noise stream apart from the init streams


@dataclass
class TrainConfig:
    sizes: tuple[int, ...] = (2, 8, 1)
    activation: str = "sigmoid"
    hardware_aware: bool = True
    epochs: int = 10_000
    batch_size: int = 256
    lr: float = 0.1
    weight_decay: float | None = None  # None: 1e-4 hardware-aware, 0 regular (the paper's)
    seed: int = 0
    data_seed: int | None = None  # None: seed
    k: int = 1  # networks trained side by side (seeds seed .. seed + k - 1)
    mapping: str = "reference"
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    tile_rows: int = 8
    tile_cols: int = 8
    share_bias: bool = True
    dataset: str = "moons"
    draw_block: int = 1000  # steps whose variates are drawn in one call
    freeze_stuck: bool = True  # restore weights that had a stuck device after each step

    def __post_init__(self) -> None:
        if isinstance(self.noise, dict):
            self.noise = NoiseConfig(**self.noise)
        self.sizes = tuple(int(s) for s in self.sizes)
        if self.mapping not in MAPPINGS:
            raise TrainingError(f"unknown mapping {self.mapping!r}; choose one of {MAPPINGS}")
        if self.epochs < 0 or self.batch_size < 1 or self.k < 1:
            raise TrainingError("epochs >= 0, batch_size >= 1 and k >= 1 required")

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 1e-4 if self.hardware_aware else 0.0

    @property
    def seeds(self) -> list[int]:
        return [self.seed + j for j in range(self.k)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        return d


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
    """Content hash of a non-ideality database (which DB a checkpoint was trained with)."""
    h = hashlib.sha256()
    for name in sorted(vars(db)):
        v = getattr(db, name)
        h.update(name.encode())
        if isinstance(v, np.ndarray):
            h.update(np.ascontiguousarray(v).tobytes())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()[:16]


def build_model(cfg: TrainConfig, db: NonIdealityDB | None, device: torch.device,
                *, noisy: bool | None = None) -> HardwareAwareMLP:
    """Model initialised from cfg's seeds; noise attached when noisy (default: hardware-aware)."""
    model = HardwareAwareMLP(cfg.sizes, cfg.k, cfg.activation, seeds=cfg.seeds).to(device)
    if noisy is None:
        noisy = cfg.hardware_aware
    if noisy:
        if db is None:
            raise TrainingError("a non-ideality database is needed for hardware-aware training")
        model.attach_noise(db, mapping=cfg.mapping, cfg=cfg.noise, tile_rows=cfg.tile_rows,
                           tile_cols=cfg.tile_cols, share_bias=cfg.share_bias)
    return model


def _adam_kwargs(device: torch.device) -> dict:
    """The fused Adam kernel: one call for all tensors (3-4x faster than the default here)."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return {}
    return {"fused": True}


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
    steps: int
    loss_history: list[float]  # mean loss per network, every `log_every` steps
    db_hash: str | None


def train(cfg: TrainConfig, x: np.ndarray, y: np.ndarray, db: NonIdealityDB | None = None, *,
          device: str | torch.device | None = None,
          progress: Callable[[int, int], None] | None = None,
          log_every: int = 400) -> TrainResult:
    """Train K networks per cfg on (x, y). progress(step, total) is called every log_every."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    set_threads(dev)
    model = build_model(cfg, db, dev)
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev)
    yt = torch.as_tensor(np.asarray(y), device=dev)
    yt = yt.float() if cfg.sizes[-1] == 1 else yt.long()
    n = xt.shape[0]
    params = model.tensors()
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.effective_weight_decay,
                           **_adam_kwargs(dev))
    g_data = torch.Generator().manual_seed(cfg.seed if cfg.data_seed is None else cfg.data_seed)
    g_noise = torch.Generator(device=dev).manual_seed(cfg.seed + NOISE_SEED_OFFSET)
    noisy = cfg.hardware_aware and cfg.noise.any()
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch
    freeze = noisy and cfg.freeze_stuck and cfg.noise.stuck
    history: list[float] = []
    acc_loss = torch.zeros((), device=dev)
    block = None
    step = last_log = 0
    t0 = time.perf_counter()
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=g_data).to(dev)
        for b in range(per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = xt[idx], yt[idx]
            if noisy:
                i = step % cfg.draw_block
                if i == 0:
                    block = model.draw(min(cfg.draw_block, total - step), g_noise)
                logits, stuck = model(xb, block[i:i + 1], return_stuck=True)
            else:
                logits, stuck = model(xb), None
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if freeze and model.last_any_stuck:  # about half the steps of the 2-8-1 network
                with torch.no_grad():
                    clean = model.split(model.last_clean)
                    for p, s, m in zip(params, clean, model.split(stuck[0]), strict=False):
                        p.copy_(torch.where(m, s, p))
            acc_loss += loss.detach()
            step += 1
            if step % log_every == 0 or step == total:
                history.append(float(acc_loss) / (cfg.k * (step - last_log)))
                acc_loss.zero_()
                last_log = step
                if progress is not None:
                    progress(step, total)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return TrainResult(model, cfg, seconds, step, history, db_hash(db) if db is not None else None)


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
        "loss_history": result.loss_history,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device | None = None
                    ) -> tuple[HardwareAwareMLP, TrainConfig, dict]:
    """(model without noise attached, its TrainConfig, the rest of the checkpoint)."""
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
    cfg = TrainConfig(**payload["config"])
    dev = device if isinstance(device, torch.device) else pick_device(device)
    model = HardwareAwareMLP(cfg.sizes, cfg.k, cfg.activation).to(dev)
    model.load_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k not in ("config", "state_dict")}
    return model, cfg, meta


def load_dataset(name: str, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Shipped datasets as numpy: 'moons' (the published sets) or 'digits' (scikit-learn)."""
    from database import datasets

    if name == "moons":
        return datasets.load_moons_all()
    if name == "digits":
        return datasets.load_digits(seed=seed)
    raise TrainingError(f"unknown dataset {name!r}; choose moons or digits")
