"""`xbarlab demo`: the whole chain on a simulated station, ending in a report."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option("--quick", is_flag=True, help="small sizes (used by the tests)")
    @click.option("--out", default="demo-out", show_default=True,
                  type=click.Path(file_okay=False), help="output folder")
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(0),
                  help="chip, campaign, training and evaluation seed")
    @click.option("--steps", default=None,
                  help="comma-separated subset of station,campaigns,database,train,evaluate,"
                       "transfer,report (later steps read what earlier runs wrote in OUT)")
    @click.option("--no-progress", is_flag=True, help="no progress bars")
    def demo_cmd(quick, out, seed, steps, no_progress):
        """Characterise a simulated chip, build the non-ideality DB, train the hardware-aware
        and the regular network, evaluate them by Monte-Carlo, program both onto fresh
        virtual chips through the rig, and write OUT/report/index.html."""
        try:
            import torch  # noqa: F401
        except ImportError:
            from xbarlab.errors import XbarlabError
            raise XbarlabError("the demo trains networks and needs PyTorch: install the "
                               "[train] extra") from None
        from rich.console import Console
        from rich.table import Table

        from database.display import duration
        from xbarlab.demo import run_demo

        console = Console()
        wanted = None if steps is None else [x.strip() for x in steps.split(",") if x.strip()]
        steps = run_demo(out, quick=quick, seed=seed, progress=not no_progress,
                         echo=console.print, steps=wanted)
        t = Table(title="demo timing")
        t.add_column("step")
        t.add_column("wall time", justify="right")
        t.add_column("predicted instrument time, real station", justify="right")
        for s in steps:
            t.add_row(s.title, duration(s.seconds), duration(s.instrument_s))
        t.add_row("total", duration(sum(s.seconds for s in steps)),
                  duration(sum(s.instrument_s or 0.0 for s in steps)))
        console.print(t)
        for s in steps:
            if s.name == "report":
                console.print("\n".join(s.info["conclusion"]), highlight=False)
                console.print(f"report: {out}/report/index.html (and report.md)")
