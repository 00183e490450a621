"""The sweep's outputs for people: the tidy table (results.csv) and the summary plots."""

from __future__ import annotations

import os
from pathlib import Path

from training.defaults import LABELS
from training.stats import mean_interval
from training.sweep.spec import PARAM_NAMES
from training.sweep.store import METRICS, write_atomic

TABLE_NAME = "results.csv"


def table_rows(records: list[dict]) -> list[dict]:
    """One row per point x network kind: every parameter, then every metric."""
    rows = []
    for rec in records:
        params = dict(rec["params"])
        if isinstance(params.get("hidden"), list):
            params["hidden"] = "-".join(str(h) for h in params["hidden"])
        used = (rec.get("extra") or {}).get("params_used") or {}
        for name, val in used.items():  # e.g. the DB's stuck rates where the point left them unset
            if params.get(name) is None:
                params[name] = val
        for kind, metrics in rec["kinds"].items():
            rows.append({"key": rec["key"], **params, "kind": kind, **metrics,
                         "point_wall_s": rec.get("wall_s"), "host": rec.get("host"),
                         "finished_at": rec.get("finished_at")})
    return rows


def write_table(records: list[dict], out_dir: str | os.PathLike) -> Path:
    """Write results.csv (and results.parquet if pyarrow is installed) atomically."""
    import pandas as pd

    out_dir = Path(out_dir)
    df = pd.DataFrame(table_rows(records))
    # key, parameters, kind, the standard metrics, any further metrics, then bookkeeping
    tail = ["point_wall_s", "host", "finished_at"]
    head = ["key", *PARAM_NAMES, "kind", *METRICS]
    cols = [c for c in head if c in df.columns]
    cols += [c for c in df.columns if c not in cols and c not in tail] + tail
    df = df[cols]
    order = [c for c in ("dataset", "mapping", "stuck_rate", "tile_size", "seed", "kind")
             if c in df.columns]
    df = df.sort_values(order, kind="stable", na_position="first").reset_index(drop=True)
    path = out_dir / TABLE_NAME
    write_atomic(path, df.to_csv(index=False))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        tmp = out_dir / "results.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out_dir / "results.parquet")
    return path


#: parameters worth a "robustness vs" plot when they vary in a sweep
PLOT_AXES = ("stuck_rate", "tile_size", "tuning_sigma_scale", "disturbance_scale")


METRIC_LABELS = {"share_correct_95": "test points correct in >= 95 % of transfers [%]",
                 "transfer_acc_mean": "mean test accuracy over transfers [%]",
                 "transfer_acc_p05": "5th-percentile test accuracy [%]",
                 "clean_acc": "test accuracy without non-idealities [%]"}


def write_plots(table: str | os.PathLike, plot_dir: str | os.PathLike,
                metric: str = "share_correct_95") -> list[Path]:
    """One PNG per varying parameter in PLOT_AXES: ``metric`` (a fraction, shown in %) against
    it, a panel per dataset, a line per network kind (and per other varying setting), mean with
    a 95 % interval over seeds. Named robustness_vs_<axis>.png for share_correct_95, else
    <metric>_vs_<axis>.png.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(table)
    plot_dir = Path(plot_dir)
    written: list[Path] = []
    # settings that vary (besides seed and the x axis) split the lines, so no mean mixes them
    candidates = [c for c in PARAM_NAMES if c in df.columns and c not in ("seed", "stuck_hrs_rate",
                                                                           "stuck_lrs_rate")]
    for axis in PLOT_AXES:
        if axis not in df.columns or df[axis].dropna().nunique() < 2:
            continue
        datasets = sorted(df["dataset"].astype(str).unique())
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.0 * len(datasets), 3.8),
                                 squeeze=False)
        for ax, ds in zip(axes[0], datasets, strict=True):
            sub = df[(df["dataset"].astype(str) == ds) & df[axis].notna()]
            others = [c for c in candidates if c not in (axis, "dataset")
                      and sub[c].astype(str).nunique() > 1]
            for label, grp in sub.groupby(["kind", *others], dropna=False, sort=True):
                label = label if isinstance(label, tuple) else (label,)
                xs, ms, los, his = [], [], [], []
                for x, g in grp.groupby(axis, sort=True):
                    m, lo, hi = mean_interval(g[metric])
                    xs.append(x)
                    ms.append(m)
                    los.append(lo)
                    his.append(hi)
                scale = 100.0 if axis == "stuck_rate" else 1.0  # rates shown in %
                xs = [x * scale for x in xs]
                name = ", ".join([LABELS.get(label[0], str(label[0]))]
                                 + [f"{o}={v}" for o, v in zip(others, label[1:], strict=True)])
                (line,) = ax.plot(xs, [100 * m for m in ms], marker="o", label=name)
                ax.fill_between(xs, [100 * v for v in los], [100 * v for v in his],
                                color=line.get_color(), alpha=0.2, linewidth=0)
            ax.set_title(f"{ds}")
            ax.set_xlabel("stuck devices (HRS + LRS) [%]" if axis == "stuck_rate" else axis)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{metric} vs {axis} (mean, 95 % interval over seeds)", fontsize=10)
        fig.tight_layout()
        plot_dir.mkdir(parents=True, exist_ok=True)
        stem = "robustness" if metric == "share_correct_95" else metric
        path = plot_dir / f"{stem}_vs_{axis}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
