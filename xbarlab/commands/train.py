"""`xbarlab train`, `xbarlab evaluate`, `xbarlab reproduce`: hardware-aware training.

torch is imported inside the commands only, so the CLI starts (and every other command works)
on a lab PC without the [train] extra.
"""

from __future__ import annotations

from pathlib import Path

import click

from database.display import pct
from training.defaults import (
    DATASETS,
    DEFAULT_MAPPING,
    LABELS,
    MAPPINGS,
    PAPER_SHARE_CORRECT_95,
    network_name,
)
from xbarlab.commands import next_steps
from xbarlab.errors import XbarlabError

MAPPING = click.Choice(list(MAPPINGS))
_MOONS, _DIGITS = DATASETS["moons"], DATASETS["digits"]


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise XbarlabError("this command needs PyTorch: install the [train] extra "
                           "(pip install 'xbarlab[train]')") from None


def _load_db(path: str | None):
    from database.nonideality import load_nonideality
    from database.reference import import_reference

    return import_reference() if path in (None, "reference") else load_nonideality(path)


class _ClipParam(click.ParamType):
    """--clip: a percentile of |w| in [50, 100], or "auto" (`auto_clip`)."""

    name = "percentile|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, float):   # a default, or converted already
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            v = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a percentile (50-100) nor 'auto'", param, ctx)
        if not 50.0 <= v <= 100.0:
            self.fail(f"{v:g} is outside 50-100", param, ctx)
        return v


CLIP = _ClipParam()
CLIP_HELP = ("'auto': the least clipping whose Monte-Carlo transfers on held-out points "
             "(the validation set, not the test set) come within half a point of the best, "
             "without losing more than half a point of clean accuracy; possibly none")


def auto_clip(model, dataset: str, db, *, member: int = 0, mapping: str = "physical"):
    """`training.evaluate.scan_clips` on the dataset's held-out points (its validation set
    without the test points: `chip_in_the_loop_sets` "repair"), each row echoed as it is done;
    the `ClipScan` back."""
    from database.datasets import chip_in_the_loop_sets
    from training.evaluate import scan_clips

    x, y = chip_in_the_loop_sets(dataset)["repair"]
    click.echo(f"choosing the clip on {len(y)} held-out points (not the test set), "
               f"Monte-Carlo transfers at each percentile:", err=True)

    def row(r):
        click.echo(f"  p{r['percentile']:g}: clean {pct(r['clean_acc'])}, transfers mean "
                   f"{pct(r['transfer_acc_mean'])} (5th percentile "
                   f"{pct(r['transfer_acc_p05'])}), points right in >= 95 % of them "
                   f"{pct(r['share_correct_95'])}", err=True)

    scan = scan_clips(model, x, y, db, member=member, mapping=mapping, on_row=row)
    chosen = "none (each layer at its largest weight)" if scan.chosen is None else \
        f"p{scan.chosen:g}"
    click.echo(f"clip chosen: {chosen} (the least clipping within half a point of the best "
               f"mean transfer accuracy, among the clips that keep the clean accuracy within "
               f"{scan.max_clean_drop * 100:g} points of the unclipped network's)", err=True)
    return scan


def export_model(model, dataset: str, db, *, clip=None, replicate: int = 1, member: int = 0,
                 mapping: str = "physical"):
    """A trained network as `xbarlab transfer --model` programs it: its hidden units on
    `replicate` copies (`training.export.replicate_hidden`), then clipped (`clip`: a
    percentile, "auto" for `auto_clip`'s choice on `dataset`'s held-out points, which needs
    the database `db`, or None). Replicating first lets the clip see the layers as they are
    programmed. (model, the percentile applied or None, the `ClipScan` or None) back."""
    from training.export import clip_weights, replicate_hidden

    if replicate > 1:
        model = replicate_hidden(model, replicate)
    scan = None
    if clip == "auto":
        scan = auto_clip(model, dataset, db, member=member, mapping=mapping)
        clip = scan.chosen
    if clip is not None:
        model = clip_weights(model, clip)
    return model, clip, scan


