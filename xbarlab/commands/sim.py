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
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Save a heat map of the read map here (PNG).")
def sim_show(seed: int, name: str, out: str | None) -> None:
    """Create a default virtual chip, read one crossbar (grounded, 0.2 V) and summarise it."""
    import numpy as np

    from simulator.chip import VirtualChip
    from simulator.crossbar import STUCK_HRS, STUCK_LRS

    chip = VirtualChip(seed=seed)
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
