"""Datasets shipped with xbarlab, as plain numpy arrays (no torch here).

Half-moons: the three sets published with Drolet et al. 2023 (875 / 200 / 125 points). They are
``make_moons(n_samples=1000, noise=0.2, random_state=42)`` scaled to [0, 1] (not the noise 0.05
written in the published code), and the test set overlaps the training set (172 of 200 points):
kept as published so that results compare with the paper.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from database.errors import SchemaError
from database.reference import DATA_DIR

MOONS_SPLITS = ("train", "test", "validation")
#: xbarlab's own data (not the paper's): fresh half-moons points for the repair (`moons_points`)
OWN_DATA_DIR = Path(__file__).resolve().parent / "data"
#: the fresh half-moons repair points: how many, and the generator's random state
MOONS_REPAIR = (200, 7)


def load_moons(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [n, 2], y float32 [n] in {0, 1}) for split in train / test / validation (the
    published sets), or "repair" (xbarlab's fresh points, `moons_points`)."""
    if split not in (*MOONS_SPLITS, "repair"):
        raise SchemaError(f"unknown half-moons split {split!r}; choose one of "
                          f"{(*MOONS_SPLITS, 'repair')}")
    path = (OWN_DATA_DIR if split == "repair" else DATA_DIR) / f"moons_{split}.csv"
    if not path.exists():
        raise SchemaError(f"shipped dataset missing: {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r["x0"]), float(r["x1"])] for r in rows], dtype=np.float32)
    y = np.array([float(r["label"]) for r in rows], dtype=np.float32)
    return x, y


def moons_points(n: int, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` fresh half-moons points drawn as the published ones were: scikit-learn's
    ``make_moons(noise=0.2)`` with `random_state`, each feature scaled by the published sets'
    transform (the min and max of ``make_moons(1000, noise=0.2, random_state=42)``, which
    reproduces the 1,000 published points to 4e-8), so they may fall slightly outside [0, 1].
    Needs scikit-learn; `load_moons("repair")` reads the shipped ones."""
    try:
        from sklearn.datasets import make_moons
    except ImportError:
        raise SchemaError("fresh half-moons points need scikit-learn: install the [digits] "
                          "extra") from None
    ref, _ = make_moons(n_samples=1000, noise=0.2, random_state=42)
    lo, hi = ref.min(0), ref.max(0)
    x, y = make_moons(n_samples=n, noise=0.2, random_state=random_state)
    return ((x - lo) / (hi - lo)).astype(np.float32), y.astype(np.float32)


def load_moons_all() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All three splits: {"train": (X, y), "test": ..., "validation": ...}."""
    return {s: load_moons(s) for s in MOONS_SPLITS}


def load_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 8 x 8 handwritten digits (1,797 images, 64 inputs in [0, 1], 10 classes).

    Ships with scikit-learn (optional extra ``digits``); split with one fixed permutation (seed
    0: a network trained with any seed is measured and repaired on the same sets) into test (1/4:
    449 images), train (3/4 of the rest: 1,011) and validation (the last 1/4 of the rest: 337),
    which no network is trained on (see `load_dataset`). Labels are int64 class indices.
    """
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError:
        raise SchemaError("the digits set needs scikit-learn: install the [digits] extra") from None
    d = _sk_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = int(round(0.25 * len(y)))
    te, rest = perm[:n_test], perm[n_test:]
    n_train = 3 * len(rest) // 4
    tr, va = rest[:n_train], rest[n_train:]
    return {"train": (x[tr], y[tr]), "validation": (x[va], y[va]), "test": (x[te], y[te])}


def load_dataset(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The data roles of a shipped dataset, the one definition every trainer and the repair
    after transfer use: ``train`` (what networks are trained on), ``validation`` (never trained
    on: `xbarlab train` stops early on it, a repair judges its corrections on it, see
    `chip_in_the_loop_sets`) and ``test``. Half-moons: the three published sets (875 / 125 /
    200 points); digits: `load_digits`."""
    if name == "moons":
        return load_moons_all()
    if name == "digits":
        return load_digits()
    raise SchemaError(f"unknown dataset {name!r}; choose moons or digits")


def chip_in_the_loop_sets(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three data roles of a repair after transfer (protocols.repair), pairwise disjoint,
    from `load_dataset`'s: ``refit`` (the training set: the measured hidden activations refits
    and the periphery calibration are fitted on), ``repair`` (the validation set, which no
    network is trained on: every decision and the stopping rule are judged on it) and ``test``
    (the test set).

    The repair set must be held out of training: a network trained on it scores (close to)
    100 % there and the repair sees nothing left to fix. The half-moons networks keep training
    on the published 875-point training set, so that the published claim compares with the
    paper. The half-moons training and validation sets contain most test points (see above):
    those are left out of refit and repair, so nothing the repair fits or decides has seen a
    test point. That leaves 97 validation points, too few to judge a repair on (one point is
    one percent), so the half-moons repair set adds 200 fresh points drawn as the published
    ones were (`moons_points`, shipped as ``database/data/moons_repair.csv``): 703 refit and
    297 repair points for half-moons; 1,011 and 337 for digits. Labels are int64."""
    sets = load_dataset(name)
    xt, yt = sets["test"]
    (fx, fy), (rx, ry) = (_without(*sets[s], xt) for s in ("train", "validation"))
    if name == "moons":
        ex, ey = load_moons("repair")
        rx, ry = np.concatenate([rx, ex]), np.concatenate([ry, ey])
    return {"refit": (fx, fy.astype(np.int64)), "repair": (rx, ry.astype(np.int64)),
            "test": (xt, yt.astype(np.int64))}


def _without(x: np.ndarray, y: np.ndarray, drop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) without the points whose features equal a row of `drop` (order kept)."""
    seen = {row.tobytes() for row in np.ascontiguousarray(drop, dtype=x.dtype)}
    keep = np.array([row.tobytes() not in seen for row in np.ascontiguousarray(x)], bool)
    return x[keep], y[keep]