def _table(title: str, summaries: dict[str, dict]):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("test points correct in")
    for name in summaries:
        t.add_column(LABELS.get(name, name), justify="right")
    first = next(iter(summaries.values()))
    for q in first["share_correct"]:
        t.add_row(f"{_share(q)} of transfers", *(pct(s["share_correct"][q])
                                                 for s in summaries.values()))
    for key, label in (("clean_acc", "clean (software) accuracy"),
                       ("transfer_acc_mean", "transfer accuracy, mean"),
                       ("transfer_acc_median", "transfer accuracy, median"),
                       ("transfer_acc_p05", "transfer accuracy, 5th percentile"),
                       ("transfer_acc_min", "transfer accuracy, worst")):
        t.add_row(label, *(pct(s[key]) for s in summaries.values()))
    return t


def _share(q: str) -> str:
    """A threshold key of the evaluation ('>=95%') as people read it ('>= 95 %')."""
    return f">= {q.removeprefix('>=').removesuffix('%')} %"


def _multi_table(title: str, ms: dict):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("test points correct in")
    for name in ms:
        t.add_column(f"{LABELS.get(name, name)} (mean [95 % CI])", justify="right")
    for q in next(iter(ms.values()))["share_correct"]:
        t.add_row(f"{_share(q)} of transfers", *(
            f"{pct(v['share_correct'][q]['mean'])} [{pct(v['share_correct'][q]['lo'])}, "
            f"{pct(v['share_correct'][q]['hi'])}]" for v in ms.values()))
    return t


