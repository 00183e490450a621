"""The files of a Monte-Carlo evaluation: figures (PNG) and numbers (summary.json), the
hardware-aware and the regular network side by side. (The demo's report is xbarlab/report.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.defaults import LABELS
from training.evaluate import MonteCarloResult, class1_share
from training.layers import HardwareAwareMLP


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_histograms(results: dict[str, MonteCarloResult], path: Path, k: int = 0) -> Path:
    """Per-transfer test accuracy and per-point correct rate, one colour per network."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = np.linspace(0, 1, 41)
    for name, res in results.items():
        ax[0].hist(res.transfer_acc[:, k], bins=bins, alpha=0.6, label=LABELS.get(name, name))
        ax[1].hist(res.point_rate[k], bins=bins, alpha=0.6, label=LABELS.get(name, name))
    ax[0].set(xlabel="test accuracy of one transfer", ylabel="transfers",
              title=f"{next(iter(results.values())).n} simulated transfers")
    ax[1].axvline(0.95, color="k", ls="--", lw=0.8)
    ax[1].set(xlabel="share of transfers classifying the point correctly", ylabel="test points",
              title="per-point robustness (dashed: 95 %)")
    for a in ax:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def boundary_maps(models: dict[str, HardwareAwareMLP], x: np.ndarray, y: np.ndarray,
                  path: Path, *, n: int = 500, grid: int = 80, seed: int = 0, k: int = 0
                  ) -> tuple[Path, dict]:
    """Share of transfers predicting class 1 over the input plane (2-D inputs only)."""
    plt = _plt()
    lo, hi = x.min(0) - 0.1, x.max(0) + 0.1
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid))
    pts = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    fig, ax = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), squeeze=False)
    uncertain = {}
    for a, (name, model) in zip(ax[0], models.items(), strict=True):
        share = class1_share(model, pts, n, seed=seed, k=k).reshape(grid, grid)
        # fraction of the plane where transfers disagree noticeably (between 5 % and 95 %)
        uncertain[name] = float(np.mean((share > 0.05) & (share < 0.95)))
        im = a.pcolormesh(gx, gy, share, cmap="coolwarm", vmin=0, vmax=1, shading="auto")
        a.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", edgecolors="k", s=12, lw=0.4)
        a.set(title=f"{LABELS.get(name, name)}: P(class 1) over {n} transfers", xlabel="x0",
              ylabel="x1")
        fig.colorbar(im, ax=a)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path, uncertain


def write_json(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=float) + "\n")
    return path


def write_evaluation(out: Path, results: dict[str, MonteCarloResult],
                 models: dict[str, HardwareAwareMLP] | None = None,
                 x_plane: np.ndarray | None = None, y_plane: np.ndarray | None = None,
                 extra: dict | None = None, *, map_transfers: int = 500) -> dict:
    """Histogram PNG, boundary-map PNG (2-D inputs), summary.json; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"networks": {name: r.summary() for name, r in results.items()}}
    summary["figures"] = {"histograms": str(accuracy_histograms(results,
                                                                out / "accuracy_hist.png"))}
    if models and x_plane is not None and x_plane.shape[1] == 2:
        p, unc = boundary_maps(models, x_plane, y_plane, out / "boundary_map.png",
                               n=map_transfers)
        summary["figures"]["boundary_map"] = str(p)
        summary["boundary_map_transfers"] = map_transfers
        summary["boundary_uncertain_fraction"] = unc
    if extra:
        summary.update(extra)
    write_json(summary, out / "summary.json")
    return summary
