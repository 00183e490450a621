"""`xbarlab transfer`: program a trained network onto crossbars and measure it.

torch is imported only inside the command, and only with ``--model``: a conductance plan
(``--plan``, written by ``--save-plan``) transfers on a lab PC without torch.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from database.display import count, duration, pct
from xbarlab.commands.train import CLIP, CLIP_HELP
from xbarlab.crossbars import pick_crossbars
from xbarlab.errors import XbarlabError


def _plan_from_model(model_path: str, db_path: str | None, member: int, read,
                     tolerance: float, clip: float | str | None = None, replicate: int = 1):
    """The plan of a trained checkpoint as `xbarlab.commands.train.export_model` exports it
    (replicated, then clipped; "auto": the clip's scan in the plan's meta), mapped into what
    the station reading with `read` can verify with a band of +-`tolerance`, and the model's
    test set."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise XbarlabError("--model needs PyTorch (the [train] extra); on a PC without it, "
                           "use --plan with a plan saved by --save-plan elsewhere") from None
    from database.datasets import load_dataset
    from training.export import conductance_plan
    from training.train import load_checkpoint
    from xbarlab.commands.train import _load_db, export_model

    model, cfg, _meta = load_checkpoint(model_path, "cpu")
    if replicate > 1 and cfg.hardware_aware:
        click.echo(f"note: {model_path} is hardware-aware, trained for one copy of each "
                   "unit; replicated, its tiles and disturbance keys differ from those "
                   "it was trained for", err=True)
    if clip == "auto" or db_path not in (None, "reference"):   # the scan needs the whole db
        db = _load_db(db_path)
        g_range = (db.g_min, db.g_max)
    else:
        from database.reference import G_MAX, G_MIN
        db, g_range = None, (G_MIN, G_MAX)
    model, clip, scan = export_model(model, cfg.dataset, db, clip=clip, replicate=replicate,
                                     member=member)
    plan = conductance_plan(model, g_range, member=member, read=read, tolerance=tolerance)
    if "g_range_note" in plan.meta:
        click.echo(f"note: {plan.meta['g_range_note']}", err=True)
    plan.meta.update({"model": str(model_path), "trained_mapping": cfg.mapping,
                      "hardware_aware": cfg.hardware_aware, "dataset": cfg.dataset})
    if replicate > 1:
        plan.meta["replicate"] = int(replicate)
        for i in range(1, len(plan.scales)):   # the biases are not divided by the copies
            wmax, bmax = np.abs(plan.weights[i]).max(), np.abs(plan.biases[i]).max()
            if bmax > wmax:
                click.echo(f"note: layer {i}'s scale is set by a bias ({bmax:.3g} > every "
                           f"weight's {wmax:.3g} once divided by the {replicate} copies): its "
                           f"weights get {wmax / bmax:.0%} of the conductance swing", err=True)
    if scan is not None:
        plan.meta["clip_scan"] = scan.rows
    if clip is not None:
        plan.meta["clip_percentile"] = float(clip)
        if cfg.hardware_aware and scan is None:
            click.echo(f"note: {model_path} is hardware-aware, trained for its unclipped "
                       "scale; clipped it may lose accuracy (`xbarlab evaluate --clip` shows "
                       "how much)", err=True)
    if cfg.mapping != "physical":
        click.echo(f"note: {model_path} was trained with the {cfg.mapping!r} mapping; it is "
                   "programmed with the physical one (the only programmable mapping)", err=True)
    data = load_dataset(cfg.dataset)
    return plan, data["test"]


