"""The live view in a real headless browser (Debian's chromium through selenium).

A run is written unit by unit with the store's RunWriter (a real disturbance campaign replayed),
and the page must show it, follow new commits, and show a damaged file as an error state.
"""

import pytest
from live_support import (
    Replay,
    chromium,
    chromium_missing,
    count_elements,
    page_text,
    plot_title,
    source_rows,
    wait_until,
)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(chromium_missing() is not None,
                                 reason=f"no headless browser: {chromium_missing()}")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real 3x3 disturbance campaign on a simulated crossbar."""
    from threadpoolctl import threadpool_limits

    from protocols.campaigns import disturbance
    from simulator.config import CrossbarConfig
    from simulator.crossbar import Crossbar
    from simulator.direct_rig import SimulatedRig

    path = tmp_path_factory.mktemp("live") / "dist.h5"
    with threadpool_limits(1, user_api="blas"):
        disturbance.run(SimulatedRig(Crossbar(CrossbarConfig(rows=3, cols=3), seed=1)),
                        disturbance.DisturbanceConfig(), path, seed=1,
                        station={"name": "test", "shape": [3, 3]}, progress=False)
    return path


@pytest.fixture(scope="module")
def driver():
    d = chromium()
    yield d
    d.quit()


@pytest.fixture
def live(finished, tmp_path):
    """A run being written (2 of 9 units committed) and a live server following it."""
    from xbarlab.live import LiveServer

    replay = Replay(finished, tmp_path / "live.h5")
    replay.commit(2)
    server = LiveServer(replay.writer.path, port=0, poll_s=0.2, read_timeout_s=3).start()
    yield replay, server
    server.stop()


def test_page_loads_with_its_elements(live, driver):
    replay, server = live
    driver.get(server.url)
    wait_until(lambda: "2 of 9 devices done" in page_text(driver), what="the progress line")
    # the panels render after the progress line, one by one (in CI one was seen missing)
    words = ("V/3 disturbance by k", "V/3 disturbance by position", "devices programmed: 2",
             "disturbance samples: 1")
    wait_until(lambda: all(w in page_text(driver) for w in words), what="the panels")
    text = page_text(driver)
    assert "xbarlab live view: live.h5" in text and "running:" in text and "ETA" in text
    assert "waiting for data" not in text
    assert plot_title(driver, "conductance") == "latest conductance (uS)"
    assert plot_title(driver, "trace").startswith("device (0,1): ")
    assert plot_title(driver, "by-position/1") == "device class"
    assert source_rows(driver, "conductance/cells") == 2     # devices drawn on the map
    assert source_rows(driver, "trace/band0") == 2           # the tolerance band is drawn
    assert source_rows(driver, "by-k/0/sample") == 1         # one disturbance sample so far
    wait_until(lambda: count_elements(driver, "canvas") >= 8, what="the plots' canvases")


def test_page_follows_new_commits(live, driver):
    replay, server = live
    driver.get(server.url)
    wait_until(lambda: source_rows(driver, "conductance/cells") == 2, what="the first map")
    replay.commit(3)
    wait_until(lambda: "5 of 9 devices done" in page_text(driver), what="the new progress")
    wait_until(lambda: source_rows(driver, "conductance/cells") == 5, what="the updated map")
    assert source_rows(driver, "by-k/0/sample") == 1 + 2 + 3 + 4
    assert plot_title(driver, "trace").startswith("device (1,1)")  # the latest device
    replay.finish()
    wait_until(lambda: "complete: 9 of 9 devices done" in page_text(driver), what="completion")


def test_damaged_file_is_an_error_state_until_it_is_readable(live, driver):
    replay, server = live
    path = replay.writer.path
    driver.get(server.url)
    wait_until(lambda: "2 of 9 devices done" in page_text(driver), what="the page")
    good = path.read_bytes()
    path.write_bytes(good[:4096] + b"\0" * (len(good) - 4096))  # a damaged file
    wait_until(lambda: "ERROR:" in page_text(driver), what="the error state")
    text = page_text(driver)
    assert "live.h5" in text and "showing the data read at" in text
    assert count_elements(driver, ".xb-error") == 1
    assert source_rows(driver, "conductance/cells") == 2  # the last good data stay
    path.write_bytes(good)
    wait_until(lambda: "running: 2 of 9" in page_text(driver), what="recovery")
    assert "ERROR" not in page_text(driver) and count_elements(driver, ".xb-error") == 0
