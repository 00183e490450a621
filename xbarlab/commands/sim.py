"""`xbarlab sim ...`: look at the simulated crossbar without any protocol."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    cli.add_command(sim_group)


@click.group("sim")
def sim_group() -> None:
    """The simulated TiO2 crossbar (physics only, no instruments)."""


@sim_group.command("show")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the virtual chip.")
@click.option("--crossbar", "name", default="xbar0", show_default=True,
              help="Crossbar of the default chip to show.")
@click.option("--model", type=click.Path(dir_okay=False), default=None,
              help="Chip model (YAML from `xbarlab sim calibrate`); default: the shipped one.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Save a heat map of the read map here (PNG).")
def sim_show(seed: int, name: str, model: str | None, out: str | None) -> None:
    """Create a virtual chip, read one crossbar (grounded, 0.2 V) and summarise it."""
    import numpy as np

    from simulator.chip import VirtualChip, default_layout
    from simulator.crossbar import STUCK_HRS, STUCK_LRS
    from xbarlab.calibrate import load_chip_model

    chip = VirtualChip(default_layout(load_chip_model(model) if model else None), seed=seed)
    xb = chip[name]
    g_true = xb.conductance()
    g_read = xb.read_map(0.2, "grounded")
    stuck = xb.stuck
    m, n = xb.shape
    cfg = xb.config
    us = 1e6
    work = g_read[stuck == 0]
    click.echo(f"virtual chip seed {seed}: {', '.join(chip.crossbars)}")
    click.echo(f"crossbar {name}: {m}x{n}, r_line {cfg.r_line} ohm, r_source {cfg.r_source} ohm, "
               "grounded read at 0.2 V")
    if work.size:
        click.echo(f"  working devices: {work.size}; read conductance median {np.median(work) * us:.1f} uS, "
                   f"min {work.min() * us:.1f} uS, max {work.max() * us:.1f} uS")
    click.echo(f"  stuck HRS: {int((stuck == STUCK_HRS).sum())}, "
               f"stuck LRS: {int((stuck == STUCK_LRS).sum())}")
    for i, j in np.argwhere(stuck != 0):
        kind = "HRS" if stuck[i, j] == STUCK_HRS else "LRS"
        click.echo(f"    ({i},{j}) stuck-{kind}: {g_true[i, j] * us:.1f} uS")
    err = (g_read / g_true - 1) * 100
    click.echo(f"  read error vs device conductance (line resistance + noise): "
               f"mean {err.mean():+.2f} %, worst {err.min():+.2f} %")
    if out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4.2))
        im = ax.imshow(g_read * us, cmap="viridis")
        for i, j in np.argwhere(stuck != 0):
            ax.text(j, i, "H" if stuck[i, j] == STUCK_HRS else "L", ha="center", va="center",
                    color="white", fontsize=9, fontweight="bold")
        ax.set_xlabel("bit line (column)")
        ax.set_ylabel("word line (row)")
        ax.set_title(f"{name}, seed {seed}: grounded read map at 0.2 V")
        fig.colorbar(im, ax=ax, label="conductance [uS]")
        fig.tight_layout()
        fig.savefig(out, dpi=120)
        plt.close(fig)
        click.echo(f"  heat map saved to {out} (H/L = stuck HRS/LRS)")


@sim_group.command("calibrate")
@click.option("--db", "db_path", required=True,
              help="Target non-ideality database (.h5), or 'reference' for the published one.")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Chip model to write (.yaml); the fidelity table goes next to it "
                   "(NAME.fidelity.txt).")
@click.option("--round-trip", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Station time per closed-loop step of the target's measurement [s] "
                   "(default: 0.3 for 'reference', else 0.015).")
@click.option("--settle", type=click.FloatRange(min=0), default=None,
              help="Wait before the settled tuning read of the target [s] (default: 60 for "
                   "'reference', else 0, the campaign's default).")
@click.option("--cut", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The target dropped disturbance samples with |delta| above this [S] "
                   "(default: 40e-6 for 'reference', else none).")
@click.option("--params", default=None,
              help="Comma-separated parameters to fit (default: all fittable ones).")
@click.option("--max-evals", type=click.IntRange(1), default=30, show_default=True,
              help="Campaign replays at most.")
@click.option("--tuning-devices", type=click.IntRange(2), default=16, show_default=True,
              help="Single devices tuned per replay (8 levels x 5 repeats each).")
@click.option("--disturbance-crossbars", type=click.IntRange(1), default=6, show_default=True,
              help="Crossbars programmed in raster order per replay.")
@click.option("--stuck-crossbars", type=click.IntRange(0), default=0, show_default=True,
              help="8x8 crossbars screened per replay (0: stuck rates from the disturbance "
                   "flags).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--start", type=click.Path(dir_okay=False), default=None,
              help="Chip model to start from (default: the shipped one).")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
def sim_calibrate(db_path, out, round_trip, settle, cut, params, max_evals, tuning_devices,
                  disturbance_crossbars, stuck_crossbars, seed, start, force) -> None:
    """Fit the simulated device to a measured non-ideality database.

    Replays the characterisation campaigns on simulated crossbars with the target's
    measurement settings, builds their database and moves the device parameters until it
    matches the target (tuning sigma and offsets, disturbance per k, stuck rates)."""
    import time
    from pathlib import Path

    from database.nonideality import load_nonideality
    from database.reference import import_reference
    from xbarlab import calibrate as cal
    from xbarlab.errors import XbarlabError

    out_p = Path(out)
    table_p = out_p.with_suffix(".fidelity.txt")
    for p in (out_p, table_p):
        if p.exists() and not force:
            raise XbarlabError(f"{p} exists; refusing to overwrite (pass --force)")
    reference = db_path == "reference"
    target = import_reference() if reference else load_nonideality(db_path)
    base = cal.PUBLISHED if reference else cal.Setup(round_trip=0.015, settle_s=0.0)
    update = {"max_evals": max_evals, "tuning_devices": tuning_devices,
              "disturbance_crossbars": disturbance_crossbars,
              "stuck_crossbars": stuck_crossbars, "seed": seed}
    for key, val in (("round_trip", round_trip), ("settle_s", settle), ("cut", cut)):
        if val is not None:
            update[key] = val
    if params:
        update["params"] = tuple(x.strip() for x in params.split(",") if x.strip())
    try:
        setup = cal.Setup.model_validate(base.model_dump() | update)
    except ValueError as e:
        raise XbarlabError(f"bad calibration setting: {e.errors()[0]['msg']}") from None
    begin = cal.load_chip_model(start) if start else None
    click.echo(f"target: {db_path}; replaying campaigns at {setup.round_trip:g} s per step, "
               f"settled read after {setup.settle_s:g} s; fitting {', '.join(setup.params)} "
               f"with at most {setup.max_evals} replays")
    res = cal.calibrate(target, setup, begin, progress=click.echo)
    table = cal.format_fidelity(res.fidelity)
    fit = {"target": "reference (Drolet et al. 2023, shipped)" if reference else str(db_path),
           "setup": setup.model_dump(mode="json"), "fitted": res.params,
           "cost": {"start": res.start_cost, "end": res.cost}, "evaluations": res.evals,
           "cpu_s": res.cpu_s, "wall_s": res.wall_s,
           "written": time.strftime("%Y-%m-%d %H:%M:%S"), "fidelity": res.fidelity}
    cal.save_chip_model(out_p, res.config, fit)
    table_p.write_text(f"Fidelity of {out_p.name} against {fit['target']} (simulated | "
                       "target)\n" + table + "\n")
    click.echo(table)
    click.echo(f"cost {res.start_cost:.2f} -> {res.cost:.2f} in {res.evals} replays, "
               f"{res.wall_s:.0f} s wall, {res.cpu_s:.0f} s CPU; wrote {out_p} and {table_p}")