def register(cli: click.Group) -> None:
    @cli.command("transfer")
    @click.option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
                  help="trained checkpoint (.pt; needs torch)")
    @click.option("--plan", "plan_path", type=click.Path(exists=True, dir_okay=False),
                  help="conductance plan (.json) instead of --model (no torch needed)")
    @click.option("--station", "station_path", required=True, type=click.Path(dir_okay=False),
                  help="station file (YAML)")
    @click.option("--crossbar", "crossbars", multiple=True,
                  help="crossbar for each tile, in tile order (repeat); sim default: the chip's")
    @click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
                  help="transfer HDF5 file")
    @click.option("--db", "db_path", default=None,
                  help="non-ideality DB the model was trained with (its G range); "
                       "default: the published 100-500 uS")
    @click.option("--member", default=0, show_default=True, type=click.IntRange(0),
                  help="network of an ensemble checkpoint")
    @click.option("--clip", type=CLIP, default=None,
                  help="with --model: set each layer's scale at this percentile of its |w| "
                       "and clip the larger weights (e.g. 95 for the regular digits network: "
                       "1.7-3 times the conductance swing per weight; docs/guide.md); "
                       + CLIP_HELP + ". Default: the largest weight, as training assumed")
    @click.option("--replicate", type=click.IntRange(1, 8), default=1, show_default=True,
                  help="with --model: compute every hidden unit on this many copies of its "
                       "devices, the next layer averaging them (the same network; each "
                       "weight's transfer error 1/sqrt(N) as large, for N times the devices "
                       "and pulses; docs/guide.md)")
    @click.option("--algorithm", type=click.Choice(["alibart", "fast"]), default="fast",
                  show_default=True, help="write-verify algorithm (alibart: the paper's)")
    @click.option("--settle", type=click.FloatRange(0, 3600), default=0.0, show_default=True,
                  help="instrument time before each tile's read-back [s]")
    @click.option("--reverify", type=click.IntRange(0, 20), default=0, show_default=True,
                  help="after each tile, re-tune the devices read back out by more than "
                       "--reverify-threshold, at most this many passes (0: the paper's transfer, "
                       "the one the Monte-Carlo prediction models)")
    @click.option("--reverify-threshold", type=click.FloatRange(0, 1, min_open=True,
                                                                  max_open=True),
                  default=0.2, show_default=True,
                  help="read-back error (fraction of target) that makes a device re-tuned")
    @click.option("--save-plan", type=click.Path(dir_okay=False), default=None,
                  help="also write the conductance plan (JSON)")
    @click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
    @click.option("--resume", is_flag=True, help="continue the file's unfinished transfer")
    @click.option("--overwrite", is_flag=True, help="replace an existing file")
    @click.option("--no-progress", is_flag=True)
    @click.option("--watch", is_flag=True, help="serve a live view of the transfer on this PC "
                  "while it runs (as `xbarlab watch`; needs the [live] extra)")
    def transfer_cmd(model_path, plan_path, station_path, crossbars, out, db_path, member, clip,
                     replicate, algorithm, settle, reverify, reverify_threshold, save_plan, seed, resume,
                     overwrite, no_progress, watch):
        """Program a trained network onto crossbars (write-verify, in the order training
        assumed), read it back and measure its test accuracy; everything into HDF5."""
        from protocols.plan import check_verifiable
        from protocols.transfer import ReverifyConfig, TransferConfig, run
        from protocols.tuning import TuneConfig
        from training.export import ConductancePlan
        from xbarlab.commands.view import watching
        from xbarlab.station import load_station

        if bool(model_path) == bool(plan_path):
            raise click.UsageError("give exactly one of --model and --plan")
        if (clip is not None or replicate > 1) and not model_path:
            raise click.UsageError("--clip and --replicate apply to --model (a plan is already "
                                   "mapped)")
        cfg = TransferConfig(tune=TuneConfig(algorithm=algorithm), settle_s=settle,
                             reverify=ReverifyConfig(passes=reverify,
                                                     threshold=reverify_threshold))
        st = load_station(station_path)
        test = None
        if model_path:
            plan, test = _plan_from_model(model_path, db_path, member, st.read_settings,
                                          cfg.tune.tolerance, clip, replicate)
        else:
            plan = ConductancePlan.load(plan_path)
            if plan.meta.get("dataset") == "moons":
                from database.datasets import load_moons
                test = load_moons("test")
        check_verifiable(plan, cfg.tune.tolerance, st.read_settings)
        names = pick_crossbars(st, plan.n_tiles, tuple(crossbars))
        if save_plan:  # written once the model, the station and the crossbars are known good
            plan.save(save_plan)
            click.echo(f"wrote {save_plan}")

        def on_tile(t: int, name: str) -> None:
            if st.chip is None and plan.n_tiles > 1:
                r, c = plan.tile_shape[t]
                click.pause(f"tile {t + 1}/{plan.n_tiles} ({r}x{c} devices): move the probes "
                            f"to crossbar {name!r}, then press any key")

        with watching(Path(out), watch):
            res = run(plan, st.tile_opener(), names, Path(out), read=st.read_settings, config=cfg,
                      test_data=test, seed=seed,
                      station=st.describe(names), resume=resume, overwrite=overwrite,
                      progress=not no_progress, on_tile=on_tile)
        if res.resumed_from:
            click.echo(f"resumed after {res.resumed_from} finished devices")
        s = res.summary
        click.echo(f"transfer: {res.path} ({res.run}) onto {', '.join(names)}")
        click.echo(f"  devices: {count(s['devices'])} in {s['tiles']} tiles, "
                   f"{count(s.get('failed', 0))} failed tunings, "
                   f"{count(s.get('pulses_total', 0))} pulses"
                   + (f" ({count(s['reverify_pulses'])} of them re-verifying "
                      f"{count(s['reverify_tunings'])} devices)" if "reverify_pulses" in s else "")
                   + f", instrument time {duration(s.get('instrument_time_s', 0.0))}")
        if "readback_error_mean_rel" in s:
            click.echo(f"  read-back error: mean {pct(s['readback_error_mean_rel'], 2, signed=True)}"
                       f", std {pct(s['readback_error_std_rel'], 2)} of target")
        if "accuracy" in s:
            click.echo(f"  test accuracy: {pct(s['accuracy'])} on the crossbar, "
                       f"{pct(s['accuracy_software'])} in software ({count(s['points'])} points)")
        click.echo(f"next: `xbarlab db show {res.path}` (every number of the run), "
                   f"`xbarlab plot {res.path}` (its figures)")
