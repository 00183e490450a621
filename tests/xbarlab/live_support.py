"""Support for the live-view tests and the docs' images.

- `chromium()`: Debian's headless chromium driven by selenium through the system chromedriver
  (nothing is downloaded); `chromium_missing()` says why the browser tests must skip. Selenium
  rather than playwright: Debian ships chromedriver built from the same source as its chromium,
  so the driver always matches the browser, and selenium is pure Python; playwright's wheel
  carries its own driver, which expects the browser builds it downloads (not reachable here).
- `Replay`: writes a finished run again, unit by unit, through the store's RunWriter, so a test
  (or a screenshot) sees a run grow exactly as a campaign writes it.
- `docs_images(out)`: the images docs/guide.md shows: the live view of a disturbance campaign
  mid-run and `xbarlab plot`'s figures of the finished run. The docs test calls it with a small
  campaign; `make docs-images` (python tests/xbarlab/live_support.py docs/img) with the full
  8x8 crossbar.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STATION = ROOT / "xbarlab" / "stations" / "sim-pmu.yaml"

#: the images docs/guide.md references, written by docs_images()
DOCS_IMAGES = ("live-view.png", "plot-disturbance-by-k.png", "plot-disturbance-by-position.png")
#: the demo report as chromium draws it (docs/guide.md), from `make docs-images`
REPORT_IMAGE = "demo-report.png"

# all text of the page, shadow roots included (Bokeh renders its widgets in shadow DOM)
DEEP_TEXT = """
function deep(n) { let s = '';
  if (n.shadowRoot) s += deep(n.shadowRoot);
  for (const c of n.childNodes) {
    if (c.nodeType === 3) s += c.textContent + ' ';
    else if (c.nodeType === 1 && c.tagName !== 'STYLE' && c.tagName !== 'SCRIPT') s += deep(c);
  }
  return s; }
return deep(document.body);
"""
DEEP_COUNT = """
function count(n, sel) { let k = n.querySelectorAll(sel).length;
  for (const e of n.querySelectorAll('*')) if (e.shadowRoot) k += count(e.shadowRoot, sel);
  return k; }
return count(document, arguments[0]);
"""


def chromium_missing() -> str | None:
    for p in (CHROMIUM, CHROMEDRIVER):
        if not Path(p).exists():
            return f"{p} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the [dev] extra)"
    return None


def chromium(width: int = 1100, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--hide-scrollbars", f"--window-size={width},{height}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def page_text(driver) -> str:
    return " ".join(driver.execute_script(DEEP_TEXT).split())


def count_elements(driver, selector: str) -> int:
    return int(driver.execute_script(DEEP_COUNT, selector))


def source_rows(driver, name: str) -> int:
    """Rows of the named ColumnDataSource in the browser's Bokeh document (-1: none)."""
    return int(driver.execute_script(
        "const d = window.Bokeh && Bokeh.documents[0];"
        "const m = d && d.get_model_by_name(arguments[0]);"
        "if (!m) return -1; const c = Object.values(m.data)[0];"
        "return c ? c.length : 0;", name))


def plot_title(driver, name: str) -> str | None:
    """The title of the named plot as the browser's Bokeh document holds it (drawn on canvas)."""
    return driver.execute_script(
        "const m = Bokeh.documents[0].get_model_by_name(arguments[0]);"
        "return m && m.title ? m.title.text : null;", name)


def wait_until(fn, timeout: float = 15.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if fn():
                return
        except Exception:  # the page may still be loading
            if time.monotonic() > end:
                raise
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Replay:
    """Copies a finished run into `dst` unit by unit through RunWriter (as its campaign did)."""

    UNIT_KEY = {"samples": "after"}  # tables whose rows belong to another column's unit

    def __init__(self, src: Path, dst: Path):
        from database.figures import unit_counts
        from database.runs import RunWriter, read_run

        info, self.tables = read_run(src)
        specs = {t: {c: (df[c].dtype.str, df.attrs["units"][c]) for c in df.columns}
                 for t, df in self.tables.items()}
        self.total = unit_counts(info)[1]
        self.writer = RunWriter.open(dst, protocol=info.protocol, config=info.config,
                                     station=info.station, seed=info.seed, tables=specs,
                                     units_total=self.total)
        self.done = 0

    def commit(self, n: int = 1, every_s: float = 0.0) -> None:
        """Commit the next n units, `every_s` apart (the ETA comes from commit times)."""
        for k in range(n):
            if k and every_s:
                time.sleep(every_s)
            i = self.done
            rows = {t: {c: df[c].to_numpy()[df[self.UNIT_KEY.get(t, "device")].to_numpy() == i]
                        for c in df.columns} for t, df in self.tables.items()}
            self.writer.commit(i, rows)
            self.done += 1

    def finish(self) -> None:
        self.commit(self.total - self.done)
        self.writer.finish({})


def save_full_page(driver, png: Path, width: int, ready=lambda: True) -> Path:
    """Grow the window until the whole page fits, then save it as `png`."""
    height = 0
    for _ in range(10):
        wait_until(ready, what="the page to finish drawing")
        time.sleep(0.5)
        h = int(driver.execute_script("return document.documentElement.scrollHeight"))
        if h <= height:
            break
        height = h
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height + 10, "deviceScaleFactor": 1, "mobile": False})
    driver.save_screenshot(str(png))
    return png


