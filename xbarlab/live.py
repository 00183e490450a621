"""The live view: a Bokeh server page that follows a raw-run file as it grows.

One `Follower` (xbarlab/follow.py) per server polls the file in a worker thread, so a slow read
never stalls the page, and never opens the file itself (it reads a copy). Every browser session
gets a page that shows, from the latest snapshot: a status line (progress, ETA, faults), the
array's conductance map, the latest device's trace against its tolerance band, the run's facts
and the campaign's own figures. The figures are the specs of `database.figures` drawn with
Bokeh; the PNGs of `xbarlab plot` draw the same specs with matplotlib. When the figures keep
their structure the page updates their data in place (zoom and pan survive); otherwise it
rebuilds them.

Needs the `[live]` extra (bokeh). Serves on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
import time
from pathlib import Path

import numpy as np

from database.figures import Hist, Map, Panel, Plot
from xbarlab.errors import XbarlabError
from xbarlab.follow import Follower, Snapshot, status_text

log = logging.getLogger("xbarlab.watch")

try:
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.layouts import column, row
    from bokeh.models import (
        ColorBar,
        ColumnDataSource,
        Div,
        HoverTool,
        LinearColorMapper,
        Range1d,
    )
    from bokeh.palettes import Category10_10, RdBu11, Viridis256
    from bokeh.plotting import figure as bk_figure
    from bokeh.server.server import BaseServer
    from bokeh.server.tornado import BokehTornado
    from bokeh.server.util import bind_sockets
    from bokeh.transform import factor_cmap
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop, PeriodicCallback
except ImportError as e:  # pragma: no cover - depends on the install
    raise XbarlabError("the live view needs bokeh: pip install 'xbarlab[live]'") from e

W, H = 430, 330              # panel size [px]
CLASS_COLOURS = ["#4daf4a", "#377eb8", "#e41a1c", "#ff7f00", "#984ea3", "#999999"]
STATUS_STYLE = {"padding": "6px 10px", "border-radius": "4px"}
STATE_STYLE = {
    "waiting": {"background-color": "#eeeeee", "color": "#333333"},
    "running": {"background-color": "#e8f0fe", "color": "#1a3d7c"},
    "complete": {"background-color": "#e6f4ea", "color": "#1e5e2c"},
    "error": {"background-color": "#fce8e6", "color": "#a50e0e", "font-weight": "bold"},
}


# -- specs -> bokeh --------------------------------------------------------------------------

def _key(p: Panel | None) -> tuple:
    """What must stay the same for a panel to be updated in place."""
    if p is None:
        return ("none",)
    if isinstance(p, Map):
        return ("map", p.values.shape, tuple(sorted((p.classes or {}).items())), p.diverging)
    if isinstance(p, Hist):
        return ("hist", tuple(p.counts))
    return ("plot", tuple((s.label, s.style) for s in p.series), len(p.bands))


def _map_data(m: Map) -> dict:
    r, c = np.nonzero(np.isfinite(m.values))
    v = m.values[r, c]
    d = {"x": c, "y": r, "value": v}
    if m.classes:
        d["cls"] = [m.classes.get(int(x), str(int(x))) for x in v]
    return d


def _map_range(m: Map) -> tuple[float, float]:
    v = m.values[np.isfinite(m.values)]
    if v.size == 0:
        return 0.0, 1.0
    if m.diverging:
        lim = float(np.abs(v).max()) or 1.0
        return -lim, lim
    lo, hi = float(v.min()), float(v.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _band_data(p: Plot, i: int) -> dict:
    xs = [s.x for s in p.series if len(s.x)]
    lo, hi = (float(min(x.min() for x in xs)), float(max(x.max() for x in xs))) if xs else (0, 1)
    b = p.bands[i]
    return {"x": [lo, hi], "y1": [b.low, b.low], "y2": [b.high, b.high]}


class PanelView:
    """One Bokeh figure drawn from a panel spec, with the sources to update it in place."""

    def __init__(self, p: Panel, name: str):
        self.name = name
        self.key = _key(p)
        self.sources: list[ColumnDataSource] = []
        self.mapper: LinearColorMapper | None = None
        if isinstance(p, Map):
            self.fig = self._map(p)
        elif isinstance(p, Hist):
            self.fig = self._hist(p)
        else:
            self.fig = self._plot(p)

    def _source(self, data: dict, tag: str) -> ColumnDataSource:
        s = ColumnDataSource(data, name=f"{self.name}/{tag}")
        self.sources.append(s)
        return s

    def _map(self, m: Map):
        rows, cols = m.values.shape
        f = bk_figure(title=m.title, width=W, height=H, x_range=Range1d(-0.5, cols - 0.5),
                      y_range=Range1d(rows - 0.5, -0.5), x_axis_label="column",
                      y_axis_label="row", tools="pan,wheel_zoom,reset,save",
                      background_fill_color="#dddddd", name=self.name)
        src = self._source(_map_data(m), "cells")
        if m.classes:
            names = [m.classes[k] for k in sorted(m.classes)]
            fill = factor_cmap("cls", [CLASS_COLOURS[i % len(CLASS_COLOURS)]
                                       for i in range(len(names))], names)
            f.rect("x", "y", 1, 1, source=src, fill_color=fill, line_color=None,
                   legend_field="cls")
            f.legend.location = "top_right"
            f.add_tools(HoverTool(tooltips=[("row", "@y"), ("column", "@x"), ("class", "@cls")]))
        else:
            lo, hi = _map_range(m)
            self.mapper = LinearColorMapper(palette=RdBu11 if m.diverging
                                            else Viridis256, low=lo, high=hi)
            f.rect("x", "y", 1, 1, source=src, fill_color={"field": "value",
                                                           "transform": self.mapper},
                   line_color=None)
            f.add_layout(ColorBar(color_mapper=self.mapper, title=m.label), "right")
            f.add_tools(HoverTool(tooltips=[("row", "@y"), ("column", "@x"),
                                            (m.label, "@value{0.00}")]))
        return f

    def _hist(self, h: Hist):
        f = bk_figure(title=h.title, width=W, height=H, x_axis_label=h.x_label,
                      y_axis_label=h.y_label, tools="pan,wheel_zoom,reset,save", name=self.name)
        for i, (label, counts) in enumerate(h.counts.items()):
            src = self._source({"left": h.edges[:-1], "right": h.edges[1:], "top": counts},
                               label)
            f.quad(left="left", right="right", top="top", bottom=0, source=src,
                   fill_alpha=0.45, color=Category10_10[i % 10], legend_label=label)
        if h.counts:
            _legend_below(f)
        return f

    def _plot(self, p: Plot):
        f = bk_figure(title=p.title, width=W, height=H, x_axis_label=p.x_label,
                      y_axis_label=p.y_label, tools="pan,wheel_zoom,box_zoom,reset,save",
                      name=self.name, x_axis_type="log" if p.log_x else "linear")
        for i in range(len(p.bands)):
            src = self._source(_band_data(p, i), f"band{i}")
            f.varea("x", "y1", "y2", source=src, fill_color="#2ca02c", fill_alpha=0.2,
                    legend_label=p.bands[i].label)
        for i, s in enumerate(p.series):
            src = self._source({"x": s.x, "y": s.y}, s.label)
            colour = Category10_10[i % 10]
            if s.style in ("line", "linepoints"):
                f.line("x", "y", source=src, color=colour, legend_label=s.label)
            if s.style in ("points", "linepoints"):
                f.scatter("x", "y", source=src, color=colour, size=4, alpha=0.6,
                          legend_label=s.label)
        if p.series or p.bands:
            _legend_below(f)
        return f

    def update(self, p: Panel) -> None:
        self.fig.title.text = p.title
        if isinstance(p, Map):
            self.sources[0].data = _map_data(p)
            if self.mapper is not None:
                self.mapper.low, self.mapper.high = _map_range(p)
        elif isinstance(p, Hist):
            for src, counts in zip(self.sources, p.counts.values(), strict=True):
                src.data = {"left": p.edges[:-1], "right": p.edges[1:], "top": counts}
        else:
            nb = len(p.bands)
            for i in range(nb):
                self.sources[i].data = _band_data(p, i)
            for src, s in zip(self.sources[nb:], p.series, strict=True):
                src.data = {"x": s.x, "y": s.y}


def _legend_below(f) -> None:
    """Under the plot, so it never hides the data (the trace's in-band reads sit top right)."""
    leg = f.legend[0]
    f.add_layout(leg, "below")
    leg.orientation = "horizontal"
    leg.ncols = 2
    leg.label_text_font_size = "8pt"
    leg.click_policy = "hide"
    leg.spacing = 2
    leg.padding = 2


def _placeholder(text: str, name: str) -> Div:
    return Div(text=f"<i>{html.escape(text)}</i>", width=W, height=60, name=name)


class Page:
    """One browser session's document, refreshed from the server's follower."""

    def __init__(self, doc, server: LiveServer):
        self.server = server
        self.doc = doc
        self.version = -1
        self.status_at = 0.0
        self.keys: tuple | None = None
        self.views: list[PanelView] = []
        path = server.follower.path
        self.header = Div(text=f"<h2 style='margin:4px 0'>xbarlab live view: "
                               f"{html.escape(path.name)}</h2>", name="header", width=2 * W)
        # fixed size: its text changes every second and must not re-lay out the page
        self.status = Div(text="", name="status", width=2 * W + 60, height=48,
                          styles=STATUS_STYLE)
        self.facts = Div(text="", name="facts", width=2 * W)
        self.body = column(Div(text="<i>waiting for data</i>"), name="body")
        doc.title = f"xbarlab: {path.name}"
        doc.add_root(column(self.header, self.status, self.facts, self.body))
        self.refresh()
        doc.add_periodic_callback(self.refresh, int(min(server.poll_s, 1.0) * 1000))

    def refresh(self) -> None:
        snap = self.server.follower.snapshot
        now = time.time()
        if snap.version == self.version and now - self.status_at < 1.0:
            return
        self.status_at = now
        self.doc.hold("combine")  # one message to the browser, one redraw
        try:
            self._refresh(snap, now)
        finally:
            self.doc.unhold()

    def _refresh(self, snap: Snapshot, now: float) -> None:
        text = html.escape(status_text(snap, now, self.server.poll_s))
        if text != self.status.text:
            self.status.text = text
        if self.status.css_classes != [f"xb-{snap.state}"]:
            self.status.styles = {**STATUS_STYLE, **STATE_STYLE[snap.state]}
            self.status.css_classes = [f"xb-{snap.state}"]
        if snap.version != self.version:
            self.version = snap.version
            self._draw(snap)

    def _draw(self, snap: Snapshot) -> None:
        info, v = snap.info, snap.view
        if info is None or v is None:
            return
        facts = [f"run {info.name}", f"protocol {info.protocol}",
                 f"station {info.station.get('name', '-')}", f"seed {info.seed}",
                 f"started {info.start_time}"]
        self.facts.text = ("<div>" + html.escape(" · ".join(facts)) + "</div><ul>" +
                           "".join(f"<li>{html.escape(f)}</li>" for f in v.facts + v.notes) +
                           "</ul>")
        panels: list[tuple[str, Panel | None]] = [("conductance", v.conductance),
                                                  ("trace", v.trace)]
        for f in v.figures:
            panels += [(f"{f.name}/{i}", p) for i, p in enumerate(f.panels)]
        keys = tuple((n, _key(p)) for n, p in panels)
        if keys == self.keys:
            for pv, (_, p) in zip(self.views, (x for x in panels if x[1] is not None),
                                  strict=True):
                pv.update(p)
            return
        self.keys = keys
        self.views = []

        def draw(name: str, p: Panel | None, empty: str):
            if p is None:
                return _placeholder(empty, name)
            pv = PanelView(p, name)
            self.views.append(pv)
            return pv.fig

        top = row(draw("conductance", v.conductance, "no conductance map for this run"),
                  draw("trace", v.trace, v.notes[0] if v.notes else "no trace yet"))
        rows = [top]
        for f in v.figures:
            rows.append(Div(text=f"<h3 style='margin:8px 0 0 0'>{html.escape(f.title)}</h3>",
                            name=f"title/{f.name}"))
            figs = [draw(f"{f.name}/{i}", p, "") for i, p in enumerate(f.panels)]
            rows += [row(*figs[k:k + 3]) for k in range(0, len(figs), 3)]
        self.body.children = rows


# -- the server ------------------------------------------------------------------------------

class LiveServer:
    """A Bokeh server for one file: `bind()`, then `serve_forever()` (Ctrl-C stops it) or
    `start()` in a background thread next to a running campaign, and `stop()`."""

    def __init__(self, path: Path, *, run: str | None = None, host: str = "127.0.0.1",
                 port: int = 5006, poll_s: float = 1.0, read_timeout_s: float = 30.0):
        self.follower = Follower(path, run, read_timeout_s=read_timeout_s)
        self.host, self.port, self.poll_s = host, port, poll_s
        self._sockets = None
        self._loop: IOLoop | None = None
        self._server: BaseServer | None = None
        self._thread: threading.Thread | None = None
        self._polling = False

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def bind(self) -> LiveServer:
        """Take the port now, so a busy port is a clear error before anything else starts."""
        try:
            self._sockets, self.port = bind_sockets(self.host, self.port)
        except OSError as e:
            raise XbarlabError(f"cannot serve the live view on {self.host}:{self.port} "
                               f"({e.strerror or e}); choose another --port") from None
        return self

    def _origins(self) -> list[str]:
        if self.host in ("127.0.0.1", "localhost", "::1"):
            return [f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"]
        return ["*"]  # bound elsewhere on purpose: the page is open to the network

    def _setup(self) -> None:
        if self._sockets is None:
            self.bind()
        self.follower.start()
        loop = IOLoop.current()
        app = BokehTornado({"/": Application(FunctionHandler(lambda doc: Page(doc, self)))},
                           extra_websocket_origins=self._origins())
        http = HTTPServer(app)
        http.add_sockets(self._sockets)
        self._server = BaseServer(loop, app, http)
        self._server.start()
        self._loop = loop
        PeriodicCallback(self._poll, self.poll_s * 1000).start()
        loop.add_callback(self._poll)

    async def _poll(self) -> None:
        if self._polling:  # a slow read is still going: skip this tick
            return
        self._polling = True
        try:
            await IOLoop.current().run_in_executor(None, self.follower.poll)
        finally:
            self._polling = False

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._setup()
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._shutdown()
            loop.close()

    def start(self) -> LiveServer:
        """Serve from a background (daemon) thread; returns once the page is being served."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                self._setup()
            except BaseException as e:  # handed to the caller below
                failed.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            self._shutdown()
            loop.close()

        self._thread = threading.Thread(target=main, name="xbarlab-live", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until predicate(snapshot) holds (e.g. the final commit was read)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self.follower.snapshot):
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.add_callback(self._loop.stop)
            self._thread.join(timeout=5)
            self._thread = None

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.follower.close()
