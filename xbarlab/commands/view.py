"""`xbarlab plot` (PNG figures of a raw run) and `xbarlab watch` (live view of a running one)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

from database.errors import DatabaseError
from xbarlab.commands import next_steps

HOST_HELP = ("address to serve on (default 127.0.0.1: this PC only); anything else lets others "
             "on the network open the page")


def register(cli: click.Group) -> None:
    @cli.command("plot")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--run", default=None, help="run in the file (default: the latest)")
    @click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
                  help="folder for the PNGs (default: next to FILE)")
    def plot_cmd(file, run, out_dir):
        """Draw what a campaign or transfer measured, as PNG files named FILE-RUN-FIGURE.png:
        tuning traces and error histograms, conductance maps, disturbance by k and by
        position, stuck/working maps, I-V loops, read-back error maps."""
        from database.plots import plot_run

        path = Path(file)
        if not path.exists():
            raise DatabaseError(f"{path}: no such file")
        v, written = plot_run(path, run, out_dir)
        for note in v.notes:
            click.echo(f"note: {note}")
        for fact in v.facts:
            click.echo(f"  {fact}")
        for p in written:
            click.echo(f"wrote {p}")
        if not written:
            click.echo("no figures written")
        next_steps(f"`xbarlab db show {path}` (every number of the run)",
                   f"`xbarlab db build {path} ... -o db.h5` (campaign runs -> non-ideality "
                   "database)")

    @cli.command("watch")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--run", default=None, help="run in the file (default: the latest)")
    @click.option("--host", default="127.0.0.1", show_default=True, help=HOST_HELP)
    @click.option("--port", default=5006, show_default=True, type=click.IntRange(0, 65535),
                  help="port (0: any free port)")
    @click.option("--poll", default=1.0, show_default=True, type=click.FloatRange(0.1, 60),
                  help="how often to look at the file [s]")
    @click.option("--read-timeout", default=30.0, show_default=True,
                  type=click.FloatRange(1, 3600),
                  help="a read of the file taking longer is abandoned and shown as an error [s]")
    @click.option("--open", "open_browser", is_flag=True, help="open the page in a browser")
    def watch_cmd(file, run, host, port, poll, read_timeout, open_browser):
        """Serve a live web page that follows FILE as a campaign or transfer writes it:
        conductance map, the latest device's trace against its band, the campaign's figures,
        progress, ETA and faults. Reads a copy of the file; never touches the writer.
        Ctrl-C stops it. FILE may not exist yet."""
        from xbarlab.live import LiveServer

        server = LiveServer(Path(file), run=run, host=host, port=port, poll_s=poll,
                            read_timeout_s=read_timeout)
        server.bind()
        warn_if_public(host)
        click.echo(f"live view of {file}: {server.url}  (Ctrl-C to stop)")
        if open_browser:
            import webbrowser

            webbrowser.open(server.url)
        server.serve_forever()


def warn_if_public(host: str) -> None:
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}: anyone who can reach this PC on the network "
                   "can open the live view (read-only)", err=True)


@contextmanager
def watching(path: Path, enabled: bool):
    """Serve the live view of `path` while the body (a campaign or transfer) writes it."""
    if not enabled:
        yield None
        return
    from xbarlab.errors import XbarlabError
    from xbarlab.live import LiveServer

    try:
        server = LiveServer(path).bind()
    except XbarlabError:  # the usual port is taken (another live view): any free one
        server = LiveServer(path, port=0).bind()
    server.start()
    click.echo(f"live view: {server.url}", err=True)
    try:
        yield server
        # let open pages pick up the final commit before the server goes away
        server.wait_for(lambda s: s.state == "complete", timeout=3 * server.poll_s + 1)
    finally:
        server.stop()
        click.echo(f"live view stopped; `xbarlab watch {path}` serves it again, "
                   f"`xbarlab plot {path}` draws its figures", err=True)