def screenshot_live_view(h5: Path, png: Path, *, expect: str, width: int = 1000) -> Path:
    """Serve `h5` live, load it in headless chromium and save the whole page as `png`."""
    from xbarlab.live import LiveServer

    server = LiveServer(h5, port=0, poll_s=0.2).start()
    driver = chromium(width, 900)
    try:
        driver.get(server.url)
        wait_until(lambda: expect in page_text(driver), what=f"{expect!r} on the page")
        save_full_page(driver, png, width,
                       lambda: driver.execute_script("return Bokeh.documents[0].is_idle"))
    finally:
        driver.quit()
        server.stop()
    return png


def open_report(driver, report_dir: Path) -> dict:
    """Load the demo's report page from disk; what the browser shows of it."""
    driver.get((report_dir / "index.html").resolve().as_uri())
    wait_until(lambda: driver.execute_script("return document.readyState") == "complete",
               what="the report to load")
    return driver.execute_script(
        "const imgs = [...document.images];"
        "return {h1: document.querySelector('h1').textContent,"
        " h2: [...document.querySelectorAll('h2')].map(e => e.textContent),"
        " images: imgs.length,"
        " broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),"
        " summary: (() => { let t = '', e = document.querySelector('h2').nextElementSibling;"
        "   for (; e && e.tagName !== 'H2'; e = e.nextElementSibling) t += e.textContent + ' ';"
        "   return t; })()};")


def screenshot_report(report_dir: Path, png: Path, *, width: int = 1100) -> Path:
    """The demo's report as headless chromium draws it, whole page."""
    driver = chromium(width, 900)
    try:
        seen = open_report(driver, report_dir)
        assert not seen["broken"], seen["broken"]
        save_full_page(driver, png, width)
    finally:
        driver.quit()
    return png


def docs_images(out: Path, devices: int = 64, mid: float = 0.4) -> list[Path]:
    """Run a disturbance campaign on the simulated PMU station (the first `devices` devices),
    screenshot the live view with `mid` of it committed, and plot the finished run."""
    from database.plots import plot_run
    from xbarlab.cli import main

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, live = Path(tmp) / "disturbance.h5", Path(tmp) / "disturbance-live.h5"
        picks = [a for i in range(devices) for a in ("--device", f"{i // 8},{i % 8}")]
        try:
            main(["run", "disturbance", "--station", str(STATION), "-o", str(src), "--seed", "1",
                  "--no-progress", *picks])
        except SystemExit as e:
            if e.code:
                raise
        replay = Replay(src, live)
        replay.commit(max(1, int(np.ceil(mid * replay.total))), every_s=0.2)
        shots = [screenshot_live_view(live, out / DOCS_IMAGES[0],
                                      expect=f"{replay.done} of {replay.total} devices")]
        _, pngs = plot_run(src, out_dir=tmp)
        for p in pngs:
            for name in DOCS_IMAGES[1:]:
                if p.name.endswith(name.removeprefix("plot-disturbance")):
                    shots.append(Path(shutil.copyfile(p, out / name)))
    return shots


if __name__ == "__main__":
    # live_support.py [DIR]: the live view and plot images; live_support.py DIR --report OUT:
    # a screenshot of the report of the demo in OUT (after `make demo-quick`)
    img = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "img")
    if "--report" in sys.argv:
        out = Path(sys.argv[sys.argv.index("--report") + 1])
        print(f"wrote {screenshot_report(out / 'report', img / REPORT_IMAGE)}")
    else:
        for p in docs_images(img):
            print(f"wrote {p}")
