"""Paper-style figures of a non-ideality database (matplotlib, Agg, PNG). Display units: uS."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from database.nonideality import NonIdealityDB  # noqa: E402


def plot_tuning(db: NonIdealityDB, path: Path) -> Path:
    lv = db.tuning_levels * 1e6
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(lv, db.tuning_sigma_rel * 100, "o", label="measured")
    x = np.linspace(lv.min(), lv.max(), 50)
    a1.plot(x, db.sigma_rel(x * 1e-6) * 100, "-", label="linear fit")
    a1.set_xlabel("target conductance (uS)")
    a1.set_ylabel("tuning sigma (% of target)")
    a1.legend()
    a2.plot(lv, db.tuning_offset_rel * 100, "s", color="C3")
    a2.axhline(db.offset_mean_rel * 100, color="C3", ls="--",
               label=f"device mean {db.offset_mean_rel * 100:+.2f} %")
    a2.axhline(0, color="k", lw=0.5)
    a2.set_xlabel("target conductance (uS)")
    a2.set_ylabel("mean offset (% of target)")
    a2.legend()
    fig.suptitle("Tuning imprecision")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_disturbance(db: NonIdealityDB, path: Path, keys: list[int] | None = None) -> Path:
    present = sorted(set(db.disturbance_keys.tolist()))
    if keys is None:
        keys = [k for k in (1, 8, 16, 32, 48) if k in present] or present[:4]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    lo, hi = np.percentile(db.disturbance_delta * 1e6, [0.1, 99.9])
    bins = np.linspace(min(lo, -1), max(hi, 1), 60)
    for k in keys:
        a1.hist(db.disturbance_for(k) * 1e6, bins=bins, histtype="step", density=True, label=f"k={k}")
    a1.set_xlabel("conductance change (uS)")
    a1.set_ylabel("density")
    a1.set_yscale("log")
    a1.legend()
    ks = np.array(present)
    mu = np.array([db.disturbance_for(k).mean() for k in ks]) * 1e6
    p1 = np.array([np.percentile(db.disturbance_for(k), 1) for k in ks]) * 1e6
    a2.plot(ks, mu, "o-", ms=3, label="mean")
    a2.plot(ks, p1, "v-", ms=3, label="1st percentile")
    a2.axhline(0, color="k", lw=0.5)
    a2.set_xlabel("k = devices programmed after")
    a2.set_ylabel("conductance change (uS)")
    a2.legend()
    fig.suptitle("V/3 disturbance")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_stuck(db: NonIdealityDB, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if db.stuck_hrs_samples.size:
        ax.hist(db.stuck_hrs_samples * 1e6, bins=20, alpha=0.6, label="stuck HRS (measured)")
    if db.stuck_lrs_samples.size:
        ax.hist(db.stuck_lrs_samples * 1e6, bins=20, alpha=0.6, label="stuck LRS (measured)")
    lo, hi = db.stuck_hrs_range
    ax.axvspan(lo * 1e6, hi * 1e6, color="C0", alpha=0.1, label="HRS model")
    ax.axvline(db.stuck_lrs_mean * 1e6, color="C1", ls="--", label="LRS model mean")
    ax.set_xlabel("conductance (uS)")
    ax.set_ylabel("devices")
    ax.set_title(f"Stuck devices: HRS {db.stuck_hrs_rate * 100:.2f} %, "
                 f"LRS {db.stuck_lrs_rate * 100:.2f} %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_all(db: NonIdealityDB, out_dir: str | os.PathLike,
             keys: list[int] | None = None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_tuning(db, out / "tuning.png"),
            plot_disturbance(db, out / "disturbance.png", keys),
            plot_stuck(db, out / "stuck.png")]