def register(cli: click.Group) -> None:
    @cli.command("train")
    @click.option("--db", "db_path", default="reference", show_default=True,
                  help="Non-ideality database (.h5), or 'reference' for the shipped one.")
    @click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint.")
    @click.option("--regular", is_flag=True, help="Train the regular (noise-free) network.")
    @click.option("--dataset", type=click.Choice(list(DATASETS)), default="moons",
                  show_default=True)
    @click.option("--epochs", default=None, type=click.IntRange(0),
                  help=f"Default: {_MOONS.epochs:,} (moons, the paper's) or {_DIGITS.epochs} "
                       "(digits).")
    @click.option("--lr", default=None, type=click.FloatRange(min=0),
                  help=f"Adam learning rate. Default: {_MOONS.lr} (moons) or {_DIGITS.lr} "
                       "(digits).")
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
    @click.option("--k", "k", default=1, show_default=True, type=click.IntRange(1),
                  help="Networks trained side by side (seeds seed..seed+k-1).")
    @click.option("--mapping", type=MAPPING, default=DEFAULT_MAPPING, show_default=True)
    @click.option("--hidden", default=None,
                  help="Hidden sizes, e.g. '8' or '32,16'. Default: "
                       f"{','.join(map(str, _MOONS.hidden))} (moons), "
                       f"{','.join(map(str, _DIGITS.hidden))} (digits).")
    @click.option("--tile", default="8x8", show_default=True, help="Tile size ROWSxCOLS.")
    @click.option("--separate-bias-tile", is_flag=True, help="Bias on tiles of its own.")
    @click.option("--patience", default=None, type=click.IntRange(1),
                  help="Early stopping: epochs without validation-loss improvement (off).")
    @click.option("--min-delta", default=0.0, show_default=True, type=click.FloatRange(0),
                  help="Early stopping: smallest loss decrease that counts as improvement.")
    @click.option("--eval-every", default=50, show_default=True, type=click.IntRange(1),
                  help="Early stopping: epochs between validation checks.")
    @click.option("--retention-s", "retention_s", default=None,
                  type=click.FloatRange(min=0, min_open=True),
                  help="Also sample the drift this long after programming [s], from the "
                       "database's retention statistics (off).")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:n].")
    def train_cmd(db_path, out, regular, dataset, epochs, lr, seed, k, mapping, hidden, tile,
                  separate_bias_tile, patience, min_delta, eval_every, retention_s, device):
        """Train a hardware-aware (default) or regular network; save a checkpoint."""
        _need_torch()
        from database.datasets import load_dataset
        from training.noise import NoiseConfig
        from training.train import save_checkpoint, train_config, train_with_bar

        try:
            hid = [int(h) for h in hidden.split(",")] if hidden else None
        except ValueError:
            raise click.BadParameter(f"hidden must look like 32 or 32,16, got {hidden!r}",
                                     param_hint="--hidden") from None
        try:
            tr, tc = (int(v) for v in tile.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"tile must look like 8x8, got {tile!r}") from None
        cfg = train_config(dataset, hidden=hid, hardware_aware=not regular, epochs=epochs,
                           lr=lr, seed=seed, k=k, mapping=mapping, tile_rows=tr, tile_cols=tc,
                           share_bias=not separate_bias_tile, patience=patience,
                           min_delta=min_delta, eval_every=eval_every,
                           noise=None if retention_s is None else
                           NoiseConfig(retention_s=retention_s))
        db = _load_db(db_path)
        data = load_dataset(dataset)
        x, y = data["train"]
        res = train_with_bar(cfg, x, y, db, device=device, val=data.get("validation"))
        save_checkpoint(res, out)
        stop = ""
        if patience is not None:
            stop = f" (early stopping: {sum(res.stopped_early)} of {k} stopped; steps per " \
                   f"network {res.steps_per_network})"
        click.echo(f"wrote {out}: {res.steps} steps in {res.seconds:.1f} s, final loss "
                   f"{res.loss_history[-1] if res.loss_history else float('nan'):.4f}{stop}")
        next_steps(f"`xbarlab evaluate --model {out}` (Monte-Carlo transfers)",
                   f"`xbarlab transfer --model {out} --station sim-pmu -o transfer.h5` "
                   "(program it onto crossbars)")

    @cli.command("evaluate")
    @click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False))
    @click.option("--db", "db_path", default="reference", show_default=True)
    @click.option("--transfers", default=10_000, show_default=True, type=click.IntRange(1))
    @click.option("--out", default="eval-out", show_default=True, type=click.Path(file_okay=False))
    @click.option("--mapping", type=MAPPING, default=None,
                  help="Mapping for the transfers (default: the model's).")
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
    @click.option("--clip", type=CLIP, default=None,
                  help="Evaluate the network with its layers clipped at this "
                       "percentile of |w|, as `xbarlab transfer --clip` programs it; "
                       + CLIP_HELP + ".")
    @click.option("--replicate", type=click.IntRange(1, 8), default=1, show_default=True,
                  help="Evaluate the network with every hidden unit on this many copies of its "
                       "devices, as `xbarlab transfer --replicate` programs it (before the "
                       "clip).")
    @click.option("--retention-s", "retention_s", default=None,
                  type=click.FloatRange(min=0, min_open=True),
                  help="Transfers read this long after programming [s]: the database's "
                       "retention statistics move every device (off).")
    @click.option("--device", default="auto", show_default=True)
    def evaluate_cmd(model_path, db_path, transfers, out, mapping, seed, clip, replicate,
                     retention_s, device):
        """Monte-Carlo transfer evaluation of a checkpoint: table, PNGs and summary.json."""
        _need_torch()
        from rich.console import Console

        from database.datasets import load_dataset
        from training.evaluate import evaluate_transfers
        from training.figures import write_evaluation
        from training.noise import NoiseConfig
        from training.train import db_hash, load_checkpoint

        model, cfg, meta = load_checkpoint(model_path, device)
        db = _load_db(db_path)
        if clip == "auto" and cfg.k > 1:
            click.echo(f"note: the clip is chosen on network 0 of the {cfg.k}", err=True)
        model, clip, scan = export_model(model, cfg.dataset, db, clip=clip, replicate=replicate,
                                         mapping=mapping or cfg.mapping)
        if meta.get("db_hash") and meta["db_hash"] != db_hash(db):
            click.echo("note: evaluating with a different non-ideality DB than training used",
                       err=True)
        data = load_dataset(cfg.dataset)
        xt, yt = data["test"]
        res = evaluate_transfers(model, xt, yt, transfers, db, mapping=mapping or cfg.mapping,
                                 seed=seed, noise=NoiseConfig(retention_s=retention_s))
        name = network_name(cfg.hardware_aware)
        summary = write_evaluation(Path(out), {name: res}, {name: model}, xt, yt,
                               extra={"model": str(model_path), "config": cfg.to_dict(),
                                      "clip_percentile": clip, "replicate": replicate,
                                      **({} if scan is None else {"clip_scan": scan.rows}),
                                      "retention_s": retention_s,
                                      "train_steps": meta.get("steps"),
                                      "steps_per_network": meta.get("steps_per_network"),
                                      "stopped_early": meta.get("stopped_early"),
                                      "train_seconds": meta.get("train_seconds"),
                                      **({"per_network": [res.summary(j) for j in
                                                          range(cfg.k)]} if cfg.k > 1 else {})})
        Console().print(_table(f"{transfers} transfers ({mapping or cfg.mapping} mapping)",
                               summary["networks"]))
        click.echo(f"wrote {out}/summary.json and figures")
        next_steps(f"`xbarlab transfer --model {model_path} --station sim-pmu -o transfer.h5` "
                   "(measure it on programmed crossbars)")

    @cli.command("reproduce")
    @click.option("--out", default="reproduce-out", show_default=True,
                  type=click.Path(file_okay=False))
    @click.option("--transfers", default=5_000, show_default=True, type=click.IntRange(1))
    @click.option("--epochs", default=10_000, show_default=True, type=click.IntRange(0))
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
    @click.option("--k", "k", default=1, show_default=True, type=click.IntRange(1),
                  help="Independently seeded pairs (multi-seed table with 95 % intervals).")
    @click.option("--mapping", type=click.Choice([*MAPPINGS, "both"]), default="reference",
                  show_default=True, help="reference: the published code's mapping, whose "
                  "numbers the paper reports (the one command not on the default mapping).")
    @click.option("--device", default="auto", show_default=True)
    def reproduce_cmd(out, transfers, epochs, seed, k, mapping, device):
        """The paper's experiment on the published data: both networks, table and figures."""
        _need_torch()
        from rich.console import Console

        from database.datasets import load_moons_all
        from database.reference import import_reference
        from training.evaluate import evaluate_transfers, multi_seed_table
        from training.figures import write_evaluation, write_json
        from training.train import save_checkpoint, train_config, train_with_bar

        console = Console()
        db = import_reference()
        data = load_moons_all()
        (x, y), (xt, yt) = data["train"], data["test"]
        everything: dict = {}
        # "both": the published code's mapping first, as the paper's numbers come from it
        for mp in (["reference", "physical"] if mapping == "both" else [mapping]):
            d = Path(out) / mp
            results, models, trained = {}, {}, {}
            for hw in (True, False):
                name = network_name(hw)
                console.print(f"{mp} mapping: {LABELS[name]} network")
                cfg = train_config("moons", hardware_aware=hw, epochs=epochs, seed=seed, k=k,
                                   mapping=mp)
                res = train_with_bar(cfg, x, y, db, device=device)
                d.mkdir(parents=True, exist_ok=True)
                save_checkpoint(res, d / f"{name}.pt")
                trained[name] = res
            for name, res in trained.items():
                results[name] = evaluate_transfers(res.model, xt, yt, transfers, db,
                                                   mapping=mp, seed=seed)
                models[name] = res.model
            extra = {"mapping": mp, "epochs": epochs, "seed": seed, "k": k,
                     "train_seconds": {n: r.seconds for n, r in trained.items()},
                     "paper": dict(PAPER_SHARE_CORRECT_95)}
            if k > 1:
                extra["multi_seed"] = multi_seed_table(results["hardware_aware"],
                                                       results["regular"])
            summary = write_evaluation(d, results, models, xt, yt, extra=extra)
            console.print(_table(f"{mp} mapping, {transfers} transfers, 200 test points"
                                 + (" (network 0)" if k > 1 else ""), summary["networks"]))
            if k > 1:
                console.print(_multi_table(f"{mp} mapping: {k} seeds", extra["multi_seed"]))
            everything[mp] = summary
        write_json(everything, Path(out) / "summary.json")
        click.echo(f"wrote {out}/ (checkpoints, figures, summary.json); paper: 79.5 % vs 18.5 % "
                   f"of test points correct in >= 95 % of transfers")
