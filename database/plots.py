"""PNG figures (matplotlib, Agg): paper-style figures of a non-ideality database, and the
figures of every raw run (the specs of `database.figures`). Display units: uS, V, %."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from database.display import pct  # noqa: E402
from database.figures import Figure, Hist, Map, Panel, RunView, run_view, unit_counts  # noqa: E402
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


def stuck_notes(db: NonIdealityDB) -> list[str]:
    """What the stuck figure says in words: measured values missing because their reads were
    clipped at the read range's ceiling (the screening keeps them out of the samples)."""
    notes = []
    for kind, rate, samples in (("HRS", db.stuck_hrs_rate, db.stuck_hrs_samples),
                                ("LRS", db.stuck_lrs_rate, db.stuck_lrs_samples)):
        if rate > 0 and samples.size == 0:
            notes.append(f"stuck {kind}: {pct(rate, 2)} of devices, every read clipped at the "
                         "read range's ceiling (no value measured); the model uses the "
                         "published values")
    return notes


def plot_stuck(db: NonIdealityDB, path: Path) -> Path:
    """Left: the stuck rates (never empty); right: the measured conductances of stuck devices,
    with the reads clipped at the range ceiling said as such."""
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    rates = [100 * db.stuck_hrs_rate, 100 * db.stuck_lrs_rate]
    a0.bar(["stuck HRS", "stuck LRS"], rates, color=["C0", "C1"])
    for x, r in enumerate(rates):
        a0.annotate(f"{r:.2f} %", (x, r), ha="center", va="bottom", fontsize=8)
    a0.set_ylabel("devices (%)")
    a0.set_ylim(0, max(rates + [0.1]) * 1.3)
    a0.set_title("rates")
    if db.stuck_hrs_samples.size:
        a1.hist(db.stuck_hrs_samples * 1e6, bins=20, alpha=0.6, label="stuck HRS (measured)")
    if db.stuck_lrs_samples.size:
        a1.hist(db.stuck_lrs_samples * 1e6, bins=20, alpha=0.6, label="stuck LRS (measured)")
    lo, hi = db.stuck_hrs_range
    a1.axvspan(lo * 1e6, hi * 1e6, color="C0", alpha=0.1, label="HRS model")
    a1.axvline(db.stuck_lrs_mean * 1e6, color="C1", ls="--", label="LRS model mean")
    notes = stuck_notes(db)
    if notes:
        a1.text(0.22, 0.6, "\n".join(textwrap.fill(n, 50) for n in notes),
                transform=a1.transAxes, va="center", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    a1.set_xlabel("conductance (uS)")
    a1.set_ylabel("devices")
    a1.set_title("measured conductance of stuck devices")
    a1.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Stuck devices: HRS {pct(db.stuck_hrs_rate, 2)}, "
                 f"LRS {pct(db.stuck_lrs_rate, 2)}")
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


# -- raw runs: the figure specs of database.figures as PNG ----------------------------------

def _draw_map(ax, m: Map, fig) -> None:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    v = np.ma.masked_invalid(m.values)
    rows, cols = m.values.shape
    if m.classes:
        codes = sorted(m.classes)
        cmap = ListedColormap([_CLASS_COLOURS[i % len(_CLASS_COLOURS)] for i in range(len(codes))]
                              ).with_extremes(bad="#dddddd")
        idx = np.ma.masked_invalid(np.vectorize(lambda x: codes.index(x) if x in codes else np.nan,
                                                otypes=[float])(m.values))
        im = ax.imshow(idx, cmap=cmap, norm=BoundaryNorm(np.arange(len(codes) + 1) - 0.5,
                                                         len(codes)))
        cb = fig.colorbar(im, ax=ax, ticks=range(len(codes)), shrink=0.85)
        cb.ax.set_yticklabels([m.classes[c] for c in codes])
    else:
        cmap = plt.get_cmap("RdBu_r" if m.diverging else "viridis").with_extremes(bad="#dddddd")
        lim = np.nanmax(np.abs(m.values)) if m.diverging and np.isfinite(m.values).any() else None
        im = ax.imshow(v, cmap=cmap, vmin=-lim if lim else None, vmax=lim)
        cb = fig.colorbar(im, ax=ax, shrink=0.85)
        cb.set_label(m.label)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    step_r, step_c = max(1, rows // 8), max(1, cols // 8)
    ax.set_xticks(range(0, cols, step_c))
    ax.set_yticks(range(0, rows, step_r))


_CLASS_COLOURS = ["#4daf4a", "#377eb8", "#e41a1c", "#ff7f00", "#984ea3", "#999999"]


def _draw_panel(ax, p: Panel, fig) -> None:
    if isinstance(p, Map):
        _draw_map(ax, p, fig)
    elif isinstance(p, Hist):
        for label, counts in p.counts.items():
            ax.stairs(counts, p.edges, label=label, fill=len(p.counts) == 1, alpha=0.8)
        ax.set_xlabel(p.x_label)
        ax.set_ylabel(p.y_label)
        if len(p.counts) > 1:
            ax.legend(fontsize=8)
    else:
        for b in p.bands:
            ax.axhspan(b.low, b.high, color="C2", alpha=0.2, label=b.label)
        for s in p.series:
            if s.style == "points":
                ax.plot(s.x, s.y, ".", ms=3, alpha=0.5, label=s.label)
            else:
                ax.plot(s.x, s.y, "o-" if s.style == "linepoints" else "-", ms=3, lw=1,
                        label=s.label)
        ax.set_xlabel(p.x_label)
        ax.set_ylabel(p.y_label)
        if p.log_x and any(np.any(np.asarray(s.x) > 0) for s in p.series):
            ax.set_xscale("log")
        if p.series or p.bands:
            ax.legend(fontsize=7, ncol=2 if len(p.series) > 6 else 1)
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(p.title, fontsize=9)


def render_png(figure: Figure, path: Path, heading: str = "") -> Path:
    """Draw one figure spec (a row of panels) to a PNG."""
    n = max(1, len(figure.panels))
    cols = min(n, 4)  # wrap many panels (a transfer of many tiles) into rows of four
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.6 * rows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, figure.panels, strict=False):
        _draw_panel(ax, p, fig)
    fig.suptitle(figure.title + (f"\n{heading}" if heading else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(path: str | os.PathLike, run: str | None = None,
             out_dir: str | os.PathLike | None = None) -> tuple[RunView, list[Path]]:
    """Every figure of one run of a raw-run file as PNG (default: next to the file), named
    `<file>-<run>-<figure>.png`. Returns the view (facts, notes) and the files written."""
    from database.runs import read_run

    path = Path(path)
    info, tables = read_run(path, run)
    v = run_view(info, tables)
    out = Path(out_dir) if out_dir is not None else path.parent
    out.mkdir(parents=True, exist_ok=True)
    done, total = unit_counts(info)
    heading = f"{path.name} {info.name} ({info.protocol})"
    if not info.complete:
        heading += f", unfinished: {done} of {total} {v.unit}"
    written = [render_png(f, out / f"{path.stem}-{info.name}-{f.name}.png", heading)
               for f in v.figures]
    return v, written
